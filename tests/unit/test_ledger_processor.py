"""LedgerProcessor with fakes (no Kafka, no Redis): acknowledgements forwarded by key,
request lifecycle published, ignored acknowledgements counted, sweeps, expiry and the
gauges kept by the ticket index."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas.errors import PublishError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
)
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret, SubjectKeys
from schemas.topics import TopicNames
from schemas.views import RequestState, RequestStatus
from streams.events.decisions import decide
from streams.fanout import FanOut, RequestOpening
from streams.faust_glue.tables import StagedTable
from streams.inbound import Inbound
from streams.ledger.codec import (
    AckEntry,
    DispatchedEntry,
    LedgerEntry,
    OpenEntry,
    SweepEntry,
    decode_entries,
    encode_entries,
    ledger_partition,
    ticket_from_json,
    ticket_to_json,
)
from streams.ledger.index import TicketIndex
from streams.ledger.tickets import apply_ack, mark_dispatched, open_ticket
from streams.ledger_processor import LedgerProcessor
from streams.metrics import stream_metrics
from streams.outbox import RecordSender
from streams.pseudonyms import Pseudonyms, instruction_id
from streams.subject import SubjectState

POLICY = load_policy()
PSEUDONYMS = Pseudonyms(SubjectKeys.single(Secret("k")))
SERDE = AvroSerde()
NOW = 1_700_000_000_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SUBJECT = "buyer-4711@example.com"
TX_DONE = NOW - 10 * DAY
RETAIN_UNTIL = TX_DONE + 1095 * DAY
LEDGER = "consent.ledger.v1"
REQUESTS = "consent.requests.v1"

DONE = AcknowledgementStatus.DONE
RESTRICTED = AcknowledgementStatus.RESTRICTED
ERASE = InstructionAction.ERASE
RESTRICT = InstructionAction.RESTRICT


def eid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{name}"))


REQUEST = eid("request")


# ---- fakes ----------------------------------------------------------------------------


PARTITIONS = 3
GRACE_MS = DAY


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    wave: int


class FakeOutputs:
    """Records every send with the number of the wave it belongs to (``delivered``
    closes a wave: every record sent before it is acknowledged by the broker)."""

    def __init__(self) -> None:
        self.records: list[Sent] = []
        self.wave = 0

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: Any = None,
        partition: int | None = None,
    ) -> None:
        self.records.append(Sent(topic, key, value, partition, self.wave))

    async def delivered(self) -> None:
        self.wave += 1

    def on(self, topic: str) -> list[Sent]:
        return [r for r in self.records if r.topic == topic]


class FakeViews:
    """The request views in Redis."""

    def __init__(self) -> None:
        self.puts: list[RequestStatus] = []

    async def put_many(self, statuses: list[RequestStatus]) -> None:
        self.puts += statuses


class FakeTable:
    """A Faust table as ``StagedTable`` sees it: a store and a changelog topic name."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data
        self.changelog_topic = self

    def get_topic_name(self) -> str:
        return "tickets-changelog"


@dataclass
class Harness:
    topics: TopicNames = field(default_factory=TopicNames)
    now: int = NOW
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    tickets: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbox = FakeOutputs()
        self.views = FakeViews()
        self.index = TicketIndex(GRACE_MS)
        sender = RecordSender(SERDE, "urn:test:schema", self.topics, PARTITIONS)
        self.processor = LedgerProcessor(
            POLICY,
            SERDE,
            sender,
            self.views,  # type: ignore[arg-type]
            stream_metrics(self.registry),
            self.topics,
            self.index,
            clock=lambda: self.now / 1000,
        )
        self.offset = 0

    def handle(self, key: str, entry: LedgerEntry) -> None:
        self.handle_batch([(key, entry)])

    def handle_batch(self, entries: list[tuple[str, LedgerEntry]]) -> None:
        """One ledger record per entry, in one batch."""
        records = []
        for key, entry in entries:
            partition = ledger_partition(key, PARTITIONS)
            value = encode_entries([(key, entry)])
            records.append(Inbound(None, value, {}, self.topics.ledger, partition, self.offset))
            self.offset += 1
        staged = StagedTable(FakeTable(self.tickets))
        asyncio.run(self.processor.handle_batch(records, staged, self.outbox))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def published(self) -> list[RequestState]:
        """Statuses published on consent.requests.v1 (and equal to the views written)."""
        statuses = [SERDE.decode_as(r.value, RequestStatus) for r in self.outbox.on(REQUESTS)]
        assert statuses == self.views.puts
        assert [r.key for r in self.outbox.on(REQUESTS)] == [
            s.request_id.encode() for s in statuses
        ]
        return [s.status for s in statuses]


def published(h: Harness) -> list[Sent]:
    """What went out besides the ledger's own table changelog."""
    return [r for r in h.outbox.records if r.topic != "tickets-changelog"]


# ---- work to track --------------------------------------------------------------------


def event(payload: Payload, name: str, at: int) -> ConsentEvent:
    return ConsentEvent(eid(name), SUBJECT, at, "test", payload)


def share(partner: str, categories: tuple[str, ...], refs: Mapping[str, str]) -> ConsentEvent:
    payload = DataShared(partner, categories, MappingProxyType(dict(refs)), TX_DONE)
    return event(payload, f"share-{partner}", NOW - 20 * DAY)


def deletion(request: str = REQUEST) -> tuple[RequestOpening, tuple[PartnerInstruction, ...]]:
    state = SubjectState(SUBJECT)
    for e in (
        share("ads", ("behaviour",), {"ad_id": "AD-1"}),
        share("logistics", ("delivery_details", "order_records"), {"order_no": "O-1"}),
        share("payment", ("payment_records",), {"payment_account_ref": "PA-7"}),
    ):
        state = decide(state, e, FanOut(POLICY, PSEUDONYMS, NOW)).state
    payload = DeletionRequested(request, DeletionScope.ACCOUNT, "closing")
    d = decide(
        state, event(payload, f"delete-{request}", NOW - HOUR), FanOut(POLICY, PSEUDONYMS, NOW)
    )
    assert d.request is not None
    return d.request, d.instructions


OPENING, INSTRUCTIONS = deletion()
BY = {(i.partner, i.action): i for i in INSTRUCTIONS}
ADS, LOG_ERASE, LOG_RESTRICT, PAYMENT = (
    BY["ads", ERASE],
    BY["logistics", ERASE],
    BY["logistics", RESTRICT],
    BY["payment", RESTRICT],
)


def lone_instruction() -> PartnerInstruction:
    payload = ConsentChanged("personalized_ads", ConsentDecision.WITHDRAWN, "2023-09-01", "app")
    e = event(payload, "withdrawal", NOW - HOUR)
    (ins,) = decide(SubjectState(SUBJECT), e, FanOut(POLICY, PSEUDONYMS, NOW)).instructions
    return ins


def digest(ins: PartnerInstruction) -> str:
    return PSEUDONYMS.refs_digest(ins.partner_refs.items())


def open_entry() -> OpenEntry:
    return OpenEntry(REQUEST, OPENING, tuple((i, digest(i)) for i in INSTRUCTIONS))


def answer(
    ins: PartnerInstruction,
    status: AcknowledgementStatus = DONE,
    *,
    via: str | None = None,
    received_at: int = NOW + 10 * MINUTE,
) -> AckEntry:
    retain = ins.retain_until if status is RESTRICTED else None
    ack = PartnerAcknowledgement(ins.instruction_id, ins.partner, status, received_at, retain)
    return AckEntry(via or ins.partner, ack, received_at)


def in_progress(h: Harness) -> None:
    h.handle(REQUEST, open_entry())
    h.handle(REQUEST, DispatchedEntry(NOW))


def restricted(h: Harness) -> None:
    in_progress(h)
    for entry in (
        answer(ADS),
        answer(LOG_ERASE),
        answer(LOG_RESTRICT),
        answer(PAYMENT, RESTRICTED),
    ):
        h.handle(REQUEST, entry)


# ---- forwarding acknowledgements ------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "key", "ledger_key"),
    [
        pytest.param("", b"req-key", b"req-key", id="keyed"),
        pytest.param("", None, ADS.instruction_id.encode(), id="unkeyed-uses-instruction-id"),
        pytest.param("ns-1", b"req-key", b"req-key", id="namespaced-topics"),
    ],
)
def test_forward_ack_sends_an_ack_entry_under_the_record_key(
    namespace: str, key: bytes | None, ledger_key: bytes
) -> None:
    h = Harness(topics=TopicNames(namespace))
    topic = h.topics.acks("ads")
    ack = PartnerAcknowledgement(ADS.instruction_id, "ads", DONE, NOW - 5)

    record = Inbound(key, SERDE.encode(ack, topic), {}, topic, 0, 0)

    assert asyncio.run(h.processor.forward_acks([record], h.outbox)) == 1

    (sent,) = h.outbox.records
    assert sent.topic == h.topics.ledger and sent.wave == 0
    assert sent.partition == ledger_partition(ledger_key.decode(), PARTITIONS)
    assert sent.value is not None
    assert decode_entries(sent.key, sent.value) == [
        (ledger_key.decode(), AckEntry("ads", ack, NOW))
    ]


def test_undecodable_ack_is_counted_and_not_forwarded() -> None:
    h = Harness()

    record = Inbound(b"k", b"\x00garbage", {}, "partner.ads.acks.v1", 0, 0)

    forwarded = asyncio.run(h.processor.forward_acks([record], h.outbox))

    assert forwarded == 0 and h.outbox.records == []
    assert h.metric("consent_acknowledgements_ignored_total", reason="undecodable") == 1


# ---- the request lifecycle ------------------------------------------------------------


def test_request_lifecycle_is_published_to_the_topic_and_the_view() -> None:
    h = Harness()

    in_progress(h)
    h.handle(REQUEST, answer(ADS))
    h.handle(REQUEST, answer(LOG_ERASE))
    h.handle(REQUEST, answer(LOG_RESTRICT))
    h.handle(REQUEST, answer(PAYMENT, RESTRICTED, received_at=NOW + HOUR))

    assert h.published() == [
        RequestState.RECEIVED,
        RequestState.IN_PROGRESS,
        RequestState.IN_PROGRESS,
        RequestState.IN_PROGRESS,
        RequestState.IN_PROGRESS,
        RequestState.COMPLETED_WITH_RESTRICTIONS,
    ]
    final = h.views.puts[-1]
    assert final.request_id == REQUEST and final.completed_at == NOW
    assert [p.status.value for p in final.partners] == ["DONE", "DONE", "DONE", "RESTRICTED"]
    assert REQUEST.encode() in h.tickets  # request evidence stays
    assert h.metric("consent_acknowledgements_total", partner="logistics", status="DONE") == 2
    assert h.metric("consent_acknowledgements_total", partner="payment", status="RESTRICTED") == 1
    assert h.metric("consent_requests_finished_total", status="COMPLETED_WITH_RESTRICTIONS") == 1
    assert h.metric("consent_instruction_to_ack_seconds_count", partner="logistics") == 2
    assert h.metric("consent_instruction_to_ack_seconds_sum", partner="payment") == 3600.0


def test_a_failed_publish_leaves_the_ticket_as_it_was_so_the_redelivery_publishes() -> None:
    """Effect first, then state: were the ticket stored before the status was published,
    a crash in between would make the redelivered entry a no-op and the status lost."""
    h = Harness()
    in_progress(h)
    before = h.tickets[REQUEST.encode()]

    async def undelivered() -> None:
        raise PublishError("the broker did not acknowledge the status record")

    h.outbox.records.clear()
    h.outbox.delivered = undelivered  # type: ignore[method-assign]
    with pytest.raises(PublishError):
        h.handle(REQUEST, answer(ADS))
    assert h.tickets[REQUEST.encode()] == before
    assert not any(r.topic == "tickets-changelog" for r in h.outbox.records)

    h.outbox = FakeOutputs()
    h.handle(REQUEST, answer(ADS))
    assert [p.status.value for p in h.views.puts[-1].partners if p.partner == "ads"] == ["DONE"]
    assert h.tickets[REQUEST.encode()] != before


def test_repeated_open_and_dispatch_publish_nothing_new() -> None:
    h = Harness()
    in_progress(h)
    stored = dict(h.tickets)

    h.handle(REQUEST, open_entry())
    h.handle(REQUEST, DispatchedEntry(NOW + 1))

    assert h.published() == [RequestState.RECEIVED, RequestState.IN_PROGRESS]
    assert h.tickets == stored


# an instruction a request's ticket does not track is parked, not ignored: the request may
# still gain it (test_parked_acks)
@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        pytest.param(answer(PAYMENT, via="logistics"), "wrong_partner", id="wrong-acks-topic"),
        pytest.param(
            AckEntry(
                "logistics",
                PartnerAcknowledgement(PAYMENT.instruction_id, "logistics", DONE, NOW),
                NOW,
            ),
            "wrong_partner",
            id="other-partner-answers",
        ),
        pytest.param(answer(ADS), "repeated", id="repeated"),
    ],
)
def test_ignored_acknowledgements_are_counted_and_change_nothing(
    entry: AckEntry, reason: str
) -> None:
    h = Harness()
    in_progress(h)
    h.handle(REQUEST, answer(ADS))
    stored, published = dict(h.tickets), len(h.outbox.records)

    h.handle(REQUEST, entry)

    assert h.metric("consent_acknowledgements_ignored_total", reason=reason) == 1
    assert h.tickets == stored and len(h.outbox.records) == published
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 1


def test_lone_instruction_ticket_is_deleted_once_answered_and_never_published() -> None:
    h = Harness()
    ins = lone_instruction()
    key = ins.instruction_id

    h.handle(key, OpenEntry(key, None, ((ins, ""),)))
    h.handle(key, DispatchedEntry(NOW))
    assert key.encode() in h.tickets

    h.handle(key, answer(ins, received_at=NOW + MINUTE))

    assert h.tickets == {}
    assert published(h) == [] and h.views.puts == []
    assert h.metric("consent_acknowledgements_total", partner="ads", status="DONE") == 1
    assert h.metric("consent_instruction_to_ack_seconds_sum", partner="ads") == 60.0


# ---- sweeps ---------------------------------------------------------------------------


def test_sweep_entry_issues_the_retention_follow_up_once() -> None:
    h = Harness()
    restricted(h)
    h.now = RETAIN_UNTIL

    h.handle(REQUEST, SweepEntry(RETAIN_UNTIL))
    h.handle(REQUEST, SweepEntry(RETAIN_UNTIL + 1))

    (sent,) = h.outbox.on("partner.payment.instructions.v1")
    erase = SERDE.decode_as(sent.value, PartnerInstruction)
    assert erase.action is ERASE and erase.ack_key == REQUEST
    assert erase.instruction_id == instruction_id(
        PAYMENT.instruction_id, "retention-ended", "ERASE"
    )
    assert dict(erase.partner_refs) == {"payment_account_ref": "PA-7"}
    assert sent.key == PAYMENT.subject_ref.encode()
    assert h.metric("consent_retention_follow_ups_total", partner="payment") == 1
    assert h.metric("consent_instructions_total", partner="payment", action="ERASE") == 1
    assert h.published()[-1] is RequestState.IN_PROGRESS

    h.handle(REQUEST, answer(erase, received_at=RETAIN_UNTIL + HOUR))

    assert h.published()[-2:] == [RequestState.IN_PROGRESS, RequestState.COMPLETED]
    assert h.metric("consent_requests_finished_total", status="COMPLETED") == 1


def test_sweep_entry_for_nothing_due_changes_nothing() -> None:
    h = Harness()
    in_progress(h)
    stored, sent = dict(h.tickets), len(h.outbox.records)

    h.handle(REQUEST, SweepEntry(NOW))

    assert h.tickets == stored and len(h.outbox.records) == sent


def test_sweeps_are_sent_one_record_per_ledger_partition() -> None:
    h = Harness(now=NOW + 16 * DAY)  # past every request's deadline: each one is due
    for n in range(12):
        opening, sent = deletion(eid(f"due-{n}"))
        ticket = open_ticket(None, opening.request_id, opening, [(i, "") for i in sent], NOW)
        h.tickets[ticket.key.encode()] = ticket_to_json(ticket)
    keys = [k.decode() for k in h.tickets]
    asyncio.run(h.processor.rebuild_index(list(h.tickets.items())))

    asyncio.run(h.processor.sweep_due(h.outbox))

    records = h.outbox.records
    assert all(r.topic == LEDGER and r.wave == 0 for r in records)
    assert len({r.partition for r in records}) == len(records) > 1
    swept: list[str] = []
    for r in records:
        assert r.value is not None
        entries = decode_entries(r.key, r.value)
        assert all(ledger_partition(k, PARTITIONS) == r.partition for k, _ in entries)
        assert all(e == SweepEntry(h.now) for _, e in entries)
        swept += [k for k, _ in entries]
    assert sorted(swept) == sorted(keys)


def test_every_sweep_run_observes_the_time_it_held_the_loop_also_with_nothing_due() -> None:
    h = Harness(now=NOW + 16 * DAY)
    h.tickets.update(_tickets())
    asyncio.run(h.processor.rebuild_index(list(h.tickets.items())))

    assert len(_sweep_requests(h)) == 3
    assert _sweep_requests(h) == []

    assert h.metric("consent_ledger_sweep_seconds_count") == 2
    assert 0 < h.metric("consent_ledger_sweep_seconds_sum") < 1.0


# ---- the index: gauges, keys to sweep, expiry -----------------------------------------


def _tickets() -> dict[bytes, bytes]:
    """An open request, a finished request and a lone instruction, all issued at NOW."""
    lone = lone_instruction()
    opening, instructions = deletion(eid("finished"))
    finished = mark_dispatched(
        open_ticket(None, opening.request_id, opening, [(i, "") for i in instructions], NOW), NOW
    )
    for i in instructions:
        assert finished is not None
        ack = PartnerAcknowledgement(i.instruction_id, i.partner, DONE, NOW)
        finished, _ = apply_ack(finished, ack, i.partner, NOW)
    assert finished is not None and finished.status is RequestState.COMPLETED
    tickets = [
        open_ticket(None, REQUEST, OPENING, [(i, digest(i)) for i in INSTRUCTIONS], NOW),
        finished,
        open_ticket(None, lone.instruction_id, None, [(lone, "")], NOW),
    ]
    return {t.key.encode(): ticket_to_json(t) for t in tickets}


def _sweep_requests(h: Harness) -> list[str]:
    """The ticket keys of the sweep entries the timer sends at ``h.now``."""
    h.outbox.records.clear()
    asyncio.run(h.processor.sweep_due(h.outbox))
    keys: list[str] = []
    for r in h.outbox.on(LEDGER):
        assert r.value is not None
        keys += [k for k, e in decode_entries(r.key, r.value) if isinstance(e, SweepEntry)]
    return keys


@pytest.mark.parametrize(
    ("now", "due"),
    [
        pytest.param(NOW, [], id="fresh"),
        pytest.param(NOW + 2 * HOUR, ["lone"], id="lone-stop-past-1h"),
        pytest.param(NOW + 16 * DAY, ["lone", "finished", "request"], id="past-15-days"),
    ],
)
def test_the_index_names_the_tickets_to_sweep_or_expire(now: int, due: list[str]) -> None:
    h = Harness(now=now)
    h.tickets.update(_tickets())
    keys = {
        "request": REQUEST,
        "lone": lone_instruction().instruction_id,
        "finished": eid("finished"),
    }

    assert asyncio.run(h.processor.rebuild_index(list(h.tickets.items()))) == 3

    assert sorted(_sweep_requests(h)) == sorted(keys[d] for d in due)
    assert _sweep_requests(h) == []  # taken out of the queue until the ledger writes them


def test_rebuilding_the_index_lets_the_event_loop_run() -> None:
    """aiokafka's heartbeats share the worker's loop: a long rebuild must not starve them."""
    h = Harness()
    h.tickets.update(_tickets())
    items = list(h.tickets.items())  # 3 tickets, a yield after each
    ticks: list[int] = []

    async def heartbeat() -> None:
        while True:
            ticks.append(len(ticks))
            await asyncio.sleep(0)

    async def scenario() -> tuple[int, int]:
        beat = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0)
        before = len(ticks)
        count = await h.processor.rebuild_index(items, yield_every=1)
        beat.cancel()
        return count, len(ticks) - before

    count, beats_during = asyncio.run(scenario())
    assert count == 3
    assert beats_during >= 3  # the other task ran at each of the rebuild's 3 yields
    assert h.metric("consent_requests_open") == 1  # and the index is whole afterwards


def test_rebuilding_the_index_holds_one_decoded_ticket_at_a_time() -> None:
    """A worker recovers up to millions of tickets: each is indexed as it is decoded, so
    the memory the rebuild takes at its peak is the index's, not every decoded ticket's
    (which the allocator kept for good once the index's keys were spread among them)."""
    h = Harness()
    h.tickets.update(_tickets())
    request = h.tickets[REQUEST.encode()]
    items = [(f"request-{i:05d}".encode(), request) for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoded = [ticket_from_json(request) for _ in range(100)]
        per_ticket = (tracemalloc.get_traced_memory()[0] - before) / len(decoded)
        del decoded
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        count = asyncio.run(h.processor.rebuild_index(items, yield_every=10_000))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert count == 2000 and h.metric("consent_requests_open") == 2000
    assert peak < len(items) * per_ticket / 4, (peak, per_ticket)


def test_the_gauges_are_set_from_the_index_and_follow_every_write() -> None:
    h = Harness()
    h.tickets.update(_tickets())
    asyncio.run(h.processor.rebuild_index(list(h.tickets.items())))

    assert h.metric("consent_requests_open") == 1
    assert h.metric("consent_requests_overdue") == 0
    pending = {"ads": 2, "logistics": 2, "payment": 1, "research": 0}
    for partner in POLICY.partners:
        assert h.metric("consent_instructions_pending", partner=partner) == pending[partner]
        assert h.metric("consent_instructions_overdue", partner=partner) == 0

    h.now = NOW + 16 * DAY  # the sweep flags what is late; the gauges follow the flags
    h.handle_batch(
        [(REQUEST, SweepEntry(h.now)), (lone_instruction().instruction_id, SweepEntry(h.now))]
    )

    assert h.metric("consent_requests_overdue") == 1
    overdue = {"ads": 2, "logistics": 2, "payment": 1, "research": 0}
    for partner in POLICY.partners:
        assert h.metric("consent_instructions_overdue", partner=partner) == overdue[partner]


def test_a_settled_ticket_is_deleted_after_the_grace_period_and_its_evidence_stays() -> None:
    h = Harness()
    h.tickets.update(_tickets())
    finished = eid("finished").encode()
    asyncio.run(h.processor.rebuild_index(list(h.tickets.items())))
    h.now = NOW + GRACE_MS - 1
    assert eid("finished") not in _sweep_requests(h)

    h.now = NOW + GRACE_MS
    assert eid("finished") in _sweep_requests(h)
    h.handle(eid("finished"), SweepEntry(h.now))

    assert finished not in h.tickets
    (tombstone,) = [r for r in h.outbox.on("tickets-changelog") if r.key == finished]
    assert tombstone.value is None
    assert h.outbox.on(REQUESTS) == []  # the published status is the evidence; untouched
    assert REQUEST.encode() in h.tickets  # the open request is kept


def test_the_index_does_not_count_a_retention_follow_up_as_an_overdue_request() -> None:
    h = Harness()
    restricted(h)
    h.now = RETAIN_UNTIL
    h.handle(REQUEST, SweepEntry(RETAIN_UNTIL))

    assert h.metric("consent_instructions_pending", partner="payment") == 1  # the ERASE
    assert h.metric("consent_requests_overdue") == 0


# ---- batches ----------------------------------------------------------------------------


def test_a_batch_applies_its_entries_in_order_and_publishes_the_last_status_once() -> None:
    one_by_one = Harness()
    restricted(one_by_one)
    h = Harness()
    entries: list[tuple[str, LedgerEntry]] = [
        (REQUEST, open_entry()),
        (REQUEST, DispatchedEntry(NOW)),
        (REQUEST, answer(ADS)),
        (REQUEST, answer(LOG_ERASE)),
        (REQUEST, answer(LOG_RESTRICT)),
        (REQUEST, answer(PAYMENT, RESTRICTED)),
    ]

    h.handle_batch(entries)

    assert h.tickets == one_by_one.tickets
    (status,) = h.outbox.on(REQUESTS)  # intermediate statuses of one batch are not kept
    assert status.wave == 0
    assert h.views.puts[-1] == one_by_one.views.puts[-1]
    assert h.views.puts[-1].status is RequestState.COMPLETED_WITH_RESTRICTIONS
    (changelog,) = h.outbox.on("tickets-changelog")  # one write per changed key
    assert changelog.wave == 1 and changelog.value == h.tickets[REQUEST.encode()]
    assert h.metric(
        "consent_requests_finished_total", status="COMPLETED_WITH_RESTRICTIONS"
    ) == one_by_one.metric("consent_requests_finished_total", status="COMPLETED_WITH_RESTRICTIONS")


def test_positions_are_written_with_the_batch_state() -> None:
    h = Harness()
    position = (b"\x00next-offset:consent.ledger.v1:1", (1, b"42"))
    records = [Inbound(None, encode_entries([(REQUEST, open_entry())]), {}, LEDGER, 1, 41)]

    staged = StagedTable(FakeTable(h.tickets))
    asyncio.run(h.processor.handle_batch(records, staged, h.outbox, dict([position])))

    written = {r.key: (r.partition, r.value, r.wave) for r in h.outbox.on("tickets-changelog")}
    assert written[position[0]] == (1, b"42", 1)
    assert h.tickets[position[0]] == b"42"
