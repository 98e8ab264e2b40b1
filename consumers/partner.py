"""``PartnerConsumer``: consume a partner's instructions, run its handler, acknowledge.

Per batch of records: decode each, answer it (remembered answer for a repeat, else the
handler with bounded retries), send the acks, wait until the broker has them, and only
then commit the instructions' offsets. At-least-once delivery to the handler, made
effectively-once by the processed-instructions store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry

from consumers.dedup import InMemoryProcessedInstructions, ProcessedInstructions
from consumers.partner_answer import InstructionAnswerer, StopRequested
from consumers.partner_clients import KafkaConsumer, KafkaProducer, partner_clients
from consumers.partner_delivery import backoff_schedule, commit_points
from consumers.partner_metrics import partner_metrics
from consumers.partner_results import Handler
from consumers.partner_sender import AckSender, PendingAck
from schemas.partner import PartnerAcknowledgement
from schemas.partner import acks_topic as default_acks_topic
from schemas.partner import instructions_topic as default_instructions_topic
from schemas.serde import AvroSerde
from schemas.settings import Settings

__all__ = ["PartnerConsumer", "default_group_id"]

log = logging.getLogger(__name__)

_BATCH: Final = 100
_POLL_S: Final = 0.5

AckListener = Callable[[PartnerAcknowledgement], None]


def default_group_id(partner: str) -> str:
    return f"partner.{partner}"


class PartnerConsumer:
    """One partner's consumer. ``run()`` until stopped; ``close()`` when done."""

    def __init__(
        self,
        settings: Settings,
        partner: str,
        handler: Handler,
        *,
        consumer: KafkaConsumer | None = None,
        producer: KafkaProducer | None = None,
        serde: AvroSerde | None = None,
        dedup: ProcessedInstructions | None = None,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        registry: CollectorRegistry | None = None,
        group_id: str | None = None,
        instructions_topic: str | None = None,
        acks_topic: str | None = None,
        batch_size: int = _BATCH,
        poll_timeout_s: float = _POLL_S,
        on_ack: AckListener | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.partner = partner
        self.instructions_topic = instructions_topic or default_instructions_topic(partner)
        self.acks_topic = acks_topic or default_acks_topic(partner)
        self.group_id = group_id or default_group_id(partner)
        self.registry = registry if registry is not None else CollectorRegistry()
        clients = partner_clients(
            settings, self.group_id, consumer=consumer, producer=producer, serde=serde
        )
        self._consumer, self._producer, self._serde = (
            clients.consumer,
            clients.producer,
            clients.serde,
        )
        self._dedup: ProcessedInstructions = (
            InMemoryProcessedInstructions() if dedup is None else dedup
        )
        self._metrics = partner_metrics(self.registry)
        self._answerer = InstructionAnswerer(
            partner,
            handler,
            serde=self._serde,
            dedup=self._dedup,
            metrics=self._metrics,
            waits=backoff_schedule(max_attempts, backoff_s),
            now_ms=self._now_ms,
        )
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._on_ack = on_ack
        self._clock = clock
        self._stop = threading.Event()
        self._subscribed = False
        self._closed = False
        self._sender = AckSender(
            self._producer,
            self._serde,
            topic=self.acks_topic,
            partner=partner,
            data_schema=clients.ack_data_schema,
            metrics=self._metrics,
            now_ms=self._now_ms,
            retry_wait_s=max(backoff_s, 0.05),
        )

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        stop_event: threading.Event | None = None,
        max_messages: int | None = None,
        idle_timeout_s: float | None = None,
    ) -> int:
        """Consume until ``stop_event`` is set, ``max_messages`` records were taken, or none
        arrived for ``idle_timeout_s``. Returns the number of records taken."""
        if stop_event is not None:
            self._stop = stop_event
        if not self._subscribed:
            self._consumer.subscribe([self.instructions_topic])
            self._subscribed = True
        taken = 0
        last_record = time.monotonic()
        while not self._stop.is_set() and (max_messages is None or taken < max_messages):
            want = self._batch_size if max_messages is None else max_messages - taken
            records = self._next_batch(min(want, self._batch_size))
            if records:
                last_record = time.monotonic()
                taken += self._process(records)
            elif idle_timeout_s is not None and time.monotonic() - last_record >= idle_timeout_s:
                break
        return taken

    def _next_batch(self, size: int) -> list[Any]:
        """Waits up to the poll timeout for one record, then takes what else has already
        arrived (up to ``size``): a lone instruction is answered at once (``consume(n, t)``
        alone would wait for ``n`` records or the whole timeout), a burst in batches."""
        records = list(self._consumer.consume(1, self._poll_timeout_s))
        if records and size > 1:
            records += self._consumer.consume(size - 1, 0)
        return records

    def stop(self) -> None:
        """Ask ``run()`` to return (safe from a signal handler or another thread)."""
        self._stop.set()

    def _process(self, records: list[Any]) -> int:
        taken: list[tuple[Any, PendingAck | None]] = []
        for record in records:
            if self._stop.is_set():
                break  # the rest of the batch stays uncommitted and comes again
            if record.error() is not None:
                log.warning("consumer error on %s: %s", self.instructions_topic, record.error())
                continue
            try:
                taken.append((record, self._answerer.answer(record, self._stop)))
            except StopRequested:
                break
        pending = [item for _, item in taken if item is not None]
        if pending:
            self._sender.send_all(pending, self._stop)
        self._commit(taken)
        if self._on_ack is not None:
            for item in pending:
                if item.delivered:
                    self._on_ack(item.sent.ack)
        return len(taken)

    def _commit(self, taken: list[tuple[Any, PendingAck | None]]) -> None:
        points = commit_points(
            ((r.topic(), r.partition()), r, item is None or item.delivered) for r, item in taken
        )
        for record in points.values():
            try:
                self._consumer.commit(message=record, asynchronous=False)
            except Exception as exc:  # rebalance or broker gone: redelivery is answered again
                log.warning("commit of %s[%s] failed: %s", record.topic(), record.partition(), exc)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush acks still queued, leave the group. The dedup store is the caller's."""
        if self._closed:
            return
        self._closed = True
        left = self._producer.flush(timeout_s)
        if left:
            log.error("%d acks were not delivered before close (they will be re-sent)", left)
        self._consumer.close()

    def __enter__(self) -> PartnerConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
