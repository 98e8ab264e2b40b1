"""Delivery reports of the blocking Kafka client as asyncio futures.

``produce`` never blocks (a full local queue raises ``QueueFullError`` at once), so it is
called on the event loop; ``poll``, which serves the delivery reports and blocks, runs in
a thread of its own, and each report resolves its event's future through
``loop.call_soon_threadsafe``. The bridge also keeps what the client last said of the
broker (``/healthz``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Final, Protocol

from producers.publisher import ConsentPublisher, DeliveryReceipt
from schemas.errors import PublishError
from schemas.events import ConsentEvent

__all__ = ["BrokerState", "DeliveryBridge", "QueueLength"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.1
_CLOSE_FLUSH_S: Final = 10.0

DeliveryFuture = asyncio.Future[PublishError | None]


class QueueLength(Protocol):
    def __len__(self) -> int: ...


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
        self, publisher: ConsentPublisher, queue: QueueLength, broker: BrokerState
    ) -> None:
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
        loop = self._loop
        assert loop is not None  # noqa: S101 - started before the first request
        future: DeliveryFuture = loop.create_future()

        def resolve(error: PublishError | None) -> None:
            if not future.done():
                future.set_result(error)

        def reported(receipt: DeliveryReceipt | None, error: PublishError | None) -> None:
            if error is None:
                self.broker.delivered()
            loop.call_soon_threadsafe(resolve, error)

        self._publisher.enqueue(event, prepared, reported, wait_for_queue=False)
        return future

    def close(self) -> None:
        """Stop polling, then wait (bounded) for what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        left = self._publisher.flush(_CLOSE_FLUSH_S)
        if left:
            log.error("%d events were not acknowledged before the gateway stopped", left)
