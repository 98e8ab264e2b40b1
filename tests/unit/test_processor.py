"""EventProcessor.handle_batch with fakes (no Kafka, no Redis): dead letters, the waves of
effects, idempotence, store retries, the latency histograms, and what batching promises
(a subject's events decided on top of each other, one state write per subject and batch,
a failed wave leaves the table as it was, order of instructions and ledger entries)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.errors import PublishError, StoreReplicasMissingError, StoreUnavailableError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
    PermissionRevoked,
)
from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement, PartnerInstruction
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret, SubjectKeys
from schemas.topics import TopicNames
from schemas.views import ConsentState
from streams import store_retry
from streams.events.batch import EventBatch
from streams.events.decisions import Outcome, decide
from streams.events.flight import FlightAborted
from streams.events.processor import EventProcessor, Inbound
from streams.fanout import FanOut
from streams.faust_glue.tables import StagedTable
from streams.ledger.codec import (
    DispatchedEntry,
    LedgerEntry,
    OpenEntry,
    decode_entries,
    ledger_partition,
)
from streams.metrics import stream_metrics
from streams.outbox import RecordSender
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState, state_from_json

POLICY = load_policy()
PSEUDONYMS = Pseudonyms(SubjectKeys.single(Secret("k")))
SERDE = AvroSerde()
TOPICS = TopicNames()
NOW = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
SUBJECT = "buyer-4711@example.com"
KEY = SUBJECT.encode()
PARTITION = 3
LEDGER_PARTITIONS = 4
EVENTS = "consent.events.v1"
LEDGER = "consent.ledger.v1"
STATE = "consent.state.v1"
DEADLETTER = "consent.deadletter.v1"
ADS_INSTRUCTIONS = "partner.ads.instructions.v1"
LOGISTICS_INSTRUCTIONS = "partner.logistics.instructions.v1"
CHANGELOG = "consent-stream-consent-subjects-changelog"


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{name}"))


REQUEST = eid("request")


# ---- fakes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    wave: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    partition: int | None


class FakeOutputs:
    """Records every send with its wave: what is sent before the n-th ``delivered()`` is
    wave n. ``delivered()`` of a wave in ``fail_waves`` raises PublishError."""

    def __init__(self, fail_waves: Iterable[int] = ()) -> None:
        self.sent: list[Sent] = []
        self.wave = 1
        self.acknowledged = 0  # waves delivered so far
        self.fail_waves = set(fail_waves)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        self.sent.append(Sent(self.wave, topic, key, value, list(headers or []), partition))

    async def delivered(self) -> None:
        wave, self.wave = self.wave, self.wave + 1
        await asyncio.sleep(0)  # the broker's round trip: what runs beside the wait goes on
        if wave in self.fail_waves:
            raise PublishError(f"wave {wave}: a record was not acknowledged")
        self.acknowledged = wave

    def waves(self) -> list[list[str]]:
        """The topics of each wave's records, in send order."""
        return [[s.topic for s in self.sent if s.wave == w] for w in range(1, self.wave)]

    def on(self, topic: str, wave: int | None = None) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic and wave in (None, s.wave)]

    def last_wave_out(self) -> int:
        """The latest wave of which records are out (1 before any)."""
        return max((s.wave for s in self.sent), default=1)


class FakeStore:
    """The consent store; fails ``failures`` times first (with ``failure``, by default
    StoreUnavailableError). Notes, per write, the latest wave of which records were out at
    the time."""

    def __init__(
        self,
        outputs: Callable[[], FakeOutputs],
        failures: int = 0,
        failure: StoreUnavailableError | None = None,
    ) -> None:
        self.outputs, self.failures = outputs, failures
        self.failure = failure or StoreUnavailableError("redis did not answer")
        self.calls = 0
        self.writes: list[list[ConsentState]] = []
        self.waves: list[int] = []

    async def apply_states(self, views: Sequence[ConsentState]) -> list[Any]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise self.failure
        if views:
            self.writes.append(list(views))
            self.waves.append(self.outputs().last_wave_out())
        return []


class LocalStore(dict[bytes, bytes]):
    """A Faust table's local store; notes each write with the waves delivered by then."""

    def __init__(self, outputs: Callable[[], FakeOutputs]) -> None:
        super().__init__()
        self.outputs = outputs
        self.writes: list[tuple[bytes, int]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes.append((key, self.outputs().acknowledged))
        super().__setitem__(key, value)

    def pop(self, key: bytes, *default: Any) -> Any:
        self.writes.append((key, self.outputs().acknowledged))
        return super().pop(key, *default)


class FakeFaustTable:
    def __init__(self, outputs: Callable[[], FakeOutputs]) -> None:
        self.data = LocalStore(outputs)
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: CHANGELOG)


class Harness:
    """A processor over fakes; each ``run`` is one batch with its own FakeOutputs."""

    def __init__(self, *, store_failures: int = 0, serde: AvroSerde = SERDE) -> None:
        self.registry = CollectorRegistry()
        self.outputs = FakeOutputs()
        self.store = FakeStore(lambda: self.outputs, store_failures)
        self.table = FakeFaustTable(lambda: self.outputs)
        self.subjects = StagedTable(self.table)
        self.processor = EventProcessor(
            POLICY,
            PSEUDONYMS,
            serde,
            RecordSender(serde, "urn:test:schema", TOPICS, LEDGER_PARTITIONS),
            self.store,
            stream_metrics(self.registry),
            TOPICS,
            clock=lambda: NOW / 1000,
        )

    def run(self, *records: Inbound, fail_waves: Iterable[int] = ()) -> EventBatch:
        self.outputs = FakeOutputs(fail_waves)
        return asyncio.run(self.processor.handle_batch(records, self.subjects, self.outputs))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def state(self, key: bytes = KEY) -> SubjectState:
        return state_from_json(self.table.data[key])


# ---- events, records and expectations -------------------------------------------------


def event(
    payload: Payload, name: str, at: int = NOW - HOUR, subject: str = SUBJECT
) -> ConsentEvent:
    return ConsentEvent(eid(name), subject, at, "test", payload)


def consent(
    purpose: str,
    decision: ConsentDecision,
    name: str,
    at: int = NOW - HOUR,
    subject: str = SUBJECT,
) -> ConsentEvent:
    payload = ConsentChanged(purpose, decision, "2023-09-01", "settings")
    return event(payload, name, at, subject)


def withdraw(
    purpose: str = "personalized_ads", name: str = "withdraw", subject: str = SUBJECT
) -> ConsentEvent:
    return consent(purpose, ConsentDecision.WITHDRAWN, name, subject=subject)


def share(
    partner: str, categories: Iterable[str], refs: dict[str, str], subject: str = SUBJECT
) -> ConsentEvent:
    payload = DataShared(partner, tuple(categories), MappingProxyType(refs), NOW - 10 * DAY)
    return event(payload, f"share-{partner}-{subject}", NOW - 2 * DAY, subject)


def close_account() -> ConsentEvent:
    return event(DeletionRequested(REQUEST, DeletionScope.ACCOUNT, "closing"), "close")


def inbound(
    e: ConsentEvent | None = None,
    *,
    value: bytes | None = None,
    key: bytes | None = KEY,
    published_at: int | None = NOW - 250,
    offset: int = 42,
) -> Inbound:
    headers = {"ce_id": b"original-ce-id"}
    if published_at is not None:
        headers["cs_published_at"] = str(published_at).encode()
    if value is None:
        assert e is not None
        value = SERDE.encode(e, EVENTS)  # no validation: the processor must catch it
    return Inbound(key, value, headers, EVENTS, partition=PARTITION, offset=offset)


def records(*events: ConsentEvent) -> list[Inbound]:
    """One record per event, keyed by its subject, at consecutive offsets."""
    return [inbound(e, key=e.subject_id.encode(), offset=i) for i, e in enumerate(events)]


def expected_instructions(*events: ConsentEvent) -> tuple[PartnerInstruction, ...]:
    """The instructions of the last event, decided after the others."""
    state, fan = SubjectState(SUBJECT), FanOut(POLICY, PSEUDONYMS, NOW)
    d = None
    for e in events:
        d = decide(state, e, fan)
        state = d.state
    assert d is not None
    return d.instructions


def instructions(outputs: FakeOutputs) -> list[PartnerInstruction]:
    """The instruction records sent, decoded, in send order."""
    return [
        SERDE.decode_as(s.value or b"", PartnerInstruction)
        for s in outputs.sent
        if s.topic.startswith("partner.")
    ]


def ledger_records(outputs: FakeOutputs, wave: int) -> list[list[tuple[str, LedgerEntry]]]:
    """The entries of each ledger record of a wave (checked to sit in their partition)."""
    out = []
    for s in outputs.on(LEDGER, wave):
        assert s.key is None and s.partition is not None and s.value is not None
        entries = decode_entries(s.key, s.value)
        assert {ledger_partition(k, LEDGER_PARTITIONS) for k, _ in entries} == {s.partition}
        out.append(entries)
    return out


def ledger_entries(outputs: FakeOutputs, wave: int) -> list[tuple[str, LedgerEntry]]:
    return [entry for record in ledger_records(outputs, wave) for entry in record]


# ---- dead letters ---------------------------------------------------------------------

VALID = SERDE.encode(withdraw(), EVENTS)
ACK = PartnerAcknowledgement(eid("i"), "ads", AcknowledgementStatus.DONE, NOW)

BAD_RECORDS = {
    "garbage-bytes": (lambda: inbound(value=b"not avro at all"), "unknown_schema"),
    "empty-value": (lambda: inbound(value=b""), "unknown_schema"),
    "truncated-frame": (lambda: inbound(value=VALID[:14]), "truncated"),
    "an-ack-on-the-events-topic": (
        lambda: inbound(value=SERDE.encode(ACK, EVENTS)),
        "unknown_schema",
    ),
    "unknown-purpose": (lambda: inbound(withdraw("telepathy")), "unknown_purpose"),
    "not-withdrawable": (lambda: inbound(withdraw("payment")), "not_withdrawable"),
    "unknown-partner": (lambda: inbound(share("acme", ["behaviour"], {})), "unknown_partner"),
    "key-mismatch": (lambda: inbound(withdraw(), key=b"someone-else"), "key_mismatch"),
    "missing-key": (lambda: inbound(withdraw(), key=None), "key_mismatch"),
    "empty-key": (lambda: inbound(withdraw(), key=b""), "key_mismatch"),
}


@pytest.mark.parametrize(("make", "reason"), list(BAD_RECORDS.values()), ids=list(BAD_RECORDS))
def test_bad_record_goes_to_the_deadletter_topic(make: Any, reason: str) -> None:
    h = Harness()
    record: Inbound = make()

    assert h.run(record).outcomes == []

    (dl,) = h.outputs.sent
    assert dl.topic == DEADLETTER and dl.wave == 1 and dl.partition is None
    assert dl.key == record.key and dl.value == record.value  # a missing key stays missing
    headers = dict(dl.headers)
    assert headers["ce_id"] == b"original-ce-id"  # original headers kept
    assert headers["cs_dlq_reason"] == reason.encode()
    assert headers["cs_dlq_source_topic"] == EVENTS.encode()
    assert headers["cs_dlq_source_partition"] == b"3"
    assert headers["cs_dlq_source_offset"] == b"42"
    assert headers["cs_dlq_error"]
    assert h.metric("consent_deadletters_total", reason=reason) == 1
    assert dict(h.table.data) == {} and h.store.writes == []


def test_oversized_record_is_dead_lettered() -> None:
    h = Harness(serde=AvroSerde(max_record_bytes=64))
    record = inbound(value=VALID)
    assert len(VALID) > 64

    assert h.run(record).outcomes == []

    assert h.outputs.waves() == [[DEADLETTER], []]
    assert h.metric("consent_deadletters_total", reason="oversized") == 1


def test_orders_whose_references_would_overfill_the_state_are_kept_without_them() -> None:
    """The changelog record of a subject's state holds ``max_record_bytes``; references
    may fill 15/16 of it (``streams.events.state_limit``). Past that an order is applied without
    them and its record, references and all, goes to the dead-letter topic."""
    h = Harness(serde=AvroSerde(max_record_bytes=2048))
    orders = [
        event(
            DataShared("logistics", ("delivery_details",), MappingProxyType({f"w{n}": "x" * 250})),
            f"order-{n}",
        )
        for n in range(8)
    ]

    batch = h.run(*records(*orders, withdraw()))

    assert batch.outcomes == [("data.shared", Outcome.APPLIED)] * 8 + [
        ("consent.changed", Outcome.APPLIED)
    ]
    dead = h.outputs.on(DEADLETTER)
    kept = 8 - len(dead)
    assert 0 < kept < 8
    assert [dict(d.headers)["cs_dlq_reason"] for d in dead] == [b"references_dropped"] * (8 - kept)
    assert [d.value for d in dead] == [r.value for r in records(*orders)[kept:]]
    assert h.metric("consent_deadletters_total", reason="references_dropped") == 8 - kept
    assert h.metric("consent_events_total", type="data.shared", outcome="applied") == 8
    state = h.state()
    assert [r for s in state.shares for r in s.refs] == [(f"w{n}", "x" * 250) for n in range(kept)]
    assert state.decision("personalized_ads") is not None
    assert len(h.table.data[KEY]) <= 2048


def test_a_bad_record_does_not_hold_up_the_rest_of_its_batch() -> None:
    h = Harness()
    bad = inbound(value=b"not avro at all", offset=7)

    batch = h.run(inbound(withdraw(), offset=6), bad, inbound(close_account(), offset=8))

    assert [o for _, o in batch.outcomes] == [Outcome.APPLIED, Outcome.APPLIED]
    (dl,) = h.outputs.on(DEADLETTER)
    assert dl.wave == 1 and dict(dl.headers)["cs_dlq_source_offset"] == b"7"
    (ins,) = expected_instructions(withdraw())
    assert {k for k, _ in ledger_entries(h.outputs, 1)} == {ins.instruction_id, REQUEST}
    assert h.state().closed_at == NOW - HOUR
    assert h.metric("consent_deadletters_total", reason="unknown_schema") == 1


# ---- effects of an applied event ------------------------------------------------------


def test_withdrawal_effects_go_out_in_two_waves_then_the_table() -> None:
    """The ticket, the instruction and the state record beside the store write, then the
    subject's state (a lone instruction's ticket gets no "dispatched" entry)."""
    h = Harness()
    e = withdraw()
    (ins,) = expected_instructions(e)

    batch = h.run(inbound(e))

    assert batch.outcomes == [("consent.changed", Outcome.APPLIED)]
    assert h.outputs.waves() == [[LEDGER, ADS_INSTRUCTIONS, STATE], [CHANGELOG]]
    assert h.store.waves == [1]  # beside the first wave
    assert h.table.data.writes == [(KEY, 2)]  # once both waves are delivered
    opened, sent, state, changelog = h.outputs.sent

    assert opened.partition == ledger_partition(ins.instruction_id, LEDGER_PARTITIONS)
    key = ins.instruction_id
    assert ledger_entries(h.outputs, 1) == [(key, OpenEntry(key, None, ((ins, ""),)))]
    assert ledger_entries(h.outputs, 2) == []

    assert sent.key == ins.subject_ref.encode() and sent.partition is None
    assert SERDE.decode_as(sent.value or b"", PartnerInstruction) == ins
    headers = dict(sent.headers)
    assert headers["ce_id"] == ins.instruction_id.encode()
    assert headers["ce_type"] == b"partner.instruction.stop_processing"
    assert all(KEY not in v for v in headers.values())  # ads holds no identity

    ((view,),) = h.store.writes
    assert state.key == KEY and SERDE.decode_as(state.value or b"", ConsentState) == view
    assert view.version == 1 and view.updated_at == NOW
    assert [(d.purpose, d.granted) for d in view.purposes] == [("personalized_ads", False)]

    assert changelog.key == KEY and changelog.partition == PARTITION
    assert changelog.value == h.table.data[KEY]
    assert h.state().version == 1 and h.state().seen(e.event_id)

    assert h.metric("consent_events_total", type="consent.changed", outcome="applied") == 1
    assert h.metric("consent_instructions_total", partner="ads", action="STOP_PROCESSING") == 1


def test_duplicate_has_no_effects() -> None:
    h = Harness()
    record = inbound(withdraw())
    h.run(record)
    table = dict(h.table.data)

    assert h.run(record).outcomes == [("consent.changed", Outcome.DUPLICATE)]

    assert h.outputs.sent == [] and len(h.store.writes) == 1
    assert h.table.data == table and len(h.table.data.writes) == 1
    assert h.metric("consent_events_total", type="consent.changed", outcome="duplicate") == 1


def test_stale_event_is_only_remembered() -> None:
    h = Harness()
    h.run(inbound(withdraw()))
    older = consent("personalized_ads", ConsentDecision.GRANTED, "older", NOW - 2 * HOUR)

    assert h.run(inbound(older)).outcomes == [("consent.changed", Outcome.STALE)]

    assert h.outputs.waves() == [[], [CHANGELOG]]
    assert len(h.store.writes) == 1
    assert h.state().seen(older.event_id) and h.state().version == 1


def test_data_shared_only_updates_the_table() -> None:
    h = Harness()

    batch = h.run(inbound(share("ads", ["behaviour"], {"ad_id": "AD-1"})))

    assert batch.outcomes == [("data.shared", Outcome.APPLIED)]
    assert h.outputs.waves() == [[], [CHANGELOG]]
    assert h.store.writes == []
    assert [s.partner for s in h.state().shares] == ["ads"]


def test_account_deletion_opens_the_request_with_all_its_instructions() -> None:
    h = Harness()
    shares = [
        share("ads", ["behaviour"], {"ad_id": "AD-1"}),
        share("logistics", ["delivery_details"], {"order_no": "O-1"}),
    ]
    h.run(*records(*shares))
    expected = expected_instructions(*shares, close_account())

    assert h.run(inbound(close_account())).outcomes == [("deletion.requested", Outcome.APPLIED)]

    assert h.outputs.waves() == [
        [LEDGER, ADS_INSTRUCTIONS, LOGISTICS_INSTRUCTIONS, STATE],
        [LEDGER, CHANGELOG],
    ]
    assert instructions(h.outputs) == list(expected)
    ((key, opened),) = ledger_entries(h.outputs, 1)
    assert key == REQUEST and isinstance(opened, OpenEntry)
    assert opened.key == REQUEST and opened.request is not None
    assert opened.request.request_id == REQUEST and opened.request.store_erased_at == NOW
    assert [i for i, _ in opened.instructions] == list(expected)
    assert [d for _, d in opened.instructions] == [
        PSEUDONYMS.refs_digest(i.partner_refs.items()) for i in expected
    ]
    assert ledger_entries(h.outputs, 2) == [(REQUEST, DispatchedEntry(NOW))]
    ((view,),) = h.store.writes
    assert view.account_closed_at == NOW - HOUR and view.purposes == ()
    assert h.store.waves == [1]


def test_deletion_without_lineage_opens_the_request_and_dispatches_nothing() -> None:
    h = Harness()

    assert h.run(inbound(close_account())).outcomes == [("deletion.requested", Outcome.APPLIED)]

    assert h.outputs.waves() == [[LEDGER, STATE], [CHANGELOG]]
    ((_, opened),) = ledger_entries(h.outputs, 1)
    assert isinstance(opened, OpenEntry)
    assert opened.request is not None and opened.instructions == ()


# ---- store retries and latency --------------------------------------------------------


def test_writes_too_few_replicas_have_are_retried_and_counted_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_retry, "STORE_BACKOFF_S", (0.0,))
    h = Harness()
    h.store.failures, h.store.failure = 3, StoreReplicasMissingError("0 of the 1 replicas")

    assert h.run(inbound(withdraw())).outcomes == [("consent.changed", Outcome.APPLIED)]

    assert h.store.calls == 4 and len(h.store.writes) == 1
    assert h.metric("consent_store_write_retries_total", reason="store_replicas_missing") == 3
    assert h.metric("consent_store_write_retries_total", reason="store_unavailable") == 0


def test_store_outage_is_retried_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_retry, "STORE_BACKOFF_S", (0.0,))
    h = Harness(store_failures=2)

    assert h.run(inbound(withdraw())).outcomes == [("consent.changed", Outcome.APPLIED)]

    assert h.store.calls == 3 and len(h.store.writes) == 1
    assert h.metric("consent_store_write_retries_total", reason="store_unavailable") == 2
    assert h.metric("consent_store_write_retries_total", reason="store_replicas_missing") == 0
    assert h.store.waves == [1]  # the last wave waited for it
    assert h.outputs.waves() == [[LEDGER, ADS_INSTRUCTIONS, STATE], [CHANGELOG]]


@pytest.mark.parametrize(
    ("published_at", "count", "seconds"),
    [
        pytest.param(NOW - 250, 1, 0.25, id="with-publish-time"),
        pytest.param(NOW + 1000, 1, 0.0, id="publisher-clock-ahead"),
        pytest.param(None, 0, 0.0, id="without-publish-time"),
    ],
)
def test_latency_histograms_observe_the_publish_time(
    published_at: int | None, count: int, seconds: float
) -> None:
    h = Harness()

    h.run(inbound(withdraw(), published_at=published_at))

    assert h.metric("consent_publish_to_worker_seconds_count") == count
    assert h.metric("consent_publish_to_worker_seconds_sum") == pytest.approx(seconds)
    assert h.metric("consent_publish_to_store_seconds_count") == count
    assert h.metric("consent_publish_to_store_seconds_sum") == pytest.approx(seconds)
    assert h.metric("consent_publish_to_partner_topic_seconds_count", partner="ads") == count
    assert h.metric("consent_publish_to_partner_topic_seconds_sum", partner="ads") == pytest.approx(
        seconds
    )


def test_publish_to_worker_counts_every_record_taken_also_those_without_effects() -> None:
    h = Harness()
    shared = share("logistics", ["delivery_details"], {"waybill_no": "SF1"})

    h.run(
        inbound(shared, published_at=NOW - 30, offset=1),
        inbound(value=b"not avro", published_at=NOW - 40, offset=2),  # dead-lettered
        inbound(withdraw(), published_at=NOW - 10, offset=3),
    )

    assert h.metric("consent_publish_to_worker_seconds_count") == 3
    assert h.metric("consent_publish_to_worker_seconds_sum") == pytest.approx(0.08)
    assert h.metric("consent_publish_to_store_seconds_count") == 1  # the withdrawal only


# ---- batches --------------------------------------------------------------------------

OTHER = "buyer-0815@example.com"


def test_a_subjects_events_in_one_batch_are_decided_on_top_of_each_other() -> None:
    events = [
        share("ads", ["behaviour"], {"ad_id": "AD-1"}),
        withdraw(),
        consent("personalized_ads", ConsentDecision.GRANTED, "grant", NOW - HOUR // 2),
        close_account(),
    ]
    one_by_one, batched = Harness(), Harness()
    outcomes, sent, tickets = [], [], []
    for record in records(*events):
        outcomes += one_by_one.run(record).outcomes
        sent += instructions(one_by_one.outputs)
        tickets += ledger_entries(one_by_one.outputs, 1)

    batch = batched.run(*records(*events))

    assert batch.outcomes == outcomes
    assert [o for _, o in outcomes] == [Outcome.APPLIED] * 4
    assert instructions(batched.outputs) == sent and len(sent) == 3  # stop, resume, erase
    assert sorted(ledger_entries(batched.outputs, 1), key=lambda e: e[0]) == sorted(
        tickets, key=lambda e: e[0]
    )
    assert batched.table.data == one_by_one.table.data
    assert batched.state().version == 4


def test_a_repeated_event_in_one_batch_is_a_duplicate() -> None:
    h = Harness()
    record = inbound(withdraw())

    batch = h.run(record, record)

    assert [o for _, o in batch.outcomes] == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert len(instructions(h.outputs)) == 1 and len(ledger_entries(h.outputs, 1)) == 1


def test_only_the_last_consent_state_of_a_subject_is_written_per_batch() -> None:
    events = [
        withdraw("personalized_ads", "a-1"),
        withdraw("personalized_ads", "b-1", subject=OTHER),
        withdraw("ads_analytics", "a-2"),
        share("ads", ["behaviour"], {"ad_id": "AD-1"}),  # a version bump, no consent change
    ]
    one_by_one = Harness()
    for record in records(*events[:3]):
        one_by_one.run(record)
    h = Harness()

    h.run(*records(*events))

    ((mine, other),) = h.store.writes  # one pipelined write, one state per subject
    assert (mine.subject_id, other.subject_id) == (SUBJECT, OTHER)
    assert mine.version == 2 and h.state().version == 3
    assert [(d.purpose, d.granted) for d in mine.purposes] == [
        ("ads_analytics", False),
        ("personalized_ads", False),
    ]
    assert [mine, other] == [one_by_one.store.writes[2][0], one_by_one.store.writes[1][0]]
    state_records = h.outputs.on(STATE)
    assert [(s.key, s.wave) for s in state_records] == [(KEY, 1), (OTHER.encode(), 1)]
    assert [SERDE.decode_as(s.value or b"", ConsentState) for s in state_records] == [mine, other]


@pytest.mark.parametrize("wave", [1, 2])
def test_a_failed_wave_leaves_the_table_unchanged_and_a_retry_redoes_every_effect(
    wave: int,
) -> None:
    h = Harness()
    h.run(inbound(share("ads", ["behaviour"], {"ad_id": "AD-1"})))
    table, writes = dict(h.table.data), list(h.table.data.writes)
    record = inbound(withdraw())

    with pytest.raises(PublishError):
        h.run(record, fail_waves={wave})

    assert len(h.outputs.waves()) == wave  # nothing sent after the failed wave
    assert h.table.data == table and h.table.data.writes == writes
    assert h.subjects.get(KEY) == table[KEY]  # nothing left staged
    assert h.metric("consent_events_total", type="consent.changed", outcome="applied") == 0

    assert h.run(record).outcomes == [("consent.changed", Outcome.APPLIED)]

    assert h.outputs.waves() == [[LEDGER, ADS_INSTRUCTIONS, STATE], [CHANGELOG]]
    assert h.state().version == 2 and h.state().seen(eid("withdraw"))
    assert h.metric("consent_events_total", type="consent.changed", outcome="applied") == 1


def test_instructions_of_a_batch_keep_the_events_order() -> None:
    events = [
        withdraw("personalized_ads", "a-ads"),
        consent("research_sharing", ConsentDecision.GRANTED, "b-research", subject=OTHER),
        event(PermissionRevoked(app_id="carrier-tracking"), "a-app"),
        withdraw("ads_analytics", "b-analytics", subject=OTHER),
    ]
    h = Harness()

    h.run(*records(*events))

    sent = instructions(h.outputs)
    assert [i.source_event_id for i in sent] == [e.event_id for e in events]
    assert [i.partner for i in sent] == ["ads", "research", "logistics", "ads"]
    assert {s.wave for s in h.outputs.sent if s.topic.startswith("partner.")} == {1}


def test_ledger_entries_are_packed_one_record_per_ledger_partition_in_order() -> None:
    subjects = [f"buyer-{n}@example.com" for n in range(12)]
    h = Harness()

    h.run(*records(*(withdraw(name=f"w-{s}", subject=s) for s in subjects)))

    keys = [i.ack_key for i in instructions(h.outputs)]  # lone instructions: one ticket each
    assert len(keys) == len(subjects)
    packed = ledger_records(h.outputs, 1)
    partitions = [s.partition for s in h.outputs.on(LEDGER, 1)]
    assert len(packed) > 1 and len(set(partitions)) == len(partitions)
    for partition, entries in zip(partitions, packed, strict=True):
        assert [k for k, _ in entries] == [
            k for k in keys if ledger_partition(k, LEDGER_PARTITIONS) == partition
        ]
    assert all(isinstance(e, OpenEntry) for _, e in ledger_entries(h.outputs, 1))
    assert ledger_records(h.outputs, 2) == []  # lone instructions: no "dispatched" entries


# ---- batches in flight (``launch``: the next batch decided while this one's waves are out)


class WaveOutputs(FakeOutputs):
    """One wave of one batch: its ``delivered()`` ends when the test resolves ``acked``."""

    def __init__(self, batch: str, number: int, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = f"{batch}.{number}", log
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send(
        self, topic: str, key: Any, value: Any, headers: Any = None, partition: Any = None
    ) -> None:
        self.log.append(f"{self.name} {topic}")
        super().send(topic, key, value, headers, partition)

    async def delivered(self) -> None:
        await self.acked


class Waves:
    """The outputs factory of one batch: its waves, in the order they were asked for."""

    def __init__(self, batch: str, log: list[str]) -> None:
        self.batch, self.log, self.waves = batch, log, list[WaveOutputs]()

    def __call__(self) -> WaveOutputs:
        self.waves.append(WaveOutputs(self.batch, len(self.waves) + 1, self.log))
        return self.waves[-1]

    def ack(self, number: int, error: BaseException | None = None) -> None:
        wave = self.waves[number - 1].acked
        wave.set_result(None) if error is None else wave.set_exception(error)


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_batch_in_flight_is_decided_on_the_states_the_one_before_staged() -> None:
    h = Harness()
    h.run(inbound(share("ads", ["behaviour"], {"ad_id": "AD-1"})))
    log: list[str] = []

    async def scenario() -> tuple[EventBatch, EventBatch]:
        a, b = Waves("a", log), Waves("b", log)
        first = h.processor.launch([inbound(withdraw(), offset=43)], h.subjects, a)
        again = withdraw(name="withdraw-again")
        second = h.processor.launch([inbound(again, offset=44)], h.subjects, b, first)
        await turns()
        for waves in (a, b, a, b):  # each batch's next wave, in turn
            waves.ack(len(waves.waves))
            await turns()
        return await first.task, await second.task

    first, second = asyncio.run(scenario())

    assert first.outcomes == [("consent.changed", Outcome.APPLIED)]
    assert len(first.instructions) == 1
    # decided on the first batch's staged state: already withdrawn, nothing to instruct
    assert second.instructions == [] and len(second.outcomes) == 1
    assert h.state().seen(eid("withdraw")) and h.state().seen(eid("withdraw-again"))


def test_a_later_batch_sends_its_instructions_and_states_after_the_earlier_one() -> None:
    h = Harness()
    for s in (SUBJECT, OTHER):
        h.run(inbound(share("ads", ["behaviour"], {"ad_id": f"AD-{s}"}, subject=s), key=s.encode()))
    log: list[str] = []

    async def scenario() -> None:
        a, b = Waves("a", log), Waves("b", log)
        first = h.processor.launch([inbound(withdraw(), offset=43)], h.subjects, a)
        other = inbound(withdraw(subject=OTHER, name="w-other"), key=OTHER.encode(), offset=44)
        second = h.processor.launch([other], h.subjects, b, first)
        # first waves go out as the batches are decided, in their order
        assert log.index("a.1 " + ADS_INSTRUCTIONS) < log.index("b.1 " + ADS_INSTRUCTIONS)
        await turns()
        b.ack(1)  # the later batch's first wave is delivered first ...
        await turns()
        assert "b.2 " + CHANGELOG not in log  # ... its subjects' states wait for a's
        a.ack(1)
        await turns()
        assert log.index("a.2 " + CHANGELOG) < log.index("b.2 " + CHANGELOG)
        b.ack(2)
        await turns()
        assert not second.task.done()  # settled only after the batch before it
        a.ack(2)
        await asyncio.gather(first.task, second.task)

    asyncio.run(scenario())

    assert h.state().seen(eid("withdraw")) and h.state(OTHER.encode()).seen(eid("w-other"))


def test_when_a_batch_fails_the_batches_after_it_stop_and_stage_nothing() -> None:
    h = Harness()
    h.run(inbound(share("ads", ["behaviour"], {"ad_id": "AD-1"})))
    table = dict(h.table.data)
    log: list[str] = []

    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        a, b = Waves("a", log), Waves("b", log)
        first = h.processor.launch([inbound(withdraw(), offset=43)], h.subjects, a)
        other = inbound(withdraw(subject=OTHER, name="w-other"), key=OTHER.encode(), offset=44)
        second = h.processor.launch([other], h.subjects, b, first)
        await turns()
        b.ack(1)
        a.ack(1, PublishError("the ledger ticket was not acknowledged"))
        await asyncio.wait([first.task, second.task])
        return first.task.exception(), second.task.exception()

    failed, stopped = asyncio.run(scenario())

    assert isinstance(failed, PublishError)
    assert isinstance(stopped, FlightAborted) and stopped.__cause__ is failed
    assert not [line for line in log if ".2 " in line]  # nothing more sent
    h.subjects.discard()  # what the caller does once every flight has landed
    assert h.table.data == table and h.subjects.get(OTHER.encode()) is None
