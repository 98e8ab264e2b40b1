"""ConsentPublisher against the real broker: every event kind in both wire formats arrives
decodable, keyed by subject, with CloudEvents headers; invalid events never leave; the
producer really is idempotent."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from producers.publisher import ConsentPublisher, make_producer
from schemas.cloudevents import header_map
from schemas.errors import NonWithdrawableError, UnknownPurposeError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    PermissionRevoked,
)
from schemas.policy import Policy, load_policy
from schemas.serde import AvroSerde, wire_format_of
from schemas.settings import Settings

from .kafka_auth import admin_settings

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., str]
GroupFactory = Callable[..., str]
CONSUME_TIMEOUT_S = 30.0
HEADERS = (
    "ce_specversion",
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "ce_subject",
    "content-type",
    "cs_published_at",
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _event(payload: Any) -> ConsentEvent:
    subject = f"it-member-{uuid.uuid4().hex[:12]}"
    return ConsentEvent(str(uuid.uuid4()), subject, _now_ms() - 1000, "account-service", payload)


def _kinds() -> dict[str, Any]:
    return {
        "consent.changed": ConsentChanged(
            "personalized_ads", ConsentDecision.WITHDRAWN, "2023-09-01", "app_settings"
        ),
        "permission.revoked/device": PermissionRevoked(permission="camera", device_id="ios-IT01"),
        "permission.revoked/app": PermissionRevoked(app_id="ads-insights"),
        "deletion.requested": DeletionRequested(
            str(uuid.uuid4()), DeletionScope.CATEGORIES, "user_request", ("behaviour",)
        ),
        "data.shared": DataShared(
            "payment",
            ("account_profile", "payment_records"),
            MappingProxyType({"order_no": "SO-IT-1", "payment_account_ref": "PA-IT-1"}),
            transaction_completed_at=_now_ms() - 5000,
        ),
    }


KINDS = _kinds()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy()


@pytest.fixture
def settings(bootstrap_servers: str) -> Settings:
    return admin_settings(bootstrap_servers=bootstrap_servers)


def _serdes(wire_format: str) -> tuple[AvroSerde, AvroSerde]:
    """(publisher's serde, consumer's serde): two instances sharing one registry."""
    if wire_format == "single-object":
        return AvroSerde(), AvroSerde()
    registry = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})
    return AvroSerde(registry), AvroSerde(registry)


def _consumer(settings: Settings, group: str, topic: str) -> Consumer:
    consumer = Consumer(settings.consumer_config(group))
    consumer.subscribe([topic])
    return consumer


def _consume(consumer: Consumer, count: int, timeout_s: float = CONSUME_TIMEOUT_S) -> list[Message]:
    """Poll until ``count`` records arrived or the timeout passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    return got


def _high_watermarks(consumer: Consumer, topic: str) -> int:
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    total = 0
    for p in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += high
    return total


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    opened: list[Consumer] = []
    yield opened
    for consumer in opened:
        consumer.close()


# ---- every kind, both wire formats ----------------------------------------------------


@pytest.mark.parametrize("wire_format", ["single-object", "confluent"])
@pytest.mark.parametrize("kind", KINDS)
def test_published_event_arrives_decodable_with_key_and_headers(
    kind: str,
    wire_format: str,
    policy: Policy,
    settings: Settings,
    unique_topic: TopicFactory,
    unique_group: GroupFactory,
    consumers: list[Consumer],
) -> None:
    topic = unique_topic("it-publish")
    publisher_serde, consumer_serde = _serdes(wire_format)
    event = _event(KINDS[kind])
    with ConsentPublisher(settings, policy, serde=publisher_serde, topic=topic) as publisher:
        receipt = publisher.publish(event)
    assert receipt.topic == topic
    assert receipt.event_id == event.event_id

    consumer = _consumer(settings, unique_group("it-publish"), topic)
    consumers.append(consumer)
    (msg,) = _consume(consumer, 1)
    value = msg.value()
    assert value is not None
    assert wire_format_of(value) == wire_format
    assert consumer_serde.decode_as(value, ConsentEvent, topic) == event
    assert msg.key() == event.subject_id.encode()
    assert (msg.partition(), msg.offset()) == (receipt.partition, receipt.offset)
    raw_headers = msg.headers()
    assert isinstance(raw_headers, list)
    assert all(isinstance(v, bytes) for _, v in raw_headers), raw_headers
    headers = header_map(cast(list[tuple[str, bytes]], raw_headers))
    missing = [name for name in HEADERS if name not in headers]
    assert missing == []
    assert headers["ce_id"] == event.event_id.encode()
    assert headers["ce_type"] == event.type.value.encode()
    assert headers["ce_subject"] == event.subject_id.encode()
    assert headers["content-type"] == b"application/avro"
    assert abs(int(headers["cs_published_at"]) - _now_ms()) < 60_000


def test_events_of_one_subject_share_a_partition_in_order(
    policy: Policy,
    settings: Settings,
    unique_topic: TopicFactory,
    unique_group: GroupFactory,
    consumers: list[Consumer],
) -> None:
    topic = unique_topic("it-publish-order", partitions=3)
    subject = f"it-member-{uuid.uuid4().hex[:12]}"
    events = [
        ConsentEvent(str(uuid.uuid4()), subject, _now_ms() - 10_000 + i, "app-settings", payload)
        for i, payload in enumerate(KINDS.values())
    ]
    with ConsentPublisher(settings, policy, topic=topic) as publisher:
        receipts = publisher.publish_many(events)
    assert len({r.partition for r in receipts}) == 1
    consumer = _consumer(settings, unique_group("it-order"), topic)
    consumers.append(consumer)
    got = _consume(consumer, len(events))
    decoded = [AvroSerde().decode_as(m.value() or b"", ConsentEvent) for m in got]
    assert decoded == events


# ---- invalid events never leave -------------------------------------------------------


def test_invalid_event_raises_and_the_topic_stays_empty(
    policy: Policy,
    settings: Settings,
    unique_topic: TopicFactory,
    unique_group: GroupFactory,
    consumers: list[Consumer],
) -> None:
    topic = unique_topic("it-publish-invalid")
    withdrawal = ConsentChanged("payment", ConsentDecision.WITHDRAWN, "2023-09-01", "app")
    with ConsentPublisher(settings, policy, topic=topic) as publisher:
        with pytest.raises(NonWithdrawableError):
            publisher.publish(_event(withdrawal))
        assert publisher.flush(10.0) == 0
    consumer = _consumer(settings, unique_group("it-invalid"), topic)
    consumers.append(consumer)
    assert _consume(consumer, 1, timeout_s=3.0) == []
    assert _high_watermarks(consumer, topic) == 0


def test_batch_with_one_invalid_event_sends_nothing(
    policy: Policy,
    settings: Settings,
    unique_topic: TopicFactory,
    unique_group: GroupFactory,
    consumers: list[Consumer],
) -> None:
    topic = unique_topic("it-publish-batch")
    subject_events = [_event(payload) for payload in KINDS.values()]
    unknown = ConsentChanged("telepathy", ConsentDecision.GRANTED, "2023-09-01", "app")
    bad = _event(unknown)
    sentinel = ConsentEvent(
        str(uuid.uuid4()), bad.subject_id, _now_ms(), "app-settings", KINDS["consent.changed"]
    )
    with ConsentPublisher(settings, policy, topic=topic) as publisher:
        with pytest.raises(UnknownPurposeError):
            publisher.publish_many([*subject_events, bad])
        # the same key afterwards: had anything of the batch been sent, it would be there too
        publisher.publish(sentinel)
    consumer = _consumer(settings, unique_group("it-batch"), topic)
    consumers.append(consumer)
    got = _consume(consumer, 1)
    assert [AvroSerde().decode(m.value() or b"") for m in got] == [sentinel]
    assert _consume(consumer, 1, timeout_s=2.0) == []
    assert _high_watermarks(consumer, topic) == 1


# ---- the producer is idempotent -------------------------------------------------------


def test_producer_runs_with_idempotence(
    policy: Policy, settings: Settings, unique_topic: TopicFactory
) -> None:
    topic = unique_topic("it-publish-idempotent")
    stats: list[dict[str, Any]] = []
    producer = make_producer(
        settings,
        **{"statistics.interval.ms": 100, "stats_cb": lambda s: stats.append(json.loads(s))},
    )
    publisher = ConsentPublisher(settings, policy, producer=producer, topic=topic)
    publisher.publish(_event(KINDS["consent.changed"]))

    def assigned() -> dict[str, Any] | None:
        for s in stats:
            eos = s.get("eos", {})
            if eos.get("idemp_state") == "Assigned" and eos.get("producer_id", -1) >= 0:
                return dict(eos)
        return None

    deadline = time.monotonic() + CONSUME_TIMEOUT_S
    while assigned() is None and time.monotonic() < deadline:
        publisher.poll(0.1)
    eos = assigned()
    publisher.close()
    assert stats, "no statistics arrived"
    assert eos is not None, f"last eos stats: {stats[-1].get('eos')}"
    assert eos["producer_id"] >= 0
    assert eos["producer_epoch"] >= 0
