"""Handling of the ledger: acknowledgements forwarded by key, request lifecycle, sweeps.

All writes to a ticket happen here, in order per ticket key (the partition of the
internal ledger topic), so request state stays consistent across workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from schemas.errors import ContractError
from schemas.partner import PartnerAcknowledgement
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from schemas.views import FINAL_REQUEST_STATES, OutcomeStatus
from streams.ledger import (
    AckOutcome,
    Ticket,
    answered_late,
    apply_ack,
    mark_dispatched,
    needs_sweep,
    open_ticket,
    request_status,
    sweep,
)
from streams.ledger_codec import (
    AckEntry,
    DispatchedEntry,
    LedgerEntry,
    OpenEntry,
    SweepEntry,
    decode_entry,
    encode_entry,
    ticket_from_json,
    ticket_to_json,
)
from streams.metrics import StreamMetrics
from streams.outbox import RecordSender
from streams.request_views import AsyncRequestViews

__all__ = ["LedgerProcessor"]

log = logging.getLogger(__name__)


class LedgerProcessor:
    def __init__(
        self,
        policy: Policy,
        serde: AvroSerde,
        sender: RecordSender,
        views: AsyncRequestViews,
        metrics: StreamMetrics,
        topics: TopicNames,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy, self._serde, self._sender = policy, serde, sender
        self._views, self._metrics, self._clock = views, metrics, clock
        self._topics = topics

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def forward_ack(self, key: bytes | None, value: bytes, topic: str) -> bool:
        """An acknowledgement from a partner's topic, into the ledger under its key."""
        partner = self._topics.partner_of_acks(topic) or topic
        try:
            ack = self._serde.decode_as(value, PartnerAcknowledgement, topic)
        except ContractError as exc:
            self._metrics.acknowledgements_ignored.labels("undecodable").inc()
            log.warning("undecodable acknowledgement on %s: %s", topic, exc.reason)
            return False
        entry = AckEntry(partner, ack, self._now())
        ticket_key = key or ack.instruction_id.encode()
        fut = await self._sender.outbox.send(
            self._topics.ledger, ticket_key, encode_entry(entry), []
        )
        await fut
        return True

    async def handle(self, key: bytes, value: bytes, tickets: MutableMapping[bytes, bytes]) -> None:
        entry = decode_entry(value)
        raw = tickets.get(key)
        before = ticket_from_json(raw) if raw else None
        after = await self._apply(before, key.decode(), entry)
        if after is None or after == before:
            return
        # the effect first, then the state: a crash in between redoes the publish
        await self._publish(before, after)
        if after.request is None and after.settled:
            tickets.pop(key, None)  # a lone instruction that has been answered
        else:
            tickets[key] = ticket_to_json(after)

    async def _apply(self, ticket: Ticket | None, key: str, entry: LedgerEntry) -> Ticket | None:
        now = self._now()
        match entry:
            case OpenEntry():
                return open_ticket(ticket, key, entry.request, list(entry.instructions), now)
            case DispatchedEntry():
                return mark_dispatched(ticket, entry.at)
            case AckEntry():
                return self._ack(ticket, entry, now)
            case SweepEntry():
                if ticket is None or not needs_sweep(ticket, now):
                    return ticket
                ticket, follow_ups = sweep(ticket, now, self._policy)
                await _wait(await self._sender.send_instructions(follow_ups))
                for ins in follow_ups:
                    self._metrics.retention_follow_ups.labels(ins.partner).inc()
                    self._metrics.instructions.labels(ins.partner, ins.action.value).inc()
                return ticket

    def _ack(self, ticket: Ticket | None, entry: AckEntry, now: int) -> Ticket | None:
        updated, outcome = apply_ack(ticket, entry.ack, entry.partner, now)
        if outcome is not AckOutcome.APPLIED or updated is None:
            self._metrics.acknowledgements_ignored.labels(outcome.value).inc()
            return ticket
        ack = entry.ack
        self._metrics.acknowledgements.labels(ack.partner, ack.status.value).inc()
        tracked = updated.find(ack.instruction_id)
        if tracked is not None:
            latency = max(0, entry.received_at - tracked.outcome.issued_at) / 1000
            self._metrics.instruction_to_ack.labels(ack.partner).observe(latency)
        return updated

    async def _publish(self, before: Ticket | None, after: Ticket) -> None:
        status = request_status(after, self._now())
        if status is None:
            return
        await self._views.put(status)
        fut = await self._sender.send_object(self._topics.requests, status.request_id, status)
        await fut
        was_final = before is not None and before.status in FINAL_REQUEST_STATES
        if status.status in FINAL_REQUEST_STATES and not was_final:
            self._metrics.requests_finished.labels(status.status.value).inc()

    def scan(self, tickets: Iterable[bytes]) -> tuple[list[bytes], dict[str, Any]]:
        """Read-only pass over local tickets: keys needing a sweep, and gauge values."""
        now = self._now()
        due: list[bytes] = []
        open_requests = overdue_requests = 0
        pending: dict[str, int] = dict.fromkeys(self._policy.partners, 0)
        overdue: dict[str, int] = dict.fromkeys(self._policy.partners, 0)
        for raw in tickets:
            if b'"PENDING"' not in raw and b'"RESTRICTED"' not in raw:
                continue  # settled: nothing pending, no retention hold (cheap pre-filter)
            t = ticket_from_json(raw)
            if needs_sweep(t, now):
                due.append(t.key.encode())
            if t.request is not None and t.answered_at is None:
                open_requests += 1
                overdue_requests += int(answered_late(t, now))
            for i in t.instructions:
                if i.outcome.status is OutcomeStatus.PENDING:
                    pending[i.outcome.partner] = pending.get(i.outcome.partner, 0) + 1
                    late = i.outcome.overdue or now > i.outcome.due_by
                    overdue[i.outcome.partner] = overdue.get(i.outcome.partner, 0) + int(late)
        self._metrics.requests_open.set(open_requests)
        self._metrics.requests_overdue.set(overdue_requests)
        for partner in pending:
            self._metrics.instructions_pending.labels(partner).set(pending[partner])
            self._metrics.instructions_overdue.labels(partner).set(overdue[partner])
        return due, {"open_requests": open_requests, "overdue_requests": overdue_requests}

    async def request_sweeps(self, keys: list[bytes]) -> None:
        entry = encode_entry(SweepEntry(self._now()))
        await _wait(
            [await self._sender.outbox.send(self._topics.ledger, k, entry, []) for k in keys]
        )


async def _wait(futures: list[Any]) -> None:
    for fut in futures:
        await fut
