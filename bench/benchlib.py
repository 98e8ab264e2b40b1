"""Small helpers shared by the benchmark steps: namespaces, topics, Redis keys, producing."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from producers.publisher import make_producer
from schemas.settings import Settings
from streams.demo.processes import free_port
from streams.namespace import delete_groups, delete_redis_prefix, delete_topics
from streams.topics import wait_for_leaders

__all__ = [
    "Record",
    "create_topics",
    "delete_groups",
    "delete_redis_prefix",
    "delete_topics",
    "free_port",
    "group_lag",
    "new_namespace",
    "poll_until",
    "produce_all",
    "produce_one",
]

log = logging.getLogger(__name__)

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
T = TypeVar("T")


def new_namespace() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


def poll_until(check: Callable[[], T | None], timeout_s: float, what: str, step: float = 0.1) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step)


def create_topics(
    settings: Settings, names: Sequence[str], config: dict[str, str] | None = None
) -> None:
    """Create the topics (``settings.partitions`` each) and wait for their leaders."""
    admin = AdminClient(settings.admin_config())
    new = [
        NewTopic(n, settings.partitions, settings.replication_factor, config=dict(config or {}))
        for n in names
    ]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result()

    wait_for_leaders(admin, {n: settings.partitions for n in names}, 30.0)


def produce_all(
    settings: Settings, topic: str, records: Iterable[Record], timeout_s: float, **overrides: Any
) -> tuple[int, float, float]:
    """Produce as fast as the client allows; (delivered, first send, all acknowledged)."""
    producer: Any = make_producer(settings, **overrides)
    delivered = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            log.error("delivery failed: %s", err)

    started = time.monotonic()
    for key, value, headers in records:
        produce_one(producer, topic, (key, value, headers), on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(timeout_s)
    if left:
        log.error("%d records not acknowledged within %.0f s", left, timeout_s)
    return delivered, started, time.monotonic()


def produce_one(producer: Any, topic: str, record: Record, **kwargs: Any) -> None:
    """``producer.produce``, serving delivery reports while the client's queue is full."""
    key, value, headers = record
    while True:
        try:
            producer.produce(topic, value, key, headers=headers, **kwargs)
            return
        except BufferError:
            producer.poll(0.01)


def group_lag(settings: Settings, group: str, topics: Sequence[str]) -> int:
    """Records of ``topics`` not yet committed by consumer group ``group``.

    A plain consumer with the group's id reads the committed offsets; it never
    subscribes, so it does not join (or disturb) the group.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.consumer_config(group))
    try:
        parts = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
        lag = 0
        for tp in consumer.committed(parts, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += max(0, high - max(tp.offset, 0))
        return lag
    finally:
        consumer.close()
