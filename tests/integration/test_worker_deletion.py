"""The worker on deletion requests: fan-out to the partners that hold the data, the
request lifecycle driven by acknowledgements, and the evidence on consent.requests.v1.

One worker for the module, under its own uuid namespace (see ``processes.py``).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.events import ConsentEvent
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.views import RequestState, RequestStatus
from streams.events.decisions import decide
from streams.fanout import FanOut
from streams.pseudonyms import Pseudonyms, instruction_id
from streams.subject import SubjectState

from .processes import (
    TopicRecord,
    WorkerProcess,
    consent_changed,
    data_shared,
    deletion_requested,
    new_subject,
    now_ms,
    read_all,
    read_until,
)
from .processes import worker_factory as worker_factory
from .worker_fixtures import publisher as publisher
from .worker_fixtures import redis_client as redis_client
from .worker_fixtures import settings as settings
from .worker_fixtures import store as store
from .worker_fixtures import worker as worker

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
DAY_MS = 86_400_000
RETENTION_MS = 1095 * DAY_MS  # transaction records: 3 years after the transaction
IGNORED = "consent_acknowledgements_ignored_total"
PARKED = "consent_acknowledgements_parked_total"


class Acks:
    """Produces acknowledgements the way a partner does: key = the instruction's ack_key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.serde = AvroSerde()
        self.producer = Producer(settings.producer_config())

    def send(self, topic_partner: str, ack: PartnerAcknowledgement, key: str) -> None:
        topic = self.settings.topics.acks(topic_partner)
        self.producer.produce(topic, key=key.encode(), value=self.serde.encode(ack, topic))
        assert self.producer.flush(30) == 0

    def answer(
        self,
        ins: PartnerInstruction,
        status: AcknowledgementStatus,
        *,
        partner: str | None = None,
        via: str | None = None,
    ) -> PartnerAcknowledgement:
        ack = PartnerAcknowledgement(
            instruction_id=ins.instruction_id,
            partner=partner or ins.partner,
            status=status,
            completed_at=now_ms(),
            retain_until=ins.retain_until if status is AcknowledgementStatus.RESTRICTED else None,
        )
        self.send(via or ins.partner, ack, ins.ack_key)
        return ack


@pytest.fixture(scope="module")
def acks(settings: Settings) -> Acks:
    return Acks(settings)


def for_request(records: list[TopicRecord], request_id: str) -> list[PartnerInstruction]:
    return [r.obj for r in records if r.obj.request_id == request_id]


def wait_instructions(
    worker: WorkerProcess, partner: str, request_id: str, count: int
) -> list[TopicRecord]:
    settings = worker.settings
    records = read_until(
        settings,
        settings.topics.instructions(partner),
        lambda rs: len(for_request(rs, request_id)) >= count,
        timeout_s=TIMEOUT_S,
        what=f"{count} instruction(s) for {partner}",
        explain=worker.describe,
    )
    return [r for r in records if r.obj.request_id == request_id]


def request_view(worker: WorkerProcess, request_id: str) -> dict[str, Any] | None:
    status, body = worker.get_json(f"/requests/{request_id}")
    return body if status == 200 else None


def wait_view(worker: WorkerProcess, request_id: str, *states: RequestState) -> dict[str, Any]:
    wanted = {s.value for s in states}

    def view_in_state() -> dict[str, Any] | None:
        view = request_view(worker, request_id)
        return view if view is not None and view["status"] in wanted else None

    return worker.poll(view_in_state, TIMEOUT_S, f"GET /requests/{request_id} in {sorted(wanted)}")


def published_statuses(worker: WorkerProcess, request_id: str, final: RequestState) -> list[Any]:
    settings = worker.settings
    records = read_until(
        settings,
        settings.topics.requests,
        lambda rs: any(r.key == request_id.encode() and r.obj.status is final for r in rs),
        timeout_s=TIMEOUT_S,
        what=f"{final} on consent.requests.v1",
        explain=worker.describe,
    )
    return [r for r in records if r.key == request_id.encode()]


def wait_ignored(worker: WorkerProcess, reason: str, before: float) -> None:
    worker.poll(
        lambda: worker.metric(IGNORED, reason=reason) >= before + 1,
        TIMEOUT_S,
        f"{IGNORED}{{reason={reason!r}}} to increase",
    )


def assert_closed(worker: WorkerProcess, store: ConsentStore, r: redis.Redis, subject: str) -> None:
    key = store.key(subject)
    worker.poll(lambda: r.hexists(key, "closed"), TIMEOUT_S, "the closure marker")
    assert set(r.hgetall(key)) == {b"v", b"closed"}  # nothing but the marker is kept
    for purpose in worker.policy.purposes:
        assert store.is_allowed(subject, purpose) is False, purpose


def test_account_deletion_reaches_exactly_the_partners_that_hold_data_and_completes(
    worker: WorkerProcess,
    publisher: ConsentPublisher,
    store: ConsentStore,
    redis_client: redis.Redis,
    settings: Settings,
    acks: Acks,
) -> None:
    subject = new_subject()
    completed = now_ms() - 10 * DAY_MS
    request_id = str(uuid.uuid4())
    payment_share = data_shared(
        subject,
        "payment",
        ("payment_records", "bank_account"),
        {"payment_account_ref": "PA-1001"},
        transaction_completed_at=completed,
    )
    logistics_share = data_shared(
        subject,
        "logistics",
        ("delivery_details", "order_records"),
        {"waybill": "WB-2002", "order_no": "ORD-3003"},
        transaction_completed_at=completed,
    )
    deletion = deletion_requested(subject, request_id=request_id)
    publisher.publish_many([payment_share, logistics_share, deletion])

    (payment_rec,) = wait_instructions(worker, "payment", request_id, 1)
    logistics_recs = wait_instructions(worker, "logistics", request_id, 2)
    pay: PartnerInstruction = payment_rec.obj
    by_action = {r.obj.action: r.obj for r in logistics_recs}
    pseudonyms = Pseudonyms(settings.subject_keys)
    assert payment_rec.key == pseudonyms.subject_ref("payment", subject).encode()
    assert pay.action is InstructionAction.RESTRICT
    assert pay.categories == ("bank_account", "payment_records")
    assert pay.retain_until == completed + RETENTION_MS
    assert dict(pay.partner_refs) == {"payment_account_ref": "PA-1001"}
    assert pay.subject_id == subject  # payment holds the identity
    assert pay.ack_key == request_id
    assert pay.instruction_id == instruction_id(deletion.event_id, "payment", "RESTRICT")
    assert set(by_action) == {InstructionAction.ERASE, InstructionAction.RESTRICT}
    erase, restrict = by_action[InstructionAction.ERASE], by_action[InstructionAction.RESTRICT]
    assert erase.categories == ("delivery_details",)
    assert erase.retain_until is None
    assert restrict.categories == ("order_records",)
    assert restrict.retain_until == completed + RETENTION_MS
    for ins in (erase, restrict):
        assert dict(ins.partner_refs) == {"waybill": "WB-2002", "order_no": "ORD-3003"}
        assert ins.ack_key == request_id
    for rec in logistics_recs:
        assert rec.key == pseudonyms.subject_ref("logistics", subject).encode()
    for partner in ("ads", "research"):
        others = read_all(settings, settings.topics.instructions(partner))
        assert [r for r in others if r.obj.source_event_id == deletion.event_id] == []
        assert for_request(others, request_id) == []

    open_view = wait_view(worker, request_id, RequestState.RECEIVED, RequestState.IN_PROGRESS)
    assert {p["instruction_id"] for p in open_view["partners"]} == {
        pay.instruction_id,
        erase.instruction_id,
        restrict.instruction_id,
    }
    assert {p["status"] for p in open_view["partners"]} == {"PENDING"}
    assert open_view["scope"] == "ACCOUNT"
    assert open_view["store_erased_at"] is not None
    assert_closed(worker, store, redis_client, subject)
    in_progress = wait_view(worker, request_id, RequestState.IN_PROGRESS)

    # An ack on the wrong partner's topic changes nothing.
    wrong_before = worker.metric(IGNORED, reason="wrong_partner")
    acks.answer(pay, AcknowledgementStatus.RESTRICTED, via="logistics")
    wait_ignored(worker, "wrong_partner", wrong_before)
    assert request_view(worker, request_id) == in_progress

    acks.answer(pay, AcknowledgementStatus.RESTRICTED)
    acks.answer(erase, AcknowledgementStatus.DONE)
    acks.answer(restrict, AcknowledgementStatus.RESTRICTED)

    final = wait_view(worker, request_id, RequestState.COMPLETED_WITH_RESTRICTIONS)
    outcomes = {p["instruction_id"]: p for p in final["partners"]}
    assert outcomes[pay.instruction_id]["status"] == "RESTRICTED"
    assert outcomes[pay.instruction_id]["retain_until"] == completed + RETENTION_MS
    assert outcomes[erase.instruction_id]["status"] == "DONE"
    assert outcomes[restrict.instruction_id]["status"] == "RESTRICTED"
    assert final["completed_at"] is not None
    history = published_statuses(worker, request_id, RequestState.COMPLETED_WITH_RESTRICTIONS)
    states = [r.obj.status for r in history]
    assert states[0] in (RequestState.RECEIVED, RequestState.IN_PROGRESS)
    assert states[-1] is RequestState.COMPLETED_WITH_RESTRICTIONS
    last: RequestStatus = history[-1].obj
    assert last.subject_digest == pseudonyms.evidence_digest(subject)
    for rec in history:  # the evidence does not keep the deleted data
        for secret in (subject, "PA-1001", "WB-2002", "ORD-3003"):
            assert secret.encode() not in (rec.value or b""), secret

    # A repeated ack changes nothing either. An ack for an instruction the request does not
    # have, and one under a key no ticket was opened for, are parked (each may have come
    # before its ticket entry: streams.ledger.parked) and change nothing.
    repeated_before = worker.metric(IGNORED, reason="repeated")
    unknown_before = worker.metric(IGNORED, reason="unknown_instruction")
    parked_before = worker.metric(PARKED, partner="payment")
    acks.answer(erase, AcknowledgementStatus.FAILED)
    stray = PartnerAcknowledgement(str(uuid.uuid4()), "payment", AcknowledgementStatus.DONE, 1)
    acks.send("payment", stray, request_id)
    early = PartnerAcknowledgement(str(uuid.uuid4()), "payment", AcknowledgementStatus.DONE, 1)
    acks.send("payment", early, early.instruction_id)
    wait_ignored(worker, "repeated", repeated_before)
    worker.poll(
        lambda: worker.metric(PARKED, partner="payment") >= parked_before + 2,
        TIMEOUT_S,
        f"{PARKED} to increase by 2",
    )
    assert request_view(worker, request_id) == final
    assert worker.metric(IGNORED, reason="repeated") == repeated_before + 1
    assert worker.metric(IGNORED, reason="unknown_instruction") == unknown_before
    assert worker.metric(PARKED, partner="payment") == parked_before + 2
    finished = worker.metric(
        "consent_requests_finished_total", status="COMPLETED_WITH_RESTRICTIONS"
    )
    assert finished == 1


def test_deletion_erased_everywhere_completes(
    worker: WorkerProcess,
    publisher: ConsentPublisher,
    store: ConsentStore,
    redis_client: redis.Redis,
    settings: Settings,
    acks: Acks,
) -> None:
    subject = new_subject()
    request_id = str(uuid.uuid4())
    share = data_shared(subject, "logistics", ("delivery_details",), {"waybill": "WB-9"})
    deletion = deletion_requested(subject, request_id=request_id)
    publisher.publish_many([share, deletion])

    (record,) = wait_instructions(worker, "logistics", request_id, 1)
    erase: PartnerInstruction = record.obj
    assert erase.action is InstructionAction.ERASE
    assert erase.categories == ("delivery_details",)
    assert_closed(worker, store, redis_client, subject)
    wait_view(worker, request_id, RequestState.RECEIVED, RequestState.IN_PROGRESS)

    acks.answer(erase, AcknowledgementStatus.DONE)

    final = wait_view(worker, request_id, RequestState.COMPLETED)
    assert [(p["partner"], p["status"]) for p in final["partners"]] == [("logistics", "DONE")]
    history = published_statuses(worker, request_id, RequestState.COMPLETED)
    assert history[-1].obj.status is RequestState.COMPLETED
    for partner in ("payment", "ads", "research"):
        others = read_all(settings, settings.topics.instructions(partner))
        assert for_request(others, request_id) == [], partner


def answer_then_publish(
    worker: WorkerProcess,
    publisher: ConsentPublisher,
    acks: Acks,
    ins: PartnerInstruction,
    event: ConsentEvent,
) -> float:
    """The partner answers ``ins`` (DONE) before ``event``, which makes it, is published:
    waits for the answer to be parked, then applied. Returns the parked count before."""
    partner = ins.partner
    parked = worker.metric(PARKED, partner=partner)
    applied = worker.metric("consent_acknowledgements_total", partner=partner, status="DONE")
    acks.answer(ins, AcknowledgementStatus.DONE)
    worker.poll(
        lambda: worker.metric(PARKED, partner=partner) >= parked + 1,
        TIMEOUT_S,
        "the answer parked",
    )
    publisher.publish(event)
    worker.poll(
        lambda: (
            worker.metric("consent_acknowledgements_total", partner=partner, status="DONE")
            >= applied + 1
        ),
        TIMEOUT_S,
        "the parked answer applied",
    )
    return parked


def test_an_answer_before_its_ticket_is_parked_and_applied_when_the_ticket_opens(
    worker: WorkerProcess, publisher: ConsentPublisher, settings: Settings, acks: Acks
) -> None:
    """A batch's tickets and instructions go out in one wave, so after a crash between
    their deliveries a partner's answer can reach the ledger before its ticket
    (``streams.ledger.parked``). Here the answer is sent first on purpose (instruction ids are
    deterministic): it is parked, then applied when the withdrawal opens the ticket."""
    subject = new_subject()
    withdrawal = consent_changed(subject, "personalized_ads", False)
    fan = FanOut(worker.policy, Pseudonyms(settings.subject_keys), now_ms())
    (ins,) = decide(SubjectState(subject), withdrawal, fan).instructions
    assert ins.partner == "ads" and ins.ack_key == ins.instruction_id
    unknown = worker.metric(IGNORED, reason="unknown_instruction")
    pending = worker.metric("consent_instructions_pending", partner="ads")

    parked = answer_then_publish(worker, publisher, acks, ins, withdrawal)

    sent = read_until(
        settings,
        settings.topics.instructions("ads"),
        lambda rs: any(r.obj.instruction_id == ins.instruction_id for r in rs),
        timeout_s=TIMEOUT_S,
        what="the withdrawal's instruction on the ads topic",
        explain=worker.describe,
    )
    out = next(r.obj for r in sent if r.obj.instruction_id == ins.instruction_id)
    assert (out.action, out.subject_ref, out.purposes) == (
        ins.action,
        ins.subject_ref,
        ins.purposes,
    )
    assert worker.metric(PARKED, partner="ads") == parked + 1
    assert worker.metric(IGNORED, reason="unknown_instruction") == unknown
    assert worker.metric("consent_instructions_pending", partner="ads") == pending


def test_an_answer_before_an_instruction_a_closed_accounts_request_gains_is_applied(
    worker: WorkerProcess, publisher: ConsentPublisher, settings: Settings, acks: Acks
) -> None:
    """Data shared with a partner after the account's closure adds an ERASE to the
    closure's request, whose ticket is open. A crash between that instruction and its
    ticket entry lets the partner's answer reach the ledger first; here it is sent first
    on purpose (instruction ids are deterministic). It is parked, then applied."""
    subject, request_id = new_subject(), str(uuid.uuid4())
    closure = [
        data_shared(subject, "payment", ("payment_records",), {"payment_account_ref": "PA-9"}),
        deletion_requested(subject, request_id=request_id),
    ]
    publisher.publish_many(closure)
    wait_view(worker, request_id, RequestState.RECEIVED, RequestState.IN_PROGRESS)
    fan = FanOut(worker.policy, Pseudonyms(settings.subject_keys), now_ms())
    state = SubjectState(subject)
    for event in closure:
        state = decide(state, event, fan).state
    late = data_shared(subject, "ads", ("behaviour",), {"ad_id": "AD-9"})
    (ins,) = decide(state, late, fan).instructions
    assert ins.partner == "ads" and ins.ack_key == request_id
    unknown = worker.metric(IGNORED, reason="unknown_instruction")

    answer_then_publish(worker, publisher, acks, ins, late)

    view = wait_view(worker, request_id, RequestState.IN_PROGRESS)
    answered = {p["instruction_id"]: p["status"] for p in view["partners"]}
    assert answered[ins.instruction_id] == "DONE"
    assert worker.metric(IGNORED, reason="unknown_instruction") == unknown
