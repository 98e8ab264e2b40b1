"""Handling of the ledger: acknowledgements forwarded by key, request lifecycle, sweeps.

All writes to a ticket happen here, in order per ticket key (the partition of the
internal ledger topic), so request state stays consistent across workers. A batch of
ledger records is applied in memory, then carried out in two waves: the effects (request
status in Redis and on consent.requests.v1, retention follow-up instructions), then the
changed tickets (table changelog). A crash in between redoes the effects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from schemas.errors import ContractError
from schemas.partner import PartnerAcknowledgement, PartnerInstruction
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from schemas.views import FINAL_REQUEST_STATES, RequestStatus
from streams.faust_glue.tables import Sealed, StagedTable
from streams.inbound import Inbound
from streams.ledger.codec import (
    DispatchedEntry,
    LedgerEntry,
    OpenEntry,
    SweepEntry,
    decode_entries,
    ticket_from_json,
    ticket_to_json,
)
from streams.ledger.index import TicketIndex, expired
from streams.ledger.parked import drop_stale, only_parked_changed, park, parks, release
from streams.ledger.tickets import (
    AckEntry,
    AckOutcome,
    Ticket,
    apply_ack,
    mark_dispatched,
    needs_sweep,
    open_ticket,
    request_status,
    sweep,
)
from streams.metrics import StreamMetrics
from streams.outbox import RecordSender
from streams.output import Outputs
from streams.request_views import AsyncRequestViews
from streams.sequencer import POSITION_KEY_PREFIX
from streams.store_retry import wait_out_store_outages

__all__ = ["LedgerProcessor"]

log = logging.getLogger(__name__)

Positions = dict[bytes, tuple[int, bytes]]

SWEEPS_PER_TICK: Final = 10_000
INDEX_YIELD_EVERY: Final = 2_000
"""Tickets decoded between two yields to the event loop while the index is rebuilt (~70 ms)."""


@dataclass
class _Changes:
    """What a batch of ledger entries did: tickets as they now are, and the effects."""

    tickets: dict[str, Ticket | None] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, Ticket | None] = field(default_factory=dict)
    statuses: dict[str, RequestStatus] = field(default_factory=dict)
    follow_ups: list[PartnerInstruction] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    acks: list[tuple[AckEntry, Ticket]] = field(default_factory=list)
    ignored: list[AckOutcome] = field(default_factory=list)
    parked: list[AckEntry] = field(default_factory=list)


class LedgerProcessor:
    def __init__(
        self,
        policy: Policy,
        serde: AvroSerde,
        sender: RecordSender,
        views: AsyncRequestViews,
        metrics: StreamMetrics,
        topics: TopicNames,
        index: TicketIndex,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy, self._serde, self._sender = policy, serde, sender
        self._views, self._metrics, self._clock = views, metrics, clock
        self._topics, self.index = topics, index

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def forward_acks(self, records: Sequence[Inbound], outputs: Outputs) -> int:
        """Acknowledgements from partners' topics, into the ledger under their keys."""
        now = self._now()
        entries: list[tuple[str, LedgerEntry]] = []
        for record in records:
            partner = self._topics.partner_of_acks(record.topic) or record.topic
            try:
                ack = self._serde.decode_as(record.value, PartnerAcknowledgement, record.topic)
            except ContractError as exc:
                self._metrics.acknowledgements_ignored.labels("undecodable").inc()
                log.warning("undecodable acknowledgement on %s: %s", record.topic, exc.reason)
                continue
            key = record.key.decode() if record.key else ack.instruction_id
            entries.append((key, AckEntry(partner, ack, now)))
        self._sender.send_ledger(outputs, entries)
        await outputs.delivered()
        return len(entries)

    async def handle_batch(
        self,
        records: Sequence[Inbound],
        tickets: StagedTable,
        outputs: Outputs,
        positions: Positions | None = None,
    ) -> None:
        changes = _Changes()
        now = self._now()
        for record in records:
            for key, entry in decode_entries(record.key, record.value):
                self._apply(changes, tickets, key, entry, record.partition, now)
        try:
            await self._effects(changes, outputs)
            sealed = self._stage(changes, tickets, positions or {})
            tickets.send(outputs, sealed)
            await outputs.delivered()
        except BaseException:
            tickets.discard()
            raise
        tickets.commit(sealed)
        for key, loaded in changes.loaded.items():
            self.index.update(key, loaded, changes.tickets.get(key, loaded))
        self._count(changes)
        self.set_gauges()

    def _apply(
        self,
        changes: _Changes,
        tickets: StagedTable,
        key: str,
        entry: LedgerEntry,
        partition: int,
        now: int,
    ) -> None:
        if key in changes.tickets:
            before = changes.tickets[key]
        elif key in changes.loaded:
            before = changes.loaded[key]
        else:
            raw = tickets.get(key.encode())
            before = changes.loaded[key] = ticket_from_json(raw) if raw else None
        if isinstance(entry, SweepEntry) and self._expired(before, now):
            changes.tickets[key], changes.partitions[key] = None, partition
            return
        after = self._next(changes, before, key, entry, now)
        if after is None or after == before:
            return
        # a lone instruction that has been answered is done with: deleted
        done = after.request is None and after.settled
        changes.tickets[key], changes.partitions[key] = (None if done else after), partition
        status = None if only_parked_changed(before, after) else request_status(after, now)
        if status is not None:
            changes.statuses[status.request_id] = status
            was_final = before is not None and before.status in FINAL_REQUEST_STATES
            if status.status in FINAL_REQUEST_STATES and not was_final:
                changes.finished.append(status.status.value)

    def _expired(self, ticket: Ticket | None, now: int) -> bool:
        """Settled and answered long enough ago (``grace_ms``) to be deleted."""
        return ticket is not None and expired(ticket, now, self.index.grace_ms)

    def _next(
        self, changes: _Changes, ticket: Ticket | None, key: str, entry: LedgerEntry, now: int
    ) -> Ticket | None:
        match entry:
            case OpenEntry():
                opened = open_ticket(
                    ticket, key, entry.request, list(entry.instructions), now, entry.refs_dropped
                )
                opened, released = release(opened, now)
                for ack, outcome in released:
                    if outcome is AckOutcome.APPLIED:
                        changes.acks.append((ack, opened))
                    else:
                        changes.ignored.append(outcome)
                return opened
            case DispatchedEntry():
                return mark_dispatched(ticket, entry.at)
            case AckEntry():
                updated, outcome = apply_ack(ticket, entry.ack, entry.partner, now)
                if outcome is AckOutcome.UNKNOWN_INSTRUCTION and parks(ticket):
                    changes.parked.append(entry)  # its ticket may not be on the ledger yet
                    return park(ticket, key, entry, now)
                if outcome is not AckOutcome.APPLIED or updated is None:
                    changes.ignored.append(outcome)
                    return ticket
                changes.acks.append((entry, updated))
                return updated
            case SweepEntry():
                if ticket is None:
                    return None
                ticket, dropped = drop_stale(ticket, now, self.index.grace_ms)
                changes.ignored += [AckOutcome.UNKNOWN_INSTRUCTION] * dropped
                if not needs_sweep(ticket, now):
                    return ticket
                ticket, follow_ups = sweep(ticket, now, self._policy)
                changes.follow_ups += follow_ups
                return ticket

    async def _effects(self, changes: _Changes, outputs: Outputs) -> None:
        for ins in changes.follow_ups:
            self._sender.send_instruction(outputs, ins)
        statuses = list(changes.statuses.values())
        for status in statuses:
            self._sender.send_object(outputs, self._topics.requests, status.request_id, status)
        await asyncio.gather(
            outputs.delivered(),
            wait_out_store_outages(lambda: self._views.put_many(statuses), self._metrics),
        )

    def _stage(self, changes: _Changes, tickets: StagedTable, positions: Positions) -> Sealed:
        for key, ticket in changes.tickets.items():
            value = None if ticket is None else ticket_to_json(ticket)
            tickets.stage(changes.partitions[key], key.encode(), value)
        for position, (partition, value) in positions.items():
            tickets.stage(partition, position, value)
        return tickets.seal()

    def _count(self, changes: _Changes) -> None:
        m = self._metrics
        for ins in changes.follow_ups:
            m.retention_follow_ups.labels(ins.partner).inc()
            m.instructions.labels(ins.partner, ins.action.value).inc()
        for status in changes.finished:
            m.requests_finished.labels(status).inc()
        for outcome in changes.ignored:
            m.acknowledgements_ignored.labels(outcome.value).inc()
        for parked in changes.parked:
            m.acknowledgements_parked.labels(parked.partner).inc()
        for entry, ticket in changes.acks:
            ack = entry.ack
            m.acknowledgements.labels(ack.partner, ack.status.value).inc()
            tracked = ticket.find(ack.instruction_id)
            if tracked is not None:
                latency = max(0, entry.received_at - tracked.outcome.issued_at) / 1000
                m.instruction_to_ack.labels(ack.partner).observe(latency)

    def set_gauges(self) -> None:
        """The ledger gauges, from the index (kept write by write)."""
        g, m = self.index.gauges(), self._metrics
        m.ledger_tickets.set(len(self.index))
        m.requests_open.set(g.open_requests)
        m.requests_overdue.set(g.overdue_requests)
        for partner in sorted({*self._policy.partners, *g.pending}):
            m.instructions_pending.labels(partner).set(g.pending.get(partner, 0))
            m.instructions_overdue.labels(partner).set(g.overdue.get(partner, 0))

    async def rebuild_index(
        self, tickets: Iterable[tuple[bytes, bytes]], yield_every: int = INDEX_YIELD_EVERY
    ) -> int:
        """Index a recovered table's tickets (after a rebalance); returns how many.

        Decoding takes ~35 µs a ticket (1,000,000: ~35 s), so it lets the event loop run
        every ``yield_every`` tickets: aiokafka's heartbeats run on that loop
        (``streams.faust_glue.consumer_loop``), and a worker silent for longer than the
        group's session timeout would be taken out of the group. Faust awaits this before
        it resumes the source partitions, so no record is processed against a part-built
        index. Each ticket is indexed as soon as it is decoded and then dropped: with every
        decoded ticket held until the end, the allocator's arenas grew by all of them and,
        shared with the index's keys, were never given back (a worker with 200,000 tickets
        held ~4.8 KB per ticket; docs/benchmarks.md)."""
        index = self.index
        index.clear()
        count = 0
        for n, (key, raw) in enumerate(tickets, 1):
            if not key.startswith(POSITION_KEY_PREFIX):
                index.add_recovered(key.decode(), ticket_from_json(raw))
                count += 1
            if n % yield_every == 0:
                await asyncio.sleep(0)
        index.requeue()
        self.set_gauges()
        return count

    async def sweep_due(self, outputs: Outputs) -> int:
        """Ask the ledger to sweep (or expire) the tickets that are due; returns how many.
        The time it holds the event loop is observed (``consent_ledger_sweep_seconds``)."""
        started = time.perf_counter()
        keys = self.index.pop_due(self._now(), SWEEPS_PER_TICK)
        self._send_sweeps(keys, outputs)
        self._metrics.ledger_sweep.observe(time.perf_counter() - started)
        if keys:
            await outputs.delivered()
        return len(keys)

    def _send_sweeps(self, keys: Iterable[str], outputs: Outputs) -> None:
        """Sweep entries for ``keys``, one ledger record per partition (not awaited)."""
        entry = SweepEntry(self._now())
        self._sender.send_ledger(outputs, [(k, entry) for k in keys])
