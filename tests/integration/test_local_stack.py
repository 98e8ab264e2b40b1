"""The local stack serves what SPEC section 3 promises: the topics, compaction, Redis."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # implicit re-exports
    AdminClient,
    ConfigResource,
    ResourceType,
)

from .kafka_auth import admin_config

STACK_TOML = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.toml"
COMPACTED = {"consent.state.v1", "consent.requests.v1"}


def expected_topics() -> set[str]:
    with STACK_TOML.open("rb") as fh:
        topics = tomllib.load(fh)["topics"]
    names = {t["name"] for t in topics["topic"]}
    for template in topics["per_partner"]:
        names |= {template["name"].replace("{partner}", p) for p in topics["partners"]}
    return names


def test_contract_topics_exist_with_compaction(bootstrap_servers: str) -> None:
    admin = AdminClient(admin_config(bootstrap_servers))
    existing = admin.list_topics(timeout=30).topics
    expected = expected_topics()
    assert {"consent.events.v1", "partner.payment.instructions.v1"} <= expected
    assert expected <= set(existing)
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in sorted(expected)]
    for resource, future in admin.describe_configs(resources).items():
        policy = future.result()["cleanup.policy"].value
        assert policy == ("compact" if resource.name in COMPACTED else "delete"), resource.name


def test_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    client.close()


def test_unique_topic_round_trip(
    bootstrap_servers: str, unique_topic: Callable[..., str], unique_group: Callable[..., str]
) -> None:
    topic = unique_topic("stack-smoke")
    producer = Producer(admin_config(bootstrap_servers, **{"enable.idempotence": True}))
    producer.produce(topic, key=b"subject-1", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer(
        admin_config(
            bootstrap_servers, **{"group.id": unique_group(), "auto.offset.reset": "earliest"}
        )
    )
    consumer.subscribe([topic])
    try:
        message = None
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        assert (message.key(), message.value()) == (b"subject-1", b"hello")
    finally:
        consumer.close()
