"""``SourceReader`` on Kafka: the group's committed offsets and direct reads of a range.

A confluent-kafka consumer that carries the worker's group id (to read its committed
offsets) but never subscribes and never commits: it does not join the group. Its calls
block, so they run in a thread, one at a time. A broker that does not answer is waited
out (a partition stalls, and its lag alerts), never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

from schemas.cloudevents import header_map
from schemas.errors import TransientError
from schemas.settings import Settings
from streams.inbound import Inbound

__all__ = ["KafkaSourceReader", "SourceReadError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

REQUEST_TIMEOUT_S: Final = 10.0
READ_TIMEOUT_S: Final = 30.0
RETRY_BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0)


class SourceReadError(TransientError):
    """A source partition could not be read directly (the broker did not answer)."""

    reason = "source_read_failed"


class KafkaSourceReader:
    def __init__(self, settings: Settings, group_id: str) -> None:
        config = settings.consumer_config(group_id, **{"client.id": f"{group_id}-reader"})
        self._config = config
        self._consumer: Consumer | None = None
        self._lock = asyncio.Lock()

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    async def start_offset(self, topic: str, partition: int) -> int:
        return await self._retrying(self._start_offset, topic, partition)

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        return await self._retrying(self._read, topic, partition, start, end)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    async def _retrying(self, call: Callable[..., T], *args: Any) -> T:
        attempt = 0
        while True:
            try:
                async with self._lock:
                    return await asyncio.to_thread(call, *args)
            except (KafkaException, SourceReadError) as exc:
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("direct read of %s failed (attempt %d): %s", args[:2], attempt, exc)
                await asyncio.sleep(delay)

    def _start_offset(self, topic: str, partition: int) -> int:
        consumer = self._client()
        (committed,) = consumer.committed(
            [TopicPartition(topic, partition)], timeout=REQUEST_TIMEOUT_S
        )
        if committed.error is not None:
            raise SourceReadError(f"committed offset of {topic}[{partition}]: {committed.error}")
        if committed.offset != OFFSET_INVALID and committed.offset >= 0:
            return int(committed.offset)
        low, _high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=REQUEST_TIMEOUT_S
        )
        return int(low)

    def _read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        consumer = self._client()
        consumer.assign([TopicPartition(topic, partition, start)])
        try:
            return self._collect(consumer, topic, partition, end)
        finally:
            consumer.unassign()

    @staticmethod
    def _collect(consumer: Consumer, topic: str, partition: int, end: int) -> list[Inbound]:
        found: list[Inbound] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                (position,) = consumer.position([TopicPartition(topic, partition)])
                if position.offset >= end:  # only markers were left before ``end``
                    return found
                continue
            if msg.error() is not None:
                raise SourceReadError(f"{topic}[{partition}]: {msg.error()}")
            offset = msg.offset()
            if offset is None:
                continue
            if offset < end:
                found.append(
                    Inbound(
                        msg.key(),
                        msg.value() or b"",
                        header_map(msg.headers()),
                        topic,
                        partition,
                        offset,
                    )
                )
            if offset >= end - 1:
                return found
        raise SourceReadError(f"{topic}[{partition}]: offsets before {end} not read in time")
