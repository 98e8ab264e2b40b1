"""Acknowledgements that reach the ledger before the ticket of their instruction.

The events agent sends a batch's tickets and its instructions in the same wave
(``streams.events.processor``), so an instruction can be on a partner's topic before its ticket is
on the ledger. The ticket normally lands within milliseconds, long before a partner
answers; but a worker that dies between the two deliveries, or a ticket whose delivery
fails and is sent again when its batch is processed again, leaves a partner's answer
ahead of the ticket it answers. When no ticket has been opened under its key yet, the
ledger *parks* the acknowledgement in a placeholder ticket under that key, applies it as
soon as the ticket is opened, and drops it, counted as ``unknown_instruction``, if it is
not opened within the grace period (``Settings.settled_ticket_grace_s``). A deletion
request's ticket parks too: it gains instructions after it is opened, whenever data of the
closed account turns up with a partner later (``streams.events.decisions``, a share after the
closure), and such an instruction and its ticket entry can be split by a crash as well. An
acknowledgement of an instruction that an opened lone instruction's ticket does not track
is ignored at once: that ticket never gains an instruction.

Pure functions over plain data; the ledger agent applies them in order per key.
"""

from __future__ import annotations

from dataclasses import replace

from streams.ledger.tickets import AckEntry, AckOutcome, Ticket, apply_ack

__all__ = ["drop_stale", "only_parked_changed", "park", "parked_due", "parks", "release"]


def parks(ticket: Ticket | None) -> bool:
    """An acknowledgement under the key that no instruction matches may still match one:
    no ticket has been opened yet (none, or one that only parks), or it is a request's."""
    return ticket is None or ticket.request is not None or not ticket.instructions


def park(ticket: Ticket | None, key: str, entry: AckEntry, now: int) -> Ticket:
    """Keep ``entry`` until the ticket of ``key`` tracks its instruction (``parks(ticket)``
    holds)."""
    if ticket is None:
        ticket = Ticket(key=key, request=None, instructions=(), updated_at=now)
    if entry in ticket.parked:  # the same ledger record, delivered again
        return ticket
    return replace(ticket, parked=(*ticket.parked, entry))


def only_parked_changed(before: Ticket | None, after: Ticket) -> bool:
    """The acknowledgements the ticket keeps are all that changed (a request's status is
    the same: nothing to publish)."""
    return before is not None and replace(before, parked=after.parked) == after


def release(ticket: Ticket, now: int) -> tuple[Ticket, list[tuple[AckEntry, AckOutcome]]]:
    """Apply the parked acknowledgements whose instructions ``ticket`` now tracks.

    Returns the ticket (still parking the others) and each released acknowledgement with
    its outcome (``APPLIED``, or why it changed nothing)."""
    if not ticket.parked:
        return ticket, []
    current, kept = replace(ticket, parked=()), []
    released: list[tuple[AckEntry, AckOutcome]] = []
    for entry in ticket.parked:
        updated, outcome = apply_ack(current, entry.ack, entry.partner, now)
        if outcome is AckOutcome.UNKNOWN_INSTRUCTION:
            kept.append(entry)
            continue
        released.append((entry, outcome))
        if updated is not None:
            current = updated
    return replace(current, parked=tuple(kept)), released


def drop_stale(ticket: Ticket, now: int, grace_ms: int) -> tuple[Ticket, int]:
    """Drop the acknowledgements parked for ``grace_ms`` or longer; returns how many."""
    kept = tuple(a for a in ticket.parked if a.received_at + grace_ms > now)
    dropped = len(ticket.parked) - len(kept)
    return (replace(ticket, parked=kept) if dropped else ticket), dropped


def parked_due(ticket: Ticket, grace_ms: int) -> int | None:
    """When the oldest parked acknowledgement is dropped (None: nothing parked)."""
    if not ticket.parked:
        return None
    return min(a.received_at for a in ticket.parked) + grace_ms
