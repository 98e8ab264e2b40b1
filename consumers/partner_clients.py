"""The Kafka clients the partner SDK needs: protocols (for fakes) and factories."""

from __future__ import annotations

from typing import Any, Protocol

from schemas.settings import Settings

__all__ = ["KafkaConsumer", "KafkaMessage", "KafkaProducer", "make_consumer", "make_producer"]


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
