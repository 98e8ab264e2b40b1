"""The Kafka clients the partner SDK needs: protocols (for fakes) and factories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from schemas.contracts import PARTNER_ACKNOWLEDGEMENT
from schemas.serde import AvroSerde
from schemas.settings import Settings

__all__ = [
    "KafkaConsumer",
    "KafkaMessage",
    "KafkaProducer",
    "PartnerClients",
    "make_consumer",
    "make_producer",
    "partner_clients",
]


class KafkaMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the SDK reads."""

    def error(self) -> Any: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...


class KafkaConsumer(Protocol):
    """The part of ``confluent_kafka.Consumer`` the SDK uses."""

    def subscribe(self, topics: list[str], *args: Any, **kwargs: Any) -> None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]: ...
    def commit(self, *args: Any, **kwargs: Any) -> Any: ...
    def close(self) -> None: ...


class KafkaProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` the SDK uses."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float) -> int: ...
    def flush(self, timeout: float) -> int: ...


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer with manual commits, built from the one librdkafka config."""
    from confluent_kafka import Consumer

    consumer: KafkaConsumer = Consumer(settings.consumer_config(group_id, **overrides))
    return consumer


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer (acks=all), built from the one librdkafka config."""
    from confluent_kafka import Producer

    producer: KafkaProducer = Producer(settings.producer_config(**overrides))
    return producer


@dataclass(frozen=True)
class PartnerClients:
    """What a consumer of a partner's instructions talks to Kafka with (the partner SDK's
    consumer, the webhook bridge): the consumer of its group, the acks' producer, the serde
    and the ``dataschema`` its acks name."""

    consumer: KafkaConsumer
    producer: KafkaProducer
    serde: AvroSerde
    ack_data_schema: str


def partner_clients(
    settings: Settings,
    group_id: str,
    *,
    consumer: KafkaConsumer | None = None,
    producer: KafkaProducer | None = None,
    serde: AvroSerde | None = None,
) -> PartnerClients:
    """The clients given (tests pass fakes), the others built from ``settings``."""
    return PartnerClients(
        consumer=make_consumer(settings, group_id) if consumer is None else consumer,
        producer=make_producer(settings) if producer is None else producer,
        serde=serde or AvroSerde(settings.schema_registry(), settings.max_record_bytes),
        ack_data_schema=settings.schema_registry_url or PARTNER_ACKNOWLEDGEMENT,
    )
