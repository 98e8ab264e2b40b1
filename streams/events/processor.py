"""Handling of a batch of inbound records: decide, then carry out the effects in waves.

``launch`` decides the batch in memory (decode, validate, decide: no I/O), stages the
changed subjects' states in the table (the next batch is decided on top of them), sends
the first wave and returns a ``Flight`` whose task carries the rest, so the agent can
take the next batch while this one's round trips are under way. The effects go out in
two waves, each sent without awaiting its records and then awaited once (the ordering
barriers):

1. ledger tickets, partner instructions, dead letters and state records on Kafka, and the
   consent store (one pipelined Redis round trip). Nothing in it depends on another of
   its effects: the store and the partners both learn of a change one round trip after
   the batch is decided. A ticket and its instructions are sent together, so a partner
   may answer before the ticket is on the ledger (after a crash between the two); the
   ledger parks such an answer until the ticket opens (``streams.ledger.parked``). A batch's
   first wave is sent when it is decided, so a later batch's instructions follow an
   earlier one's on every partition;
2. the requests' "dispatched" ledger entries and the changed subject states (table
   changelog; after the batch before has sent its own: ``streams.events.flight``).

The subjects' states are written last, so a crash at any point leads to a redelivery
that redoes every effect; every effect is idempotent (deterministic instruction ids,
versioned store writes, tickets keyed by request or instruction). A failed batch, and
every batch in flight after it, are processed again; the caller discards what they staged
(``StagedTable.discard``) once every flight has landed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from schemas.errors import PublishError, ValidationError
from schemas.events import ConsentEvent
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.topics import TopicNames
from schemas.validation import validate_event
from schemas.views import ConsentState
from streams.deadletter.policy import DeadLetter, deadletter_headers
from streams.events.batch import EventBatch, plan_within
from streams.events.flight import Flight
from streams.events.state_limit import StateLimit
from streams.failpoint import Failpoint
from streams.fanout import FanOut
from streams.faust_glue.tables import Sealed, StagedTable
from streams.inbound import Inbound
from streams.ledger.codec import DispatchedEntry
from streams.metrics import StreamMetrics
from streams.outbox import RecordSender
from streams.output import Outputs
from streams.pseudonyms import Pseudonyms
from streams.store_retry import wait_out_store_outages
from streams.subject import to_consent_state

__all__ = ["EventProcessor", "Inbound", "OutputsFactory", "Settle"]

log = logging.getLogger(__name__)

OutputsFactory = Callable[[], Outputs]
"""A new ``Outputs`` per wave: a wave's ``delivered`` waits for its own records only."""
Settle = Callable[[], Awaitable[None]]
"""Called once a batch is settled (after every batch before it): acknowledge its records."""


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
        failpoint: Failpoint | None = None,
    ) -> None:
        self._policy, self._pseudonyms, self._serde = policy, pseudonyms, serde
        self._sender, self._store, self._metrics, self._clock = sender, store, metrics, clock
        self._topics = topics
        self._limit = StateLimit(serde.max_record_bytes)
        self._failpoint = failpoint or Failpoint("", ".")

    def _now(self) -> int:
        return int(self._clock() * 1000)

    async def handle_batch(
        self, records: Sequence[Inbound], subjects: StagedTable, outputs: Outputs
    ) -> EventBatch:
        """Process one batch alone; every effect is on the broker (and in Redis) when it
        returns. A failure leaves the table as it was."""
        flight = self.launch(records, subjects, lambda: outputs)
        try:
            batch: EventBatch = await flight.task
        except BaseException:
            subjects.discard()
            raise
        return batch

    def launch(
        self,
        records: Sequence[Inbound],
        subjects: StagedTable,
        outputs: OutputsFactory,
        before: Flight | None = None,
        settle: Settle | None = None,
    ) -> Flight:
        """Decide the batch (on top of what ``before`` and the batches before it staged),
        stage its subjects' states, send its first wave; the returned flight's task
        carries out the rest and ends, after ``settle``, once the batch is settled."""
        fan = FanOut(self._policy, self._pseudonyms, self._now())
        batch, encoded = plan_within(records, self._parse, subjects.get, fan, self._limit)
        self._observe_taken(batch.taken, fan.now_ms)
        for key, (partition, _) in batch.states.items():
            subjects.stage(partition, key, encoded[key])
        sealed = subjects.seal()
        views = [to_consent_state(w.state, fan.now_ms) for w in batch.store.values()]
        first = outputs()
        flight = Flight(before)
        if self._failpoint.armed("events.mid_instructions", len(batch.instructions)):
            flight.start(self._stop_mid_instructions(batch, len(records), first))
            return flight
        if self._failpoint.armed("events.fail_batch", len(records)):
            flight.start(self._fail_batch(flight, len(records)))
            return flight
        self._send_first_wave(batch, views, first)
        carried = self._carry(flight, batch, views, first, outputs, subjects, sealed, settle)
        flight.start(carried)
        return flight

    async def _carry(
        self,
        flight: Flight,
        batch: EventBatch,
        views: list[ConsentState],
        first: Outputs,
        outputs: OutputsFactory,
        subjects: StagedTable,
        sealed: Sealed,
        settle: Settle | None,
    ) -> EventBatch:
        try:
            await asyncio.gather(
                self._first_delivered(batch, first), self._write_store(batch, views)
            )
            await flight.after_states_before()
            last = outputs()
            self._sender.send_ledger(
                last, [(key, DispatchedEntry(self._now())) for key in batch.dispatched]
            )
            subjects.send(last, sealed)
            flight.states_sent.open()
            await last.delivered()
            await flight.after_settled_before()
        except BaseException as exc:
            flight.fail(exc)
            raise
        subjects.commit(sealed)
        self._count(batch)
        if settle is not None:
            await settle()
        return batch

    def _parse(self, record: Inbound) -> ConsentEvent:
        event = self._serde.decode_as(record.value, ConsentEvent, record.topic)
        validate_event(event, self._policy, self._now())
        if record.key != event.subject_id.encode("utf-8"):
            raise ValidationError(
                "record key is not the event's subject id", field="key", reason="key_mismatch"
            )
        return event

    def _send_first_wave(
        self, batch: EventBatch, views: list[ConsentState], outputs: Outputs
    ) -> None:
        self._sender.send_ledger(outputs, batch.tickets)
        for ins, _ in batch.instructions:
            self._sender.send_instruction(outputs, ins)
        for view in views:
            self._sender.send_object(outputs, self._topics.state, view.subject_id, view)
        now = self._now()
        for rejected in batch.rejected:
            r, exc = rejected.record, rejected.error
            dl = DeadLetter(exc.reason, str(exc), r.topic, r.partition, r.offset, now)
            headers = deadletter_headers(r.headers, dl)
            outputs.send(self._topics.deadletter, r.key, r.value, headers)  # as it came

    async def _first_delivered(self, batch: EventBatch, outputs: Outputs) -> None:
        await outputs.delivered()
        now = self._now()
        m = self._metrics
        for ins, published in batch.instructions:
            m.instructions.labels(ins.partner, ins.action.value).inc()
            if published is not None:
                m.publish_to_partner_topic.labels(ins.partner).observe(
                    max(0, now - published) / 1000
                )

    async def _write_store(self, batch: EventBatch, views: list[ConsentState]) -> None:
        await wait_out_store_outages(lambda: self._store.apply_states(views), self._metrics)
        now = self._now()
        observe = self._metrics.publish_to_store.observe
        for write in batch.store.values():
            for published in write.published:
                observe(max(0, now - published) / 1000)

    def _observe_taken(self, taken: Iterable[int], now: int) -> None:
        """Publish -> worker: how old each record was when the agent took the batch."""
        observe = self._metrics.publish_to_worker.observe
        for published in taken:
            observe(max(0, now - published) / 1000)

    async def _stop_mid_instructions(
        self, batch: EventBatch, records: int, outputs: Outputs
    ) -> EventBatch:
        """The crash test's failpoint: half the instructions on the broker, none of the
        batch's tickets, states or store writes; then stop."""
        instructions = [ins for ins, _ in batch.instructions]
        half = instructions[: len(instructions) // 2]
        for ins in half:
            self._sender.send_instruction(outputs, ins)
        await outputs.delivered()
        facts = {
            "records": records,
            "instructions": len(instructions),
            "sent": [ins.instruction_id for ins in half],
            "subjects_changed": len(batch.states),
        }
        self._failpoint.hit(facts)
        return batch

    async def _fail_batch(self, flight: Flight, records: int) -> EventBatch:
        """A failure test's failpoint: the batch fails before any of it is sent."""
        self._failpoint.trip({"records": records})
        error = PublishError("failpoint events.fail_batch: this batch fails once")
        flight.fail(error)
        raise error

    def _count(self, batch: EventBatch) -> None:
        events = self._metrics.events
        for (kind, outcome), n in Counter(batch.outcomes).items():  # one call per series
            events.labels(kind, outcome.value).inc(n)
        for rejected in batch.rejected:
            r = rejected.record
            self._metrics.deadletters.labels(rejected.error.reason).inc()
            log.warning(
                "dead-lettered %s[%d]@%d: %s", r.topic, r.partition, r.offset, rejected.error.reason
            )
