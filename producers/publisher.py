"""``ConsentPublisher``: validate, then publish inbound events to consent.events.v1.

Invalid events raise before anything is sent. The producer is idempotent with
``acks=all``; ``publish`` returns only after the broker acknowledged; ``publish_async`` +
``flush`` is the batch path. Events are keyed by subject id and carry CloudEvents headers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from schemas.client_errors import kafka_error
from schemas.cloudevents import ce_headers
from schemas.contracts import CONSENT_EVENT
from schemas.errors import (
    ConfigurationError,
    ContractError,
    PublishError,
    QueueFullError,
    UnknownTopicError,
)
from schemas.events import ConsentEvent
from schemas.policy import Policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.topics import TopicNames
from schemas.validation import validate_event

__all__ = [
    "EVENTS_TOPIC",
    "ConsentPublisher",
    "DeliveryReceipt",
    "KafkaProducer",
    "make_producer",
    "produce_record",
]

log = logging.getLogger(__name__)

EVENTS_TOPIC: Final = TopicNames().events
"""The contract's inbound topic (without a namespace)."""
_CONTENT_TYPE: Final = "application/avro"


class KafkaProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` the publisher uses."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent confluent-kafka producer built from the one librdkafka config."""
    from confluent_kafka import Producer

    producer: KafkaProducer = Producer(settings.producer_config(**overrides))
    return producer


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    event_id: str
    topic: str
    partition: int
    offset: int


DeliveryCallback = Callable[[DeliveryReceipt | None, PublishError | None], None]


class ConsentPublisher:
    """Publishes validated events. Use as a context manager (flushes on close)."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        *,
        producer: KafkaProducer | None = None,
        serde: AvroSerde | None = None,
        topic: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._producer = producer if producer is not None else make_producer(settings)
        self._serde = serde or AvroSerde(settings.schema_registry(), settings.max_record_bytes)
        self._topic = topic or settings.topics.events
        self._clock = clock
        self._schema_ref = settings.schema_registry_url or CONSENT_EVENT

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def prepare(self, event: ConsentEvent) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """Validate and encode: (key, value, headers). Raises on invalid input, and with
        ``OversizedRecordError`` for a record larger than the worker would accept."""
        now = self._now_ms()
        validate_event(event, self._policy, now)
        value = self._serde.check_size(self._serde.encode(event, self._topic))
        headers = ce_headers(
            event_id=event.event_id,
            event_type=event.type.value,
            source=event.source,
            time_ms=event.occurred_at,
            subject=event.subject_id,
            content_type=_CONTENT_TYPE,
            data_schema=self._schema_ref,
            published_at_ms=now,
        )
        return event.subject_id.encode("utf-8"), value, headers

    def check_topic(self, timeout_s: float = 10.0) -> None:
        """The broker answers and the inbound topic exists, or ``BrokerUnavailableError``,
        ``UnknownTopicError``, ``AccessDeniedError`` (before a batch, not after it)."""
        from confluent_kafka import KafkaException

        try:
            meta = self._producer.list_topics(self._topic, timeout=timeout_s)
        except KafkaException as exc:
            raise kafka_error(exc, f"topic {self._topic}") from exc
        topic = meta.topics.get(self._topic)
        error = None if topic is None else topic.error
        refused = None if error is None else kafka_error(error, f"topic {self._topic}")
        if topic is None or isinstance(refused, UnknownTopicError):
            raise UnknownTopicError(f"Kafka: topic {self._topic} does not exist")
        if refused is not None:
            raise refused

    def publish_async(
        self,
        event: ConsentEvent,
        on_delivery: DeliveryCallback | None = None,
        *,
        wait_for_queue: bool = True,
    ) -> None:
        """Validate and enqueue; ``on_delivery`` runs from ``poll``/``flush`` once acknowledged.
        With ``wait_for_queue=False`` a full local queue raises ``QueueFullError`` at once
        (nothing enqueued) instead of polling until there is room (an event loop's choice)."""
        self.enqueue(event, self.prepare(event), on_delivery, wait_for_queue=wait_for_queue)

    def enqueue(
        self,
        event: ConsentEvent,
        prepared: tuple[bytes, bytes, list[tuple[str, bytes]]],
        on_delivery: DeliveryCallback | None = None,
        *,
        wait_for_queue: bool = True,
    ) -> None:
        """Enqueue what ``prepare(event)`` returned (``publish_async`` in two steps)."""
        key, value, headers = prepared

        def delivered(err: Any, msg: Any) -> None:
            if on_delivery is None:
                if err is not None:
                    log.error("delivery of event %s failed: %s", event.event_id, err)
                return
            if err is not None:
                on_delivery(None, PublishError(f"event {event.event_id}: {err}"))
            else:
                on_delivery(
                    DeliveryReceipt(event.event_id, msg.topic(), msg.partition(), msg.offset()),
                    None,
                )

        self._produce(key, value, headers, delivered, wait_for_queue=wait_for_queue)

    def _produce(
        self, key: bytes, value: bytes, headers: Any, cb: Any, *, wait_for_queue: bool = True
    ) -> None:
        produce_record(
            self._producer, self._topic, key, value, headers, cb, wait_for_queue=wait_for_queue
        )

    def publish(self, event: ConsentEvent, timeout_s: float = 30.0) -> DeliveryReceipt:
        """Validate, send, and return once the broker acknowledged (or raise PublishError)."""
        outcome: list[tuple[DeliveryReceipt | None, PublishError | None]] = []
        self.publish_async(event, lambda receipt, err: outcome.append((receipt, err)))
        deadline = time.monotonic() + timeout_s
        while not outcome and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if not outcome:
            raise PublishError(f"event {event.event_id}: no acknowledgement within {timeout_s}s")
        receipt, err = outcome[0]
        if err is not None:
            raise err
        assert receipt is not None  # noqa: S101 - one of the two is always set
        return receipt

    def publish_many(
        self, events: Iterable[ConsentEvent], timeout_s: float = 60.0
    ) -> list[DeliveryReceipt]:
        """Batch path: validate all first (nothing sent if one is invalid), send, wait for all."""
        prepared = [(e, *self.prepare(e)) for e in events]
        receipts: list[DeliveryReceipt] = []
        errors: list[PublishError] = []
        for event, key, value, headers in prepared:
            self._produce(key, value, headers, _collector(event.event_id, receipts, errors))
        self.flush(timeout_s)
        if errors or len(receipts) != len(prepared):
            first = errors[0] if errors else PublishError("not every event was acknowledged")
            raise PublishError(
                f"{len(prepared) - len(receipts)} of {len(prepared)} failed: {first}"
            )
        return receipts

    def poll(self, timeout_s: float = 0.0) -> int:
        return self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for every queued event; returns how many are still undelivered."""
        return self._producer.flush(timeout_s)

    def close(self) -> None:
        left = self.flush()
        if left:
            log.error("%d events were not acknowledged before close", left)

    def __enter__(self) -> ConsentPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def produce_record(
    producer: KafkaProducer,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: Any,
    on_delivery: Any,
    *,
    wait_for_queue: bool = True,
) -> None:
    """Enqueue one record; ``on_delivery(err, msg)`` runs from ``poll``/``flush``. A full
    local queue: poll until there is room, or with ``wait_for_queue=False`` raise
    ``QueueFullError`` at once. A record librdkafka refuses (size, configuration) raises
    the ``ContractError``/``ConfigurationError``, anything else ``PublishError``."""
    from confluent_kafka import KafkaException

    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            if not wait_for_queue:
                raise QueueFullError("the producer's local queue is full") from None
            producer.poll(0.05)  # local queue full: serve callbacks, then retry
        except KafkaException as exc:  # refused by librdkafka before anything was sent
            error = kafka_error(exc, f"record of {len(value):,} bytes not sent")
            if isinstance(error, ContractError | ConfigurationError):
                raise error from exc
            raise PublishError(str(error)) from exc


def _collector(event_id: str, receipts: list[DeliveryReceipt], errors: list[PublishError]) -> Any:
    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(PublishError(f"event {event_id}: {err}"))
        else:
            receipts.append(DeliveryReceipt(event_id, msg.topic(), msg.partition(), msg.offset()))

    return delivered
