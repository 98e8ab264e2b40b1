"""The instruction ledger: every instruction until it is acknowledged or escalated.

A *ticket* is keyed like the acknowledgements (the instruction's ``ack_key``): a deletion
request's id (the request and all its instructions) or a lone instruction's id. Pure
functions over plain data; the ledger agent applies them in order per key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.policy import Policy
from schemas.views import (
    FINAL_REQUEST_STATES,
    OutcomeStatus,
    PartnerOutcome,
    RequestState,
    RequestStatus,
)
from streams.fanout import RequestOpening
from streams.pseudonyms import instruction_id

__all__ = [
    "AckEntry",
    "AckOutcome",
    "Ticket",
    "TrackedInstruction",
    "answered_late",
    "apply_ack",
    "awaits_follow_up",
    "mark_dispatched",
    "needs_sweep",
    "open_ticket",
    "request_status",
    "sweep",
]


class AckOutcome(StrEnum):
    APPLIED = "applied"
    UNKNOWN_INSTRUCTION = "unknown_instruction"
    WRONG_PARTNER = "wrong_partner"
    REPEATED = "repeated"


@dataclass(frozen=True, slots=True)
class AckEntry:
    """A partner's acknowledgement as the ledger received it (a ledger entry, and what a
    ticket keeps of an acknowledgement that came before its instruction: ``parked``)."""

    partner: str  # the partner whose acks topic it came from
    ack: PartnerAcknowledgement
    received_at: int


@dataclass(frozen=True, slots=True)
class TrackedInstruction:
    """An instruction and its outcome. ``sent`` keeps the full instruction only while a
    retention follow-up may still need its references; otherwise it is dropped."""

    outcome: PartnerOutcome
    sent: PartnerInstruction | None

    @property
    def pending(self) -> bool:
        return self.outcome.status is OutcomeStatus.PENDING


@dataclass(frozen=True, slots=True)
class Ticket:
    key: str
    request: RequestOpening | None
    instructions: tuple[TrackedInstruction, ...]
    status: RequestState = RequestState.RECEIVED
    dispatched_at: int | None = None
    completed_at: int | None = None
    answered_at: int | None = None
    """First time the request reached a final status (the answer of 四.(七)); never reset
    when a retention follow-up reopens it."""
    overdue: bool = False
    updated_at: int = 0
    parked: tuple[AckEntry, ...] = ()
    """Acknowledgements of instructions the ticket does not track yet
    (``streams.ledger.parked``)."""

    def find(self, iid: str) -> TrackedInstruction | None:
        return next((t for t in self.instructions if t.outcome.instruction_id == iid), None)

    @property
    def status_final(self) -> bool:
        return self.status in FINAL_REQUEST_STATES

    @property
    def settled(self) -> bool:
        """Nothing left to wait for: no pending instruction, no retention to follow up, no
        parked acknowledgement."""
        if self.parked:
            return False
        return not any(t.pending or awaits_follow_up(self, t) for t in self.instructions)


_DELETION_ACTIONS = frozenset({InstructionAction.ERASE, InstructionAction.RESTRICT})


def _track(
    ins: PartnerInstruction, refs_digest: str, follows: str | None = None, refs_dropped: int = 0
) -> TrackedInstruction:
    # deletion work keeps its references until answered: a RESTRICTED answer (to RESTRICT
    # or to ERASE, e.g. backups kept until purged) needs them for the follow-up ERASE
    keep = ins if ins.action in _DELETION_ACTIONS else None
    return TrackedInstruction(
        PartnerOutcome(
            partner=ins.partner,
            instruction_id=ins.instruction_id,
            action=ins.action.value,
            issued_at=ins.issued_at,
            due_by=ins.due_by,
            categories=ins.categories,
            refs_digest=refs_digest,
            follows_instruction_id=follows,
            refs_dropped=refs_dropped,
        ),
        keep,
    )


def _derive(ticket: Ticket, now: int) -> Ticket:
    outcomes = [t.outcome for t in ticket.instructions]
    followed = {o.follows_instruction_id for o in outcomes if o.follows_instruction_id}
    effective = [o for o in outcomes if o.instruction_id not in followed]
    if any(o.status is OutcomeStatus.PENDING for o in effective):
        dispatched = ticket.dispatched_at is not None
        status = RequestState.IN_PROGRESS if dispatched else RequestState.RECEIVED
    elif any(o.status in (OutcomeStatus.FAILED, OutcomeStatus.REJECTED) for o in effective):
        status = RequestState.FAILED
    elif any(o.status is OutcomeStatus.RESTRICTED for o in effective):
        status = RequestState.COMPLETED_WITH_RESTRICTIONS
    else:
        status = RequestState.COMPLETED
    final = status in FINAL_REQUEST_STATES
    completed_at = (ticket.completed_at or now) if final else None
    answered_at = ticket.answered_at or (now if final else None)
    return replace(
        ticket, status=status, completed_at=completed_at, answered_at=answered_at, updated_at=now
    )


def answered_late(ticket: Ticket, now: int) -> bool:
    """The request was (or still is) not answered by its deadline; sticky evidence."""
    r = ticket.request
    return r is not None and r.due_by < (ticket.answered_at or now)


def open_ticket(
    ticket: Ticket | None,
    key: str,
    request: RequestOpening | None,
    instructions: list[tuple[PartnerInstruction, str]],
    now: int,
    refs_dropped: Iterable[tuple[str, int]] = (),
) -> Ticket:
    """Record a request and/or instructions (with their refs digests, and how many
    data.shared records' references each lacks, by instruction id); idempotent."""
    if ticket is None:
        ticket = Ticket(key=key, request=request, instructions=())
    elif request is not None and ticket.request is None:
        ticket = replace(ticket, request=request)
    known = {t.outcome.instruction_id for t in ticket.instructions}
    dropped = dict(refs_dropped)
    added = tuple(
        _track(i, d, refs_dropped=dropped.get(i.instruction_id, 0))
        for i, d in instructions
        if i.instruction_id not in known
    )
    return _derive(replace(ticket, instructions=ticket.instructions + added), now)


def mark_dispatched(ticket: Ticket | None, now: int) -> Ticket | None:
    """The instructions of the ticket are on the partners' topics."""
    if ticket is None or ticket.dispatched_at is not None:
        return ticket
    return _derive(replace(ticket, dispatched_at=now), now)


def _answer(outcome: PartnerOutcome, ack: PartnerAcknowledgement, now: int) -> PartnerOutcome:
    return replace(
        outcome,
        status=OutcomeStatus(ack.status.value),
        acknowledged_at=now,
        retain_until=ack.retain_until,
        reason=ack.reason,
        overdue=False,
    )


def apply_ack(
    ticket: Ticket | None, ack: PartnerAcknowledgement, via_partner: str, now: int
) -> tuple[Ticket | None, AckOutcome]:
    """Record a partner's answer. Unknown, wrong-partner or repeated acks change nothing."""
    tracked = ticket.find(ack.instruction_id) if ticket else None
    if ticket is None or tracked is None:
        return ticket, AckOutcome.UNKNOWN_INSTRUCTION
    if tracked.outcome.partner != ack.partner or via_partner != ack.partner:
        return ticket, AckOutcome.WRONG_PARTNER
    if not tracked.pending:
        return ticket, AckOutcome.REPEATED
    keep = tracked.sent if ack.status is AcknowledgementStatus.RESTRICTED else None
    updated = TrackedInstruction(_answer(tracked.outcome, ack, now), keep)
    items = tuple(updated if t is tracked else t for t in ticket.instructions)
    return _derive(replace(ticket, instructions=items), now), AckOutcome.APPLIED


def awaits_follow_up(ticket: Ticket, t: TrackedInstruction) -> bool:
    """``t`` was answered RESTRICTED and its follow-up ERASE has not been issued yet."""
    if t.outcome.status is not OutcomeStatus.RESTRICTED or t.sent is None:
        return False
    return not any(
        o.outcome.follows_instruction_id == t.outcome.instruction_id for o in ticket.instructions
    )


def _follow_up(t: TrackedInstruction, now: int, due_ms: int) -> PartnerInstruction:
    sent = t.sent
    assert sent is not None  # noqa: S101 - only called when awaiting a follow-up
    iid = instruction_id(sent.instruction_id, "retention-ended", InstructionAction.ERASE.value)
    return replace(
        sent,
        instruction_id=iid,
        action=InstructionAction.ERASE,
        issued_at=now,
        due_by=now + due_ms,
        retain_until=None,
        ack_key=sent.request_id or iid,
        references_dropped=t.outcome.refs_dropped,
    )


def sweep(ticket: Ticket, now: int, policy: Policy) -> tuple[Ticket, list[PartnerInstruction]]:
    """Flag overdue work and issue the ERASE that follows each retention that has ended.

    Returns the updated ticket and the follow-up instructions to send."""
    follow_ups: list[PartnerInstruction] = []
    items: list[TrackedInstruction] = []
    added: list[TrackedInstruction] = []
    for t in ticket.instructions:
        outcome, sent = t.outcome, t.sent
        if t.pending and now > outcome.due_by and not outcome.overdue:
            outcome = replace(outcome, overdue=True)
        until = outcome.retain_until
        if awaits_follow_up(ticket, t) and until is not None and until <= now:
            due = policy.deadline_ms(outcome.partner, InstructionAction.ERASE)
            erase = _follow_up(t, now, due)
            follow_ups.append(erase)
            added.append(
                _track(erase, outcome.refs_digest, outcome.instruction_id, outcome.refs_dropped)
            )
            sent = None  # the references now travel with the follow-up only
        items.append(TrackedInstruction(outcome, sent))
    ticket = replace(ticket, instructions=(*items, *added))
    ticket = _derive(ticket, now)
    return replace(ticket, overdue=answered_late(ticket, now)), follow_ups


def needs_sweep(ticket: Ticket, now: int) -> bool:
    """Whether ``sweep`` would change anything (cheap check for the periodic scan)."""
    for t in ticket.instructions:
        if t.pending and now > t.outcome.due_by and not t.outcome.overdue:
            return True
        until = t.outcome.retain_until
        if until is not None and until <= now and awaits_follow_up(ticket, t):
            return True
    r = ticket.request
    return r is not None and not ticket.overdue and answered_late(ticket, now)


def request_status(ticket: Ticket, now: int) -> RequestStatus | None:
    """The published view of a request ticket (None for a lone instruction)."""
    r = ticket.request
    if r is None:
        return None
    return RequestStatus(
        request_id=r.request_id,
        subject_digest=r.subject_digest,
        scope=r.scope,
        status=ticket.status,
        requested_at=r.requested_at,
        received_at=r.received_at,
        due_by=r.due_by,
        updated_at=now,
        categories=r.categories,
        overdue=ticket.overdue,
        store_erased_at=r.store_erased_at,
        completed_at=ticket.completed_at,
        partners=tuple(t.outcome for t in ticket.instructions),
    )
