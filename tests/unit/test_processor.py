"""EventProcessor with fakes (no Kafka, no Redis): dead letters, the order of effects,
idempotence, store retries and the latency histograms."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.errors import StoreUnavailableError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
)
from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement, PartnerInstruction
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret
from schemas.topics import TopicNames
from schemas.views import ConsentState
from streams import processor as processor_module
from streams.decisions import Outcome, decide
from streams.fanout import FanOut
from streams.ledger_codec import DispatchedEntry, OpenEntry, decode_entry
from streams.metrics import stream_metrics
from streams.outbox import RecordSender
from streams.processor import EventProcessor, Inbound
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState, state_from_json

POLICY = load_policy()
PSEUDONYMS = Pseudonyms(Secret("k"))
SERDE = AvroSerde()
TOPICS = TopicNames()
NOW = 1_700_000_000_000
HOUR = 3_600_000
DAY = 24 * HOUR
SUBJECT = "buyer-4711@example.com"
KEY = SUBJECT.encode()
EVENTS = "consent.events.v1"
LEDGER = "consent.ledger.v1"
STATE = "consent.state.v1"
DEADLETTER = "consent.deadletter.v1"
ADS_INSTRUCTIONS = "partner.ads.instructions.v1"
STORE = "(store write)"
TABLE = "(table write)"


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{name}"))


REQUEST = eid("request")


# ---- fakes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


class FakeOutbox:
    """Records every send; the returned future is already completed (broker ack)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.records: list[Sent] = []

    async def send(self, topic: str, key: bytes, value: bytes, headers: Any) -> Any:
        self.records.append(Sent(topic, key, value, list(headers)))
        self.log.append(topic)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def on(self, topic: str) -> list[Sent]:
        return [r for r in self.records if r.topic == topic]


class FakeStore:
    """The consent store; fails ``failures`` times with StoreUnavailableError first."""

    def __init__(self, log: list[str], failures: int = 0) -> None:
        self.log, self.failures = log, failures
        self.calls = 0
        self.writes: list[ConsentState] = []

    async def apply_state(self, view: ConsentState) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("redis did not answer")
        self.writes.append(view)
        self.log.append(STORE)


class Table(dict[bytes, bytes]):
    """The subjects table: a dict that notes when it is written."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.log.append(TABLE)
        super().__setitem__(key, value)


@dataclass
class Harness:
    store_failures: int = 0
    serde: AvroSerde = SERDE
    log: list[str] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.outbox = FakeOutbox(self.log)
        self.store = FakeStore(self.log, self.store_failures)
        self.table = Table(self.log)
        sender = RecordSender(self.outbox, self.serde, "urn:test:schema", TOPICS)
        self.processor = EventProcessor(
            POLICY,
            PSEUDONYMS,
            self.serde,
            sender,
            self.store,
            stream_metrics(self.registry),
            TOPICS,
            clock=lambda: NOW / 1000,
        )

    def handle(self, record: Inbound) -> Outcome | None:
        return asyncio.run(self.processor.handle(record, self.table))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def state(self) -> SubjectState:
        return state_from_json(self.table[KEY])


# ---- events and records ---------------------------------------------------------------


def event(payload: Payload, name: str, at: int = NOW - HOUR) -> ConsentEvent:
    return ConsentEvent(eid(name), SUBJECT, at, "test", payload)


def withdraw(purpose: str = "personalized_ads", name: str = "withdraw") -> ConsentEvent:
    payload = ConsentChanged(purpose, ConsentDecision.WITHDRAWN, "2023-09-01", "settings")
    return event(payload, name)


def share(partner: str, categories: Iterable[str], refs: dict[str, str]) -> ConsentEvent:
    payload = DataShared(partner, tuple(categories), MappingProxyType(refs), NOW - 10 * DAY)
    return event(payload, f"share-{partner}", NOW - 2 * DAY)


def close_account() -> ConsentEvent:
    return event(DeletionRequested(REQUEST, DeletionScope.ACCOUNT, "closing"), "close")


def inbound(
    e: ConsentEvent | None = None,
    *,
    value: bytes | None = None,
    key: bytes | None = KEY,
    published_at: int | None = NOW - 250,
) -> Inbound:
    headers = {"ce_id": b"original-ce-id"}
    if published_at is not None:
        headers["cs_published_at"] = str(published_at).encode()
    if value is None:
        assert e is not None
        value = SERDE.encode(e, EVENTS)  # no validation: the processor must catch it
    return Inbound(key, value, headers, EVENTS, partition=3, offset=42)


def expected_instructions(*events: ConsentEvent) -> tuple[PartnerInstruction, ...]:
    state, fan = SubjectState(SUBJECT), FanOut(POLICY, PSEUDONYMS, NOW)
    d = None
    for e in events:
        d = decide(state, e, fan)
        state = d.state
    assert d is not None
    return d.instructions


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
}


@pytest.mark.parametrize(("make", "reason"), list(BAD_RECORDS.values()), ids=list(BAD_RECORDS))
def test_bad_record_goes_to_the_deadletter_topic(make: Any, reason: str) -> None:
    h = Harness()
    record: Inbound = make()

    assert h.handle(record) is None

    (dl,) = h.outbox.records
    assert dl.topic == DEADLETTER
    assert dl.key == (record.key or b"") and dl.value == record.value
    headers = dict(dl.headers)
    assert headers["ce_id"] == b"original-ce-id"  # original headers kept
    assert headers["cs_dlq_reason"] == reason.encode()
    assert headers["cs_dlq_source_topic"] == EVENTS.encode()
    assert headers["cs_dlq_source_partition"] == b"3"
    assert headers["cs_dlq_source_offset"] == b"42"
    assert headers["cs_dlq_error"]
    assert h.metric("consent_deadletters_total", reason=reason) == 1
    assert dict(h.table) == {} and h.store.calls == 0


def test_oversized_record_is_dead_lettered() -> None:
    h = Harness(serde=AvroSerde(max_record_bytes=64))
    record = inbound(value=VALID)
    assert len(VALID) > 64

    assert h.handle(record) is None
    assert [r.topic for r in h.outbox.records] == [DEADLETTER]
    assert h.metric("consent_deadletters_total", reason="oversized") == 1


# ---- effects of an applied event ------------------------------------------------------


def test_withdrawal_effects_in_order_then_the_table() -> None:
    h = Harness()
    e = withdraw()
    (ins,) = expected_instructions(e)

    assert h.handle(inbound(e)) is Outcome.APPLIED

    assert h.log == [LEDGER, ADS_INSTRUCTIONS, LEDGER, STORE, STATE, TABLE]
    opened, sent, dispatched, state = h.outbox.records
    assert opened.key == ins.instruction_id.encode() == dispatched.key
    assert decode_entry(opened.value) == OpenEntry(ins.instruction_id, None, ((ins, ""),))
    assert decode_entry(dispatched.value) == DispatchedEntry(NOW)

    assert sent.key == ins.subject_ref.encode()
    assert SERDE.decode_as(sent.value, PartnerInstruction) == ins
    headers = dict(sent.headers)
    assert headers["ce_id"] == ins.instruction_id.encode()
    assert headers["ce_type"] == b"partner.instruction.stop_processing"
    assert all(SUBJECT.encode() not in v for v in headers.values())  # ads holds no identity

    (view,) = h.store.writes
    assert state.key == KEY and SERDE.decode_as(state.value, ConsentState) == view
    assert view.version == 1 and view.updated_at == NOW
    assert [(d.purpose, d.granted) for d in view.purposes] == [("personalized_ads", False)]
    assert h.state().version == 1 and h.state().seen(e.event_id)

    assert h.metric("consent_events_total", type="consent.changed", outcome="applied") == 1
    assert h.metric("consent_instructions_total", partner="ads", action="STOP_PROCESSING") == 1


def test_duplicate_has_no_effects() -> None:
    h = Harness()
    record = inbound(withdraw())
    h.handle(record)
    log, records = list(h.log), list(h.outbox.records)

    assert h.handle(record) is Outcome.DUPLICATE

    assert h.log == log and h.outbox.records == records and len(h.store.writes) == 1
    assert h.metric("consent_events_total", type="consent.changed", outcome="duplicate") == 1


def test_stale_event_is_only_remembered() -> None:
    h = Harness()
    h.handle(inbound(withdraw()))
    older = ConsentChanged("personalized_ads", ConsentDecision.GRANTED, "2023-09-01", "settings")
    log = list(h.log)

    assert h.handle(inbound(event(older, "older", NOW - 2 * HOUR))) is Outcome.STALE

    assert h.log == [*log, TABLE]
    assert h.state().seen(eid("older")) and h.state().version == 1


def test_data_shared_only_updates_the_table() -> None:
    h = Harness()

    assert h.handle(inbound(share("ads", ["behaviour"], {"ad_id": "AD-1"}))) is Outcome.APPLIED

    assert h.log == [TABLE]
    assert [s.partner for s in h.state().shares] == ["ads"]


def test_account_deletion_opens_the_request_with_all_its_instructions() -> None:
    h = Harness()
    shares = [
        share("ads", ["behaviour"], {"ad_id": "AD-1"}),
        share("logistics", ["delivery_details"], {"order_no": "O-1"}),
    ]
    for s in shares:
        h.handle(inbound(s))
    instructions = expected_instructions(*shares, close_account())

    assert h.handle(inbound(close_account())) is Outcome.APPLIED

    assert h.log[2:] == [
        LEDGER,
        ADS_INSTRUCTIONS,
        "partner.logistics.instructions.v1",
        LEDGER,
        STORE,
        STATE,
        TABLE,
    ]
    opened = decode_entry(h.outbox.on(LEDGER)[0].value)
    assert isinstance(opened, OpenEntry)
    assert opened.key == REQUEST and opened.request is not None
    assert opened.request.request_id == REQUEST and opened.request.store_erased_at == NOW
    assert [i for i, _ in opened.instructions] == list(instructions)
    assert [d for _, d in opened.instructions] == [
        PSEUDONYMS.refs_digest(i.partner_refs.items()) for i in instructions
    ]
    assert all(r.key == REQUEST.encode() for r in h.outbox.on(LEDGER))
    (view,) = h.store.writes
    assert view.account_closed_at == NOW - HOUR and view.purposes == ()


def test_deletion_without_lineage_opens_the_request_and_dispatches_nothing() -> None:
    h = Harness()

    assert h.handle(inbound(close_account())) is Outcome.APPLIED

    assert h.log == [LEDGER, STORE, STATE, TABLE]
    opened = decode_entry(h.outbox.records[0].value)
    assert isinstance(opened, OpenEntry)
    assert opened.request is not None and opened.instructions == ()


# ---- store retries and latency --------------------------------------------------------


def test_store_outage_is_retried_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor_module, "_STORE_BACKOFF_S", (0.0,))
    h = Harness(store_failures=2)

    assert h.handle(inbound(withdraw())) is Outcome.APPLIED

    assert h.store.calls == 3 and len(h.store.writes) == 1
    assert h.metric("consent_store_write_retries_total") == 2
    assert h.log[-3:] == [STORE, STATE, TABLE]


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

    h.handle(inbound(withdraw(), published_at=published_at))

    assert h.metric("consent_publish_to_store_seconds_count") == count
    assert h.metric("consent_publish_to_store_seconds_sum") == pytest.approx(seconds)
    assert h.metric("consent_publish_to_partner_topic_seconds_count", partner="ads") == count
    assert h.metric("consent_publish_to_partner_topic_seconds_sum", partner="ads") == pytest.approx(
        seconds
    )
