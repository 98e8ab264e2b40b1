"""One record size limit, from the SDK to the topics: what the publisher accepts, the
producer can send, the topics hold and the worker decodes; a dead letter fits too."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from producers.publisher import ConsentPublisher
from schemas.errors import OversizedRecordError, PublishError, UnknownTopicError
from schemas.events import ConsentEvent, DataShared
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.topics import RECORD_HEADROOM_BYTES, TopicNames, record_limits
from streams.output import output_producer_config

REPO = Path(__file__).resolve().parents[2]
POLICY = load_policy()
NOW = 1_780_000_000_000


def CLOCK() -> float:
    return NOW / 1000


def _stack() -> Any:
    spec = importlib.util.spec_from_file_location("stack", REPO / "deploy/local/stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack"] = module
    spec.loader.exec_module(module)
    return module


def test_the_local_stack_creates_its_topics_as_the_worker_would() -> None:
    stack = _stack()
    cfg = stack.load_config(REPO / "deploy/local/stack.toml")
    created = {t.name: t.config for t in cfg.topics}
    wanted = TopicNames().specs(cfg.partners, Settings().max_record_bytes)
    assert created == wanted


def test_producers_and_topics_take_the_same_limits() -> None:
    settings = Settings(max_record_bytes=4096)
    events, deadletters = record_limits(4096)
    assert events == 4096 + RECORD_HEADROOM_BYTES and deadletters > events
    assert settings.producer_config()["message.max.bytes"] == events
    assert settings.producer_config()["batch.size"] == events  # a whole batch fits too
    assert output_producer_config(settings, "w")["batch.size"] == events
    assert Settings().producer_config()["batch.size"] == 1_000_000  # librdkafka's default
    assert output_producer_config(settings, "w")["message.max.bytes"] == deadletters
    specs = settings.topics.specs(["ads"], 4096)
    assert specs[settings.topics.events]["max.message.bytes"] == str(events)
    assert specs[settings.topics.deadletter]["max.message.bytes"] == str(deadletters)
    others = {name: c["max.message.bytes"] for name, c in specs.items()}
    del others[settings.topics.deadletter]
    assert set(others.values()) == {str(events)}  # instructions carry a state's references
    assert specs[settings.topics.state]["cleanup.policy"] == "compact"


class Producer:
    def __init__(self, error: Exception | None = None) -> None:
        self.sent: list[bytes] = []
        self.error = error

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(kwargs["value"])

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def event(refs: int) -> ConsentEvent:
    """A data.shared event of about 40 bytes per partner reference."""
    shared = DataShared(
        "ads",
        ("behaviour",),
        MappingProxyType({f"ref-{i:05d}": f"ADS-{i:030d}" for i in range(refs)}),
    )
    return ConsentEvent("3f1c1b2e-7c1a-4c2e-9a51-0d1e2f3a4b5c", "buyer-1", NOW, "tests", shared)


def test_the_sdk_refuses_a_record_the_worker_would_dead_letter() -> None:
    settings = Settings(max_record_bytes=4096)
    producer = Producer()
    publisher = ConsentPublisher(settings, POLICY, producer=producer, clock=CLOCK)
    publisher.publish_async(event(10))
    with pytest.raises(OversizedRecordError) as refused:
        publisher.publish_async(event(200))
    assert "exceeds the maximum of 4,096 bytes" in str(refused.value)
    assert refused.value.reason == "oversized"
    assert len(producer.sent) == 1  # the oversized one was never sent
    serde = AvroSerde(max_record_bytes=4096)
    assert serde.decode(producer.sent[0], settings.topics.events) == event(10)


def test_what_librdkafka_refuses_locally_is_a_project_error() -> None:
    from confluent_kafka import KafkaError, KafkaException

    def publisher(code: int) -> ConsentPublisher:
        producer = Producer(KafkaException(KafkaError(code)))
        return ConsentPublisher(Settings(), POLICY, producer=producer, clock=CLOCK)

    with pytest.raises(OversizedRecordError, match="not sent"):
        publisher(KafkaError.MSG_SIZE_TOO_LARGE).publish_async(event(1))
    with pytest.raises(UnknownTopicError):
        publisher(KafkaError._UNKNOWN_TOPIC).publish_async(event(1))
    with pytest.raises(PublishError, match="not sent"):
        publisher(KafkaError._FATAL).publish_async(event(1))
