"""Partner SDK, pure parts: result -> ack, backoff, commit points, dedup stores, simulated."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from consumers.dedup import (
    PRUNE_EVERY_S,
    FirstAnswers,
    InMemoryProcessedInstructions,
    SentAck,
    SqliteProcessedInstructions,
)
from consumers.partner_delivery import ack_headers, backoff_schedule, commit_points
from consumers.partner_results import (
    MAX_REASON_CHARS,
    Done,
    Rejected,
    Restricted,
    ack_for_result,
    failed_ack,
    failure_reason,
    wrong_partner_ack,
)
from consumers.simulated.partner import SIMULATED_OUTAGE, simulated_handler
from schemas.cloudevents import header_map
from schemas.errors import TransientError
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)

NOW_MS = 1_700_000_000_000
DAY_MS = 86_400_000


def instruction(**overrides: Any) -> PartnerInstruction:
    fields: dict[str, Any] = {
        "instruction_id": str(uuid.uuid4()),
        "source_event_id": str(uuid.uuid4()),
        "partner": "logistics",
        "action": InstructionAction.ERASE,
        "subject_ref": "ab" * 32,
        "issued_at": NOW_MS - 1000,
        "due_by": NOW_MS + 7 * DAY_MS,
        "ack_key": "request-key",
        "categories": ("delivery_details",),
    }
    fields.update(overrides)
    return PartnerInstruction(**fields)


# ---- result -> ack ---------------------------------------------------------------------


def test_done_maps_to_done_ack_with_completed_at() -> None:
    ins = instruction()
    ack = ack_for_result(ins, "logistics", Done(), NOW_MS)
    assert ack == PartnerAcknowledgement(
        instruction_id=ins.instruction_id,
        partner="logistics",
        status=AcknowledgementStatus.DONE,
        completed_at=NOW_MS,
    )


def test_restricted_carries_retain_until() -> None:
    ack = ack_for_result(instruction(), "payment", Restricted(NOW_MS + DAY_MS), NOW_MS)
    assert ack.status is AcknowledgementStatus.RESTRICTED
    assert ack.retain_until == NOW_MS + DAY_MS
    assert ack.reason is None


def test_rejected_carries_truncated_reason() -> None:
    ack = ack_for_result(instruction(), "ads", Rejected("x" * 2000), NOW_MS)
    assert ack.status is AcknowledgementStatus.REJECTED
    assert ack.reason is not None and len(ack.reason) == MAX_REASON_CHARS
    assert ack.retain_until is None


BAD_RESULTS = [None, "DONE", Restricted(-1), Restricted(2**63), Restricted(True), Rejected(3)]  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", BAD_RESULTS)
def test_anything_but_a_result_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="expected Done"):
        ack_for_result(instruction(), "ads", bad, NOW_MS)


def test_failed_ack_reason_names_the_exception_and_is_truncated() -> None:
    reason = failure_reason(ValueError("disk full " + "y" * 1000))
    assert reason.startswith("ValueError: disk full")
    assert len(reason) == MAX_REASON_CHARS
    ack = failed_ack(instruction(), "ads", reason, NOW_MS)
    assert (ack.status, ack.reason, ack.completed_at) == (
        AcknowledgementStatus.FAILED,
        reason,
        NOW_MS,
    )
    assert failure_reason(RuntimeError()) == "RuntimeError"


def test_wrong_partner_ack_is_rejected_from_this_partner() -> None:
    ack = wrong_partner_ack(instruction(partner="ads"), "logistics", NOW_MS)
    assert (ack.status, ack.reason, ack.partner) == (
        AcknowledgementStatus.REJECTED,
        "wrong partner",
        "logistics",
    )


# ---- delivery decisions ----------------------------------------------------------------


def test_backoff_doubles_and_has_one_wait_less_than_attempts() -> None:
    assert backoff_schedule(3, 0.2) == pytest.approx((0.2, 0.4))
    assert backoff_schedule(1, 0.2) == ()
    assert backoff_schedule(6, 10.0, max_backoff_s=30.0) == (10.0, 20.0, 30.0, 30.0, 30.0)


@pytest.mark.parametrize(("attempts", "backoff"), [(0, 0.1), (3, -1.0)])
def test_backoff_rejects_nonsense(attempts: int, backoff: float) -> None:
    with pytest.raises(ValueError):
        backoff_schedule(attempts, backoff)


def test_commit_points_stop_at_the_first_undone_message_per_partition() -> None:
    messages = [
        (0, "p0@1", True),
        (1, "p1@1", True),
        (0, "p0@2", False),
        (1, "p1@2", True),
        (0, "p0@3", True),
        (2, "p2@1", False),
    ]
    assert commit_points(messages) == {0: "p0@1", 1: "p1@2"}


def test_ack_headers_use_subject_ref_and_partner_source() -> None:
    ack = ack_for_result(instruction(), "logistics", Done(), NOW_MS)
    headers = header_map(
        ack_headers(ack, ce_id="id-1", subject_ref="ref", data_schema="s", published_at_ms=NOW_MS)
    )
    assert headers["ce_id"] == b"id-1"
    assert headers["ce_type"] == b"partner.acknowledgement"
    assert headers["ce_source"] == b"partner/logistics"
    assert headers["ce_subject"] == b"ref"


def test_the_sender_produces_the_ack_record_keyed_by_ack_key() -> None:
    import threading

    from prometheus_client import CollectorRegistry

    from consumers.partner_metrics import partner_metrics
    from consumers.partner_sender import AckSender, PendingAck, ack_record
    from schemas.serde import AvroSerde

    ack = ack_for_result(instruction(), "logistics", Done(), NOW_MS)
    item = PendingAck(SentAck(ack, "ce-1"), "key-1", "ref-1")
    produced: list[dict[str, Any]] = []

    class Producer:
        def produce(self, topic: str, **kwargs: Any) -> None:
            produced.append({"topic": topic, **kwargs})
            kwargs["on_delivery"](None, None)

        def poll(self, timeout: float) -> int:
            return 0

        def flush(self, timeout: float) -> int:
            return 0

    serde = AvroSerde()
    sender = AckSender(
        Producer(), serde, topic="partner.logistics.acks.v1", partner="logistics",
        data_schema="s", metrics=partner_metrics(CollectorRegistry()),
        now_ms=lambda: NOW_MS + 5, retry_wait_s=0,
    )  # fmt: skip
    sender.send_all([item], threading.Event())
    key, value, headers = ack_record(
        item, serde, topic="partner.logistics.acks.v1", data_schema="s", published_at_ms=NOW_MS + 5
    )
    assert item.delivered
    assert [(p["topic"], p["key"], p["value"], p["headers"]) for p in produced] == [
        ("partner.logistics.acks.v1", b"key-1", value, headers)
    ]
    assert key == b"key-1" and serde.decode_as(value, PartnerAcknowledgement) == ack
    assert header_map(headers)["ce_id"] == b"ce-1"
    assert header_map(headers)["ce_subject"] == b"ref-1"


# ---- processed-instructions stores ----------------------------------------------------


def sent(
    instruction_id: str,
    status: AcknowledgementStatus = AcknowledgementStatus.DONE,
    completed_at: int = NOW_MS,
) -> SentAck:
    ack = PartnerAcknowledgement(
        instruction_id=instruction_id,
        partner="payment",
        status=status,
        completed_at=completed_at,
        retain_until=NOW_MS + DAY_MS if status is AcknowledgementStatus.RESTRICTED else None,
        reason="boom" if status is AcknowledgementStatus.FAILED else None,
    )
    return SentAck(ack, str(uuid.uuid4()))


def test_in_memory_store_keeps_the_first_answer() -> None:
    store = InMemoryProcessedInstructions()
    first = sent("i-1")
    assert store.get("i-1") is None
    assert store.remember(first) == first
    assert store.remember(sent("i-1", AcknowledgementStatus.FAILED)) == first
    assert store.get("i-1") == first
    assert len(store) == 1


def test_sqlite_store_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "partner-payment.sqlite3"
    answers = [sent(str(uuid.uuid4()), status) for status in AcknowledgementStatus]
    store = SqliteProcessedInstructions(path, clock=lambda: NOW_MS / 1000)
    for answer in answers:
        assert store.remember(answer) == answer
    store.close()

    reopened = SqliteProcessedInstructions(path, clock=lambda: NOW_MS / 1000)
    assert len(reopened) == len(answers)
    for answer in answers:
        assert reopened.get(answer.ack.instruction_id) == answer
    assert reopened.remember(sent(answers[0].ack.instruction_id)) == answers[0]
    assert reopened.get("unknown") is None
    reopened.close()


def test_in_memory_store_forgets_the_oldest_answers_past_its_bound() -> None:
    store = InMemoryProcessedInstructions(max_answers=3)
    answers = [sent(f"i-{n}") for n in range(5)]
    for answer in answers:
        store.remember(answer)
    assert len(store) == 3
    assert [store.get(f"i-{n}") for n in range(5)] == [None, None, *answers[2:]]
    assert store.remember(sent("i-3", AcknowledgementStatus.FAILED)) == answers[3]


def test_first_answers_needs_room_for_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FirstAnswers[str, int](0)


def _ids(store: SqliteProcessedInstructions, *ids: str) -> list[str]:
    return [i for i in ids if store.get(i) is not None]


def test_sqlite_store_deletes_answers_completed_past_its_keep(tmp_path: Path) -> None:
    path = tmp_path / "partner-payment.sqlite3"
    now = [NOW_MS / 1000]
    store = SqliteProcessedInstructions(path, keep_for_s=86_400, clock=lambda: now[0])
    store.remember(sent("old", completed_at=NOW_MS - 2 * DAY_MS))
    store.remember(sent("recent", completed_at=NOW_MS - DAY_MS // 2))
    assert _ids(store, "old", "recent") == ["old", "recent"]  # pruned at most hourly

    now[0] += PRUNE_EVERY_S
    store.remember(sent("new", completed_at=NOW_MS + PRUNE_EVERY_S * 1000))
    assert _ids(store, "old", "recent", "new") == ["recent", "new"]
    store.close()

    now[0] += 86_400  # "recent" is now past a day: deleted when the file is opened
    reopened = SqliteProcessedInstructions(path, keep_for_s=86_400, clock=lambda: now[0])
    assert _ids(reopened, "old", "recent", "new") == ["new"]
    reopened.close()


def test_sqlite_store_without_a_keep_keeps_everything(tmp_path: Path) -> None:
    now = [NOW_MS / 1000 + 365 * 86_400]
    store = SqliteProcessedInstructions(
        tmp_path / "answers.sqlite3", keep_for_s=None, clock=lambda: now[0]
    )
    store.remember(sent("old", completed_at=NOW_MS))
    now[0] += PRUNE_EVERY_S
    store.remember(sent("new", completed_at=NOW_MS + 1))
    assert _ids(store, "old", "new") == ["old", "new"]
    store.close()


# ---- simulated partners ----------------------------------------------------------------


def run_handler(partner: str, ins: PartnerInstruction, **kw: Any) -> Any:
    handler = simulated_handler(partner, rng=random.Random(1), clock=lambda: NOW_MS / 1000, **kw)
    return handler(ins)


@pytest.mark.parametrize("action", [InstructionAction.ERASE, InstructionAction.RESTRICT])
def test_payment_restricts_erase_and_restrict(action: InstructionAction) -> None:
    assert run_handler("payment", instruction(action=action, retain_until=None)) == Restricted(
        NOW_MS + 1095 * DAY_MS
    )
    given = instruction(action=action, retain_until=NOW_MS + 5)
    assert run_handler("payment", given) == Restricted(NOW_MS + 5)


def test_payment_retention_days_are_configurable() -> None:
    got = run_handler("payment", instruction(retain_until=None), retention_days=10)
    assert got == Restricted(NOW_MS + 10 * DAY_MS)


@pytest.mark.parametrize(
    "action",
    [
        InstructionAction.ERASE,
        InstructionAction.STOP_PROCESSING,
        InstructionAction.RESUME_PROCESSING,
        InstructionAction.REVOKE_ACCESS,
    ],
)
@pytest.mark.parametrize("partner", ["logistics", "ads", "research"])
def test_other_partners_carry_out(partner: str, action: InstructionAction) -> None:
    assert run_handler(partner, instruction(action=action)) == Done()


def test_other_partners_restrict_until_the_instructed_date() -> None:
    ins = instruction(action=InstructionAction.RESTRICT, retain_until=NOW_MS + 42)
    assert run_handler("logistics", ins) == Restricted(NOW_MS + 42)


def test_payment_carries_out_stop_processing() -> None:
    assert run_handler("payment", instruction(action=InstructionAction.STOP_PROCESSING)) == Done()


def test_failure_rate_follows_the_seeded_rng() -> None:
    def failures(seed: int) -> list[bool]:
        handler = simulated_handler("ads", failure_rate=0.3, rng=random.Random(seed))
        out = []
        for _ in range(200):
            try:
                handler(instruction())
                out.append(False)
            except TransientError as exc:
                assert exc.reason == SIMULATED_OUTAGE
                out.append(True)
        return out

    first = failures(7)
    assert first == failures(7)
    assert 30 <= sum(first) <= 90
    always = simulated_handler("ads", failure_rate=1.0, rng=random.Random(0))
    with pytest.raises(TransientError):
        always(instruction())


def test_delay_is_slept() -> None:
    slept: list[float] = []
    handler = simulated_handler("ads", delay_s=0.05, sleep=slept.append)
    assert handler(instruction()) == Done()
    assert slept == [0.05]


def test_failure_rate_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        simulated_handler("ads", failure_rate=1.5)
