"""Handling of one inbound record: decode, validate, decide, carry out the effects.

Effects are awaited (broker-acknowledged, store written) before the subject's state is
updated, so a crash at any point leads to a redelivery that redoes them; every effect is
idempotent (deterministic instruction ids, versioned store writes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from schemas.cloudevents import published_at_ms
from schemas.errors import ContractError, StoreUnavailableError, ValidationError
from schemas.events import ConsentEvent
from schemas.partner import PartnerInstruction
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from schemas.validation import validate_event
from streams.deadletter import DeadLetter, deadletter_headers
from streams.decisions import Decision, Outcome, decide
from streams.fanout import FanOut
from streams.inbound import Inbound
from streams.ledger_codec import DispatchedEntry, LedgerEntry, OpenEntry, encode_entry
from streams.metrics import StreamMetrics
from streams.outbox import RecordSender
from streams.pseudonyms import Pseudonyms
from streams.subject import SubjectState, state_from_json, state_to_json, to_consent_state

__all__ = ["EventProcessor", "Inbound"]

log = logging.getLogger(__name__)

_STORE_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EventProcessor:
    def __init__(
        self,
        policy: Policy,
        pseudonyms: Pseudonyms,
        serde: AvroSerde,
        sender: RecordSender,
        store: Any,
        metrics: StreamMetrics,
        topics: TopicNames,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy, self._pseudonyms, self._serde = policy, pseudonyms, serde
        self._sender, self._store, self._metrics, self._clock = sender, store, metrics, clock
        self._topics = topics

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def handle(
        self, record: Inbound, subjects: MutableMapping[bytes, bytes]
    ) -> Outcome | None:
        """Process one record; returns the outcome, or None when it was dead-lettered."""
        try:
            event = self._parse(record)
        except ContractError as exc:
            await self.deadletter(record, exc.reason, str(exc))
            return None
        key = event.subject_id.encode("utf-8")
        raw = subjects.get(key)
        state = state_from_json(raw) if raw else SubjectState(event.subject_id)
        decision = decide(state, event, FanOut(self._policy, self._pseudonyms, self._now()))
        self._metrics.events.labels(event.type.value, decision.outcome.value).inc()
        if decision.outcome is Outcome.APPLIED:
            await self._carry_out(event, decision, record.headers)
        if decision.state is not state:
            subjects[key] = state_to_json(decision.state)
        return decision.outcome

    def _parse(self, record: Inbound) -> ConsentEvent:
        event = self._serde.decode_as(record.value, ConsentEvent, record.topic)
        validate_event(event, self._policy, self._now())
        if record.key != event.subject_id.encode("utf-8"):
            raise ValidationError(
                "record key is not the event's subject id", field="key", reason="key_mismatch"
            )
        return event

    async def deadletter(self, record: Inbound, reason: str, error: str) -> None:
        dl = DeadLetter(reason, error, record.topic, record.partition, record.offset, self._now())
        headers = deadletter_headers(record.headers, dl)
        fut = await self._sender.outbox.send(
            self._topics.deadletter, record.key or b"", record.value, headers
        )
        await fut
        self._metrics.deadletters.labels(reason).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
        )

    async def _carry_out(self, event: ConsentEvent, d: Decision, headers: dict[str, bytes]) -> None:
        published = published_at_ms(headers)
        tickets = self._tickets(d)
        await _all([await self._ledger(key, entry) for key, entry in tickets])
        sent = await self._sender.send_instructions(d.instructions)
        await _all(sent)
        self._observe_partner_hops(d.instructions, published)
        if tickets and d.instructions:
            await _all(
                [await self._ledger(key, DispatchedEntry(self._now())) for key, _ in tickets]
            )
        if d.consent_changed:
            await self._update_store(d.state, published)

    def _tickets(self, d: Decision) -> list[tuple[str, LedgerEntry]]:
        """Ledger entries: one per request (with all its instructions) or lone instruction."""
        digest = self._pseudonyms.refs_digest
        by_key: dict[str, list[PartnerInstruction]] = {}
        for ins in d.instructions:
            by_key.setdefault(ins.ack_key, []).append(ins)
        if d.request is not None:
            by_key.setdefault(d.request.request_id, [])
        return [
            (
                key,
                OpenEntry(
                    key,
                    d.request if d.request and d.request.request_id == key else None,
                    tuple((i, digest(i.partner_refs.items())) for i in items),
                ),
            )
            for key, items in by_key.items()
        ]

    async def _ledger(self, key: str, entry: LedgerEntry) -> Awaitable[Any]:
        return await self._sender.outbox.send(
            self._topics.ledger, key.encode(), encode_entry(entry), []
        )

    def _observe_partner_hops(
        self, instructions: tuple[PartnerInstruction, ...], published: int | None
    ) -> None:
        now = self._now()
        for ins in instructions:
            self._metrics.instructions.labels(ins.partner, ins.action.value).inc()
            if published is not None:
                self._metrics.publish_to_partner_topic.labels(ins.partner).observe(
                    max(0, now - published) / 1000
                )

    async def _update_store(self, state: SubjectState, published: int | None) -> None:
        view = to_consent_state(state, self._now())
        await self._write_store(view)
        if published is not None:
            self._metrics.publish_to_store.observe(max(0, self._now() - published) / 1000)
        fut = await self._sender.send_object(self._topics.state, state.subject_id, view)
        await fut

    async def _write_store(self, view: Any) -> None:
        """Write the consent store; Redis outages are waited out, never skipped."""
        attempt = 0
        while True:
            try:
                await self._store.apply_state(view)
                return
            except StoreUnavailableError as exc:
                delay = _STORE_BACKOFF_S[min(attempt, len(_STORE_BACKOFF_S) - 1)]
                attempt += 1
                self._metrics.store_retries.inc()
                log.warning(
                    "consent store unavailable (attempt %d, retry in %.1fs): %s",
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)


async def _all(futures: list[Awaitable[Any]]) -> None:
    if futures:
        await asyncio.gather(*futures)
