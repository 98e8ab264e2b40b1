"""A time-ordered index of the ledger's tickets: which keys are due, and the ledger gauges.

The ledger tells the index about every write (``update`` with the ticket before and
after); the periodic scan then asks only for the keys that are due (``pop_due``) instead
of decoding every open ticket. Due work is what ``needs_sweep`` reports, plus *expiry*:
a settled ticket with a final answer is deleted ``grace_ms`` after its last write, and an
acknowledgement parked ahead of its ticket (``streams.ledger.parked``) is dropped ``grace_ms``
after it was received.

Memory per ticket is one ``(due_ms, key)`` heap entry and one ``key -> due_ms`` dict
entry; stale heap entries (the key's due time changed or was popped) are skipped lazily
and compacted away when they outnumber the live ones.

The gauges are counted from the flags the sweep sets at the due time (``Ticket.overdue``,
``PartnerOutcome.overdue``), not from the clock, so an overdue gauge lags the clock by at
most one sweep interval. Pure, in memory, no I/O.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from streams.ledger.parked import parked_due
from streams.ledger.tickets import Ticket, awaits_follow_up, needs_sweep

__all__ = ["LedgerGauges", "TicketIndex", "expired", "next_due", "sweep_or_expiry_due"]

_COMPACT_MIN = 1024
"""Below this heap size stale entries are never compacted (not worth a rebuild)."""


def _request_due(ticket: Ticket) -> int | None:
    """When ``answered_late`` turns true for a request not yet flagged overdue."""
    r = ticket.request
    if r is None or ticket.overdue:
        return None
    if ticket.answered_at is None:
        return r.due_by + 1
    return ticket.answered_at if r.due_by < ticket.answered_at else None


def _expires_at(ticket: Ticket, grace_ms: int) -> int | None:
    answered = ticket.request is None or ticket.status_final
    return ticket.updated_at + grace_ms if answered and ticket.settled else None


def next_due(ticket: Ticket, grace_ms: int) -> int | None:
    """The earliest time (ms) at which the ticket needs a sweep or expires; None: never.

    Exact for every ``now`` not earlier than the ticket's ``answered_at`` (the ledger
    stamps that with its own clock): ``sweep_or_expiry_due(ticket, now, grace_ms)`` is
    true iff the result is not None and ``<= now``."""
    times: list[int] = []
    for t in ticket.instructions:
        if t.pending and not t.outcome.overdue:
            times.append(t.outcome.due_by + 1)  # needs_sweep: now > due_by
        until = t.outcome.retain_until
        if until is not None and awaits_follow_up(ticket, t):
            times.append(until)
    for at in (_request_due(ticket), _expires_at(ticket, grace_ms), parked_due(ticket, grace_ms)):
        if at is not None:
            times.append(at)
    return min(times, default=None)


def expired(ticket: Ticket, now: int, grace_ms: int) -> bool:
    """Settled, finally answered (or a lone instruction), untouched for ``grace_ms``."""
    at = _expires_at(ticket, grace_ms)
    return at is not None and at <= now


def sweep_or_expiry_due(ticket: Ticket, now: int, grace_ms: int) -> bool:
    """What ``next_due`` predicts: the ticket needs a sweep, may be deleted, or parks an
    acknowledgement to drop."""
    parked = parked_due(ticket, grace_ms)
    stale = parked is not None and parked <= now
    return needs_sweep(ticket, now) or expired(ticket, now, grace_ms) or stale


@dataclass(frozen=True, slots=True)
class LedgerGauges:
    """Gauge values over the indexed tickets; partners keep their key at zero."""

    open_requests: int = 0
    overdue_requests: int = 0
    pending: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    overdue: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


class TicketIndex:
    """Due times and gauges of one worker's tickets, kept up to date write by write."""

    def __init__(self, grace_ms: int) -> None:
        self._grace_ms = grace_ms
        self._due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._open_requests = self._overdue_requests = 0
        self._pending: Counter[str] = Counter()
        self._overdue: Counter[str] = Counter()

    @property
    def grace_ms(self) -> int:
        """How long a settled, answered ticket is kept after its last write."""
        return self._grace_ms

    def __len__(self) -> int:
        """Keys with a due time in the queue (popped keys return at their next update)."""
        return len(self._due)

    def update(self, key: str, before: Ticket | None, after: Ticket | None) -> None:
        """The ledger wrote ``after`` over ``before`` (None: absent, deleted).

        Also call it after handling a popped key whose ticket did not change
        (``before is after``): that puts the key back in the queue."""
        self._count(before, -1)
        self._count(after, +1)
        self._schedule(key, None if after is None else next_due(after, self._grace_ms))

    def remove(self, key: str, last: Ticket | None) -> None:
        """Forget a key this worker no longer owns; ``last`` is its ticket as last indexed
        (its share leaves the gauges). Same as ``update(key, last, None)``."""
        self.update(key, last, None)

    def clear(self) -> None:
        """Forget everything (a rebalance revoked the partitions)."""
        self._due, self._heap = {}, []
        self._open_requests = self._overdue_requests = 0
        self._pending, self._overdue = Counter(), Counter()

    def rebuild(self, items: Iterable[tuple[str, Ticket]]) -> None:
        """Replace the contents with a recovered table's tickets, in O(n)."""
        self.clear()
        for key, ticket in items:
            self.add_recovered(key, ticket)
        self.requeue()

    def add_recovered(self, key: str, ticket: Ticket) -> None:
        """One ticket of a recovered table, after ``clear``: counted and given its due
        time; the queue is built once by ``requeue`` after the last one (O(n) in all)."""
        self._count(ticket, +1)
        due = next_due(ticket, self._grace_ms)
        if due is not None:
            self._due[key] = due

    def requeue(self) -> None:
        """Build the queue afresh from every key's due time (no stale entries)."""
        self._heap = [(due, key) for key, due in self._due.items()]
        heapq.heapify(self._heap)

    def pop_due(self, now: int, limit: int) -> list[str]:
        """Up to ``limit`` keys due at ``now``, earliest first, taken out of the queue."""
        keys: list[str] = []
        heap = self._heap
        while heap and len(keys) < limit and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._due.get(key) == due:
                del self._due[key]
                keys.append(key)
        return keys

    def gauges(self) -> LedgerGauges:
        return LedgerGauges(
            self._open_requests,
            self._overdue_requests,
            MappingProxyType(dict(self._pending)),
            MappingProxyType(dict(self._overdue)),
        )

    def _schedule(self, key: str, due: int | None) -> None:
        if due is None:
            self._due.pop(key, None)
        elif self._due.get(key) != due:
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))
            self._compact_if_stale()

    def _compact_if_stale(self) -> None:
        if len(self._heap) > max(_COMPACT_MIN, 2 * len(self._due)):
            self.requeue()

    def _count(self, ticket: Ticket | None, sign: int) -> None:
        if ticket is None:
            return
        if ticket.request is not None and ticket.answered_at is None:
            self._open_requests += sign
            self._overdue_requests += sign * ticket.overdue
        for t in ticket.instructions:
            if t.pending:
                partner = t.outcome.partner
                self._pending[partner] += sign
                self._overdue[partner] += sign * t.outcome.overdue
