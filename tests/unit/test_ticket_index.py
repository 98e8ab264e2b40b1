"""The ticket index: due times exactly consistent with ``needs_sweep`` plus expiry, the
due queue (earliest first, stale entries skipped) and the incrementally kept gauges.
Seeded random tickets built from the real dataclasses; no Kafka."""

from __future__ import annotations

import random
from collections import Counter

from schemas.events import DeletionScope
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.policy import load_policy
from schemas.views import OutcomeStatus, PartnerOutcome, RequestState
from streams.fanout import RequestOpening
from streams.ledger.index import (
    LedgerGauges,
    TicketIndex,
    expired,
    next_due,
    sweep_or_expiry_due,
)
from streams.ledger.tickets import (
    Ticket,
    TrackedInstruction,
    apply_ack,
    mark_dispatched,
    needs_sweep,
    open_ticket,
    sweep,
)

POLICY = load_policy()
PARTNERS = ("ads", "logistics", "payment")
BASE = 1_700_000_000_000
TIMES = [BASE + 10 * k for k in range(8)]  # few distinct times: many ties and boundaries
GRACE = 25
DAY = 86_400_000


def instruction(
    iid: str, partner: str, due_by: int, action: InstructionAction
) -> PartnerInstruction:
    return PartnerInstruction(iid, "event-" + iid, partner, action, "ref", BASE, due_by, iid)


def opening(due_by: int) -> RequestOpening:
    return RequestOpening("req", "digest", DeletionScope.ACCOUNT, (), BASE, BASE, due_by, None)


def random_ticket(rng: random.Random, key: str) -> Ticket:
    ids = [f"{key}/{j}" for j in range(rng.randint(0, 4))]
    tracked = []
    for iid in ids:
        partner = rng.choice(PARTNERS)
        outcome = PartnerOutcome(
            partner=partner,
            instruction_id=iid,
            action="ERASE",
            issued_at=BASE,
            due_by=rng.choice(TIMES),
            status=rng.choice(list(OutcomeStatus)),
            retain_until=rng.choice([None, *TIMES]),
            overdue=rng.random() < 0.3,
            follows_instruction_id=rng.choice([None, None, *(i for i in ids if i != iid)]),
        )
        keep = rng.random() < 0.6
        sent = instruction(iid, partner, outcome.due_by, InstructionAction.ERASE) if keep else None
        tracked.append(TrackedInstruction(outcome, sent))
    return Ticket(
        key=key,
        request=opening(rng.choice(TIMES)) if rng.random() < 0.6 else None,
        instructions=tuple(tracked),
        status=rng.choice(list(RequestState)),
        answered_at=rng.choice([None, None, *TIMES]),
        overdue=rng.random() < 0.3,
        updated_at=rng.choice(TIMES),
    )


# ---- next_due and expired ----------------------------------------------------------


def test_next_due_is_exactly_when_a_sweep_or_expiry_becomes_due() -> None:
    rng = random.Random(20240611)
    nows = range(TIMES[0] - 3, TIMES[-1] + GRACE + 3)
    kinds: Counter[str] = Counter()
    for n in range(1500):
        ticket = random_ticket(rng, f"t{n}")
        due = next_due(ticket, GRACE)
        kinds["never" if due is None else "due"] += 1
        for now in nows:
            if now < (ticket.answered_at or now):
                continue  # the ledger's clock never runs behind its own answer stamp
            predicted = due is not None and due <= now
            assert sweep_or_expiry_due(ticket, now, GRACE) is predicted, (ticket, now, due)
            kinds["expired"] += expired(ticket, now, GRACE) and not needs_sweep(ticket, now)
    # the generator reaches every case, not just the trivial ones
    assert kinds["never"] > 100 and kinds["due"] > 100 and kinds["expired"] > 1000


def pending(iid: str, due_by: int, *, overdue: bool = False) -> TrackedInstruction:
    return TrackedInstruction(
        PartnerOutcome("ads", iid, "ERASE", BASE, due_by, overdue=overdue), None
    )


def restricted(iid: str, until: int | None) -> TrackedInstruction:
    outcome = PartnerOutcome(
        "payment", iid, "RESTRICT", BASE, BASE, OutcomeStatus.RESTRICTED, retain_until=until
    )
    return TrackedInstruction(
        outcome, instruction(iid, "payment", BASE, InstructionAction.RESTRICT)
    )


def test_next_due_of_each_kind_of_work() -> None:
    def lone(*items: TrackedInstruction, updated_at: int = BASE) -> Ticket:
        return Ticket("k", None, items, updated_at=updated_at)

    assert next_due(lone(pending("a", BASE + 50), pending("b", BASE + 20)), GRACE) == BASE + 21
    assert next_due(lone(pending("a", BASE + 50, overdue=True)), GRACE) is None
    assert next_due(lone(restricted("r", BASE + 70)), GRACE) == BASE + 70
    assert next_due(lone(restricted("r", None)), GRACE) is None  # held, no end date
    assert next_due(lone(updated_at=BASE + 5), GRACE) == BASE + 5 + GRACE  # settled


def test_a_request_is_due_when_it_becomes_answered_late() -> None:
    open_request = Ticket("k", opening(BASE + 100), (pending("a", BASE + 900),))
    answered_in_time = Ticket(
        "k",
        opening(BASE + 100),
        (),
        RequestState.COMPLETED,
        answered_at=BASE + 100,
        updated_at=BASE + 100,
    )
    answered_late = Ticket(
        "k",
        opening(BASE + 100),
        (),
        RequestState.COMPLETED,
        answered_at=BASE + 150,
        updated_at=BASE + 150,
    )

    assert next_due(open_request, GRACE) == BASE + 101
    assert next_due(Ticket("k", opening(BASE + 100), (), overdue=True), GRACE) is None
    assert next_due(answered_in_time, GRACE) == BASE + 100 + GRACE  # only its expiry
    assert next_due(answered_late, GRACE) == BASE + 150  # due at once: flag it overdue
    flagged = Ticket(
        "k",
        opening(BASE + 100),
        (),
        RequestState.FAILED,
        answered_at=BASE + 150,
        overdue=True,
        updated_at=BASE + 160,
    )
    assert next_due(flagged, GRACE) == BASE + 160 + GRACE


def test_only_a_settled_and_finally_answered_ticket_expires() -> None:
    final = Ticket("k", opening(BASE), (), RequestState.COMPLETED, updated_at=BASE)
    assert not expired(final, BASE + GRACE - 1, GRACE)
    assert expired(final, BASE + GRACE, GRACE)
    assert not expired(Ticket("k", opening(BASE), (), RequestState.IN_PROGRESS), BASE + DAY, GRACE)
    held = Ticket("k", opening(BASE), (restricted("r", BASE + DAY),), RequestState.COMPLETED)
    assert not expired(held, BASE + DAY - 1, GRACE)
    assert expired(Ticket("k", None, (), updated_at=BASE), BASE + GRACE, GRACE)


# ---- real ledger transitions ------------------------------------------------------


def test_sweeping_at_the_due_time_always_moves_the_due_time_on() -> None:
    """Tickets from open_ticket/apply_ack/sweep: the property holds, and a sweep at
    next_due never leaves the ticket due again (the index cannot spin on a key)."""
    seen: Counter[str] = Counter()
    for seed in range(60):
        rng = random.Random(seed)
        now = BASE
        sent = [
            instruction(
                f"s{seed}/{j}",
                rng.choice(PARTNERS),
                BASE + rng.randint(1, 9) * DAY,
                rng.choice([InstructionAction.ERASE, InstructionAction.RESTRICT]),
            )
            for j in range(rng.randint(1, 4))
        ]
        ticket = open_ticket(None, "key", opening(BASE + 15 * DAY), [(i, "d") for i in sent], now)
        ticket = mark_dispatched(ticket, now) or ticket
        for _ in range(12):
            due = next_due(ticket, DAY)
            for probe in (now, now + 400 * DAY) if due is None else (now, due - 1, due):
                if probe >= now:
                    predicted = due is not None and due <= probe
                    assert sweep_or_expiry_due(ticket, probe, DAY) is predicted
            waiting = [t for t in ticket.instructions if t.pending]
            if waiting and (due is None or rng.random() < 0.5):
                now += rng.randint(0, 3) * DAY
                ticket = acknowledged(ticket, rng.choice(waiting).outcome, rng, now)
                seen["ack"] += 1
                continue
            if due is None:
                break  # nothing pending, nothing due: the ticket stays as it is
            now = max(now, due)
            if expired(ticket, now, DAY) and not needs_sweep(ticket, now):
                seen["expired"] += 1
                break  # the ledger deletes it
            ticket, follow_ups = sweep(ticket, now, POLICY)
            seen["sweep"] += 1
            seen["follow-up"] += len(follow_ups)
            after = next_due(ticket, DAY)
            assert after is None or after > now, (seed, ticket)
    assert min(seen["ack"], seen["expired"], seen["sweep"], seen["follow-up"]) > 10, seen


def acknowledged(ticket: Ticket, o: PartnerOutcome, rng: random.Random, now: int) -> Ticket:
    status = rng.choice(list(AcknowledgementStatus))
    restricted = status is AcknowledgementStatus.RESTRICTED
    until = now + rng.randint(1, 20) * DAY if restricted else None
    ack = PartnerAcknowledgement(o.instruction_id, o.partner, status, now, until)
    updated, _ = apply_ack(ticket, ack, o.partner, now)
    assert updated is not None
    return updated


# ---- the due queue ---------------------------------------------------------------


def lone_pending(key: str, due_by: int) -> Ticket:
    return Ticket(key, None, (pending(key, due_by),))


def test_pop_due_returns_due_keys_earliest_first_up_to_the_limit() -> None:
    index = TicketIndex(GRACE)
    for key, due_by in [("c", BASE + 30), ("a", BASE + 10), ("d", BASE + 90), ("b", BASE + 20)]:
        index.update(key, None, lone_pending(key, due_by))
    assert len(index) == 4

    assert index.pop_due(BASE + 10, 10) == []  # due_by itself is not late yet
    assert index.pop_due(BASE + 31, 2) == ["a", "b"]
    assert index.pop_due(BASE + 31, 2) == ["c"]
    assert index.pop_due(BASE + 31, 2) == []  # popped keys leave the queue
    assert len(index) == 1


def test_an_update_moves_a_key_and_its_old_heap_entry_is_skipped() -> None:
    index = TicketIndex(GRACE)
    early, later = lone_pending("k", BASE + 10), lone_pending("k", BASE + 50)
    index.update("k", None, early)
    index.update("k", early, later)
    index.update("gone", None, lone_pending("gone", BASE))
    index.update("gone", lone_pending("gone", BASE), None)

    assert index.pop_due(BASE + 40, 10) == []
    assert index.pop_due(BASE + 51, 10) == ["k"]
    index.update("k", later, later)  # handled, unchanged: back in the queue
    assert index.pop_due(BASE + 51, 10) == ["k"]


def test_remove_and_clear_forget_keys_and_their_gauge_share() -> None:
    index = TicketIndex(GRACE)
    a, b = lone_pending("a", BASE), lone_pending("b", BASE)
    index.update("a", None, a)
    index.update("b", None, b)

    index.remove("a", a)
    assert index.pop_due(BASE + 1, 10) == ["b"] and index.gauges().pending == {"ads": 1}
    index.update("b", b, None)
    assert index.gauges().pending == {"ads": 0}  # kept at zero: the gauge is reset
    index.update("a", None, a)
    index.clear()
    assert len(index) == 0 and index.gauges() == LedgerGauges()


def test_stale_heap_entries_are_compacted() -> None:
    index = TicketIndex(GRACE)
    before = None
    for n in range(5000):  # one key rescheduled over and over
        after = lone_pending("k", BASE + n)
        index.update("k", before, after)
        before = after
    assert len(index._heap) <= 1024
    assert index.pop_due(BASE + 5000, 10) == ["k"]


# ---- the index against a brute-force model ----------------------------------------


def recount(tickets: dict[str, Ticket]) -> LedgerGauges:
    pending_by: Counter[str] = Counter()
    overdue_by: Counter[str] = Counter()
    for t in tickets.values():
        for i in t.instructions:
            if i.outcome.status is OutcomeStatus.PENDING:
                pending_by[i.outcome.partner] += 1
                overdue_by[i.outcome.partner] += i.outcome.overdue
    open_ = [t for t in tickets.values() if t.request is not None and t.answered_at is None]
    return LedgerGauges(len(open_), sum(t.overdue for t in open_), pending_by, overdue_by)


def nonzero(gauges: LedgerGauges) -> tuple[int, int, dict[str, int], dict[str, int]]:
    def keep(m: dict[str, int]) -> dict[str, int]:
        return {p: n for p, n in m.items() if n}

    return (
        gauges.open_requests,
        gauges.overdue_requests,
        keep(dict(gauges.pending)),
        keep(dict(gauges.overdue)),
    )


def due_of(ticket: Ticket) -> int:
    due = next_due(ticket, GRACE)
    assert due is not None
    return due


def test_index_matches_a_full_rescan_after_random_writes() -> None:
    rng = random.Random(7)
    index = TicketIndex(GRACE)
    tickets: dict[str, Ticket] = {}
    queued: set[str] = set()
    now = TIMES[0]
    for step in range(4000):
        key = f"k{rng.randrange(40)}"
        if rng.random() < 0.8:
            after = random_ticket(rng, key) if rng.random() < 0.85 else None
            index.update(key, tickets.get(key), after)
            tickets.pop(key, None)
            queued.discard(key)
            if after is not None:
                tickets[key] = after
                if next_due(after, GRACE) is not None:
                    queued.add(key)
        else:
            now += rng.randint(0, 8)
            limit = rng.randint(1, 6)
            expected = sorted((due_of(tickets[k]), k) for k in queued)
            expected = [(d, k) for d, k in expected if d <= now]
            popped = index.pop_due(now, limit)
            assert popped == [k for _, k in expected[:limit]], step
            queued.difference_update(popped)
        assert len(index) == len(queued)
        assert nonzero(index.gauges()) == nonzero(recount(tickets)), step
    rebuilt = TicketIndex(GRACE)
    rebuilt.rebuild(tickets.items())
    assert nonzero(rebuilt.gauges()) == nonzero(index.gauges())
    due = sorted((d, k) for k, t in tickets.items() if (d := next_due(t, GRACE)) is not None)
    assert rebuilt.pop_due(TIMES[-1] + GRACE, len(tickets)) == [k for _, k in due]
