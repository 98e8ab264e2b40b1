"""Delivery reports of the blocking Kafka client as asyncio futures.

``produce`` never blocks (a full local queue raises ``QueueFullError`` at once), so it is
called on the event loop; ``poll``, which serves the delivery reports and blocks, runs in
a thread of its own, and each report resolves its event's future through
``loop.call_soon_threadsafe``. The bridge also keeps what the client last said of the
broker (``/healthz``). ``send`` enqueues a prepared consent event, ``send_record`` any
other record (a partner's acknowledgement, ``POST /v1/acks``) on the same producer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

from producers.publisher import ConsentPublisher, KafkaProducer, produce_record
from schemas.cloudevents import Headers
from schemas.errors import PublishError
from schemas.events import ConsentEvent

__all__ = ["BrokerState", "DeliveryBridge", "DeliveryFuture", "QueueLength", "RecordProducer"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.1
_CLOSE_FLUSH_S: Final = 10.0

DeliveryFuture = asyncio.Future[PublishError | None]


class QueueLength(Protocol):
    def __len__(self) -> int: ...


class RecordProducer(KafkaProducer, QueueLength, Protocol):
    """The gateway's ``confluent_kafka.Producer`` (``len()``: its local queue)."""


class BrokerState:
    """``up`` after an acknowledgement, ``down`` after librdkafka said all brokers are
    down, ``unknown`` before either (the client's ``error_cb`` and delivery reports)."""

    def __init__(self) -> None:
        self.value = "unknown"

    def error_cb(self, error: Any) -> None:
        from confluent_kafka import KafkaError

        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.value != "down":
                log.warning("Kafka: all brokers are down (%s)", error.str())
            self.value = "down"

    def delivered(self) -> None:
        self.value = "up"


class DeliveryBridge:
    def __init__(
        self, publisher: ConsentPublisher, queue: RecordProducer, broker: BrokerState
    ) -> None:
        """``queue``: the publisher's own producer (``send_record`` produces on it too)."""
        self._publisher = publisher
        self._queue = queue
        self.broker = broker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._publisher.poll(_POLL_S)

    def queued(self) -> int:
        """Events in the local queue, not yet acknowledged."""
        return len(self._queue)

    def send(
        self, event: ConsentEvent, prepared: tuple[bytes, bytes, list[tuple[str, bytes]]]
    ) -> DeliveryFuture:
        """Enqueue a prepared event; the future ends with None once acknowledged, or the
        ``PublishError``. ``QueueFullError`` when the local queue has no room."""
        future, reported = self._future()
        self._publisher.enqueue(
            event, prepared, lambda _receipt, error: reported(error), wait_for_queue=False
        )
        return future

    def send_record(self, topic: str, key: bytes, value: bytes, headers: Headers) -> DeliveryFuture:
        """Enqueue one encoded record on ``topic``, with ``send``'s future and errors (and
        ``ContractError`` for a record the client refuses)."""
        future, reported = self._future()

        def delivered(err: Any, _msg: Any) -> None:
            reported(None if err is None else PublishError(f"record to {topic}: {err}"))

        produce_record(self._queue, topic, key, value, headers, delivered, wait_for_queue=False)
        return future

    def _future(self) -> tuple[DeliveryFuture, Callable[[PublishError | None], None]]:
        """A future on the loop and the report callback (any thread) that resolves it."""
        loop = self._loop
        assert loop is not None  # noqa: S101 - started before the first request
        future: DeliveryFuture = loop.create_future()

        def resolve(error: PublishError | None) -> None:
            if not future.done():
                future.set_result(error)

        def reported(error: PublishError | None) -> None:
            if error is None:
                self.broker.delivered()
            loop.call_soon_threadsafe(resolve, error)

        return future, reported

    def close(self) -> None:
        """Stop polling, then wait (bounded) for what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        left = self._publisher.flush(_CLOSE_FLUSH_S)
        if left:
            log.error("%d events were not acknowledged before the gateway stopped", left)
