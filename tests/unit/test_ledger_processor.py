"""LedgerProcessor with fakes (no Kafka, no Redis): acknowledgements forwarded by key,
request lifecycle published, ignored acknowledgements counted, sweeps and gauges."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

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
from schemas.settings import Secret
from schemas.topics import TopicNames
from schemas.views import RequestState, RequestStatus
from streams.decisions import decide
from streams.fanout import FanOut, RequestOpening
from streams.ledger import apply_ack, mark_dispatched, open_ticket
from streams.ledger_codec import (
    AckEntry,
    DispatchedEntry,
    LedgerEntry,
    OpenEntry,
    SweepEntry,
    decode_entry,
    encode_entry,
    ticket_to_json,
)
from streams.ledger_processor import LedgerProcessor
from streams.metrics import stream_metrics
from streams.outbox import RecordSender
from streams.pseudonyms import Pseudonyms, instruction_id
from streams.subject import SubjectState

POLICY = load_policy()
PSEUDONYMS = Pseudonyms(Secret("k"))
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


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes
    value: bytes


class FakeOutbox:
    def __init__(self) -> None:
        self.records: list[Sent] = []

    async def send(self, topic: str, key: bytes, value: bytes, headers: Any) -> Any:
        self.records.append(Sent(topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def on(self, topic: str) -> list[Sent]:
        return [r for r in self.records if r.topic == topic]


class FakeViews:
    """The request views in Redis."""

    def __init__(self) -> None:
        self.puts: list[RequestStatus] = []

    async def put(self, status: RequestStatus) -> None:
        self.puts.append(status)


@dataclass
class Harness:
    topics: TopicNames = field(default_factory=TopicNames)
    now: int = NOW
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    tickets: dict[bytes, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.outbox = FakeOutbox()
        self.views = FakeViews()
        sender = RecordSender(self.outbox, SERDE, "urn:test:schema", self.topics)
        self.processor = LedgerProcessor(
            POLICY,
            SERDE,
            sender,
            self.views,  # type: ignore[arg-type]
            stream_metrics(self.registry),
            self.topics,
            clock=lambda: self.now / 1000,
        )

    def handle(self, key: str, entry: LedgerEntry) -> None:
        asyncio.run(self.processor.handle(key.encode(), encode_entry(entry), self.tickets))

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

    assert asyncio.run(h.processor.forward_ack(key, SERDE.encode(ack, topic), topic)) is True

    (sent,) = h.outbox.records
    assert sent.topic == h.topics.ledger and sent.key == ledger_key
    assert decode_entry(sent.value) == AckEntry("ads", ack, NOW)


def test_undecodable_ack_is_counted_and_not_forwarded() -> None:
    h = Harness()

    forwarded = asyncio.run(h.processor.forward_ack(b"k", b"\x00garbage", "partner.ads.acks.v1"))

    assert forwarded is False and h.outbox.records == []
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

    async def unavailable(status: RequestStatus) -> None:
        raise ConnectionError("redis down")

    h.views.put = unavailable  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        h.handle(REQUEST, answer(ADS))
    assert h.tickets[REQUEST.encode()] == before

    h.views = FakeViews()
    h.processor._views = h.views
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


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        pytest.param(
            AckEntry(
                "ads",
                PartnerAcknowledgement(eid("nobody"), "ads", DONE, NOW),
                NOW,
            ),
            "unknown_instruction",
            id="unknown-instruction",
        ),
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


def test_ack_for_an_unknown_ticket_is_ignored() -> None:
    h = Harness()

    h.handle(eid("nothing"), answer(ADS))

    assert h.tickets == {} and h.outbox.records == []
    assert h.metric("consent_acknowledgements_ignored_total", reason="unknown_instruction") == 1


def test_lone_instruction_ticket_is_deleted_once_answered_and_never_published() -> None:
    h = Harness()
    ins = lone_instruction()
    key = ins.instruction_id

    h.handle(key, OpenEntry(key, None, ((ins, ""),)))
    h.handle(key, DispatchedEntry(NOW))
    assert key.encode() in h.tickets

    h.handle(key, answer(ins, received_at=NOW + MINUTE))

    assert h.tickets == {}
    assert h.outbox.records == [] and h.views.puts == []
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


def test_request_sweeps_sends_one_sweep_entry_per_key() -> None:
    h = Harness()

    asyncio.run(h.processor.request_sweeps([b"a", b"b"]))

    assert [(r.topic, r.key) for r in h.outbox.records] == [(LEDGER, b"a"), (LEDGER, b"b")]
    assert all(decode_entry(r.value) == SweepEntry(NOW) for r in h.outbox.records)


# ---- scan: gauges and keys to sweep ---------------------------------------------------


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


@pytest.mark.parametrize(
    ("now", "due", "open_overdue", "pending", "overdue"),
    [
        pytest.param(
            NOW,
            [],
            (1, 0),
            {"ads": 2, "logistics": 2, "payment": 1, "research": 0},
            {"ads": 0, "logistics": 0, "payment": 0, "research": 0},
            id="fresh",
        ),
        pytest.param(
            NOW + 2 * HOUR,
            ["lone"],
            (1, 0),
            {"ads": 2, "logistics": 2, "payment": 1, "research": 0},
            {"ads": 1, "logistics": 0, "payment": 0, "research": 0},
            id="lone-stop-past-1h",
        ),
        pytest.param(
            NOW + 16 * DAY,
            ["request", "lone"],
            (1, 1),
            {"ads": 2, "logistics": 2, "payment": 1, "research": 0},
            {"ads": 2, "logistics": 2, "payment": 1, "research": 0},
            id="request-past-15-days",
        ),
    ],
)
def test_scan_sets_the_gauges_and_returns_the_keys_to_sweep(
    now: int,
    due: list[str],
    open_overdue: tuple[int, int],
    pending: dict[str, int],
    overdue: dict[str, int],
) -> None:
    h = Harness(now=now)
    tickets = _tickets()
    keys = {"request": REQUEST.encode(), "lone": lone_instruction().instruction_id.encode()}

    due_keys, figures = h.processor.scan(tickets.values())

    assert due_keys == [keys[d] for d in due]
    assert figures == {"open_requests": open_overdue[0], "overdue_requests": open_overdue[1]}
    assert h.metric("consent_requests_open") == open_overdue[0]
    assert h.metric("consent_requests_overdue") == open_overdue[1]
    for partner in POLICY.partners:
        assert h.metric("consent_instructions_pending", partner=partner) == pending[partner]
        assert h.metric("consent_instructions_overdue", partner=partner) == overdue[partner]


def test_scan_does_not_count_a_retention_follow_up_as_an_overdue_request() -> None:
    h = Harness()
    restricted(h)
    h.now = RETAIN_UNTIL
    h.handle(REQUEST, SweepEntry(RETAIN_UNTIL))

    h.processor.scan(h.tickets.values())

    assert h.metric("consent_instructions_pending", partner="payment") == 1  # the ERASE
    assert h.metric("consent_requests_overdue") == 0
