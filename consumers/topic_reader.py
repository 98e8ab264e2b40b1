"""A topic read from its start to the end it has when the reading starts, with no
consumer group's commits: what ``rebuild-store``, ``replay`` and ``dead-letters`` read.

Every partition is assigned at its low watermark and read until the high watermark
captured at the start. A partition counts as read when a record at or past its end came,
or when the consumer reports the partition's end: a compacted topic or a transaction
marker can leave no record at the last offset, so the record alone cannot say it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from schemas.client_errors import kafka_error
from schemas.errors import TransientError, UnknownTopicError
from schemas.settings import Settings

__all__ = ["ConsumerFactory", "TopicToEnd"]

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[dict[str, Any]], Any]

_POLL_S: Final = 0.5
_METADATA_TIMEOUT_S: Final = 15.0


class TopicToEnd:
    """``batches()`` (or ``messages()``) yields the records of ``topic`` up to the end
    captured when it starts, within ``timeout_s``; ``complete`` then says whether every
    partition got there. Tombstones are yielded as they are (``value()`` None).

    ``group`` defaults to ``<app id>-read-<random>``, a name under the worker's group
    prefix (nothing is committed); ``consumer_factory`` to ``confluent_kafka.Consumer``."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        timeout_s: float = 30.0,
        *,
        group: str | None = None,
        batch_size: int = 500,
        consumer_factory: ConsumerFactory | None = None,
        start: Mapping[int, int] | None = None,
    ) -> None:
        """``start``: the offset to read each partition from (default: its low
        watermark); ``ends`` holds the ends captured once reading starts."""
        self._settings, self.topic, self._timeout_s = settings, topic, timeout_s
        self._start = dict(start or {})
        self.ends: dict[int, int] = {}
        self._group = group or f"{settings.app_id}-read-{uuid.uuid4().hex[:12]}"
        self._batch_size = batch_size
        self._factory = consumer_factory
        self._remaining: dict[int, int] = {}
        self.complete = False

    def messages(self) -> Iterator[Any]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Any]]:
        """Non-empty lists of records, each at most ``batch_size`` long, in the order the
        consumer gives them (offset order within a partition)."""
        from confluent_kafka import Consumer, TopicPartition

        deadline = time.monotonic() + self._timeout_s
        config = self._settings.consumer_config(self._group, **{"enable.partition.eof": True})
        consumer = (self._factory or Consumer)(config)
        try:
            lows = self._watermarks(consumer)
            consumer.assign([TopicPartition(self.topic, p, lows[p]) for p in self._remaining])
            while self._remaining and time.monotonic() < deadline:
                wait = min(_POLL_S, max(0.0, deadline - time.monotonic()))
                batch = [m for m in consumer.consume(self._batch_size, wait) if self._take(m)]
                if batch:
                    yield batch
            self.complete = not self._remaining
        finally:
            consumer.close()

    def _watermarks(self, consumer: Any) -> dict[int, int]:
        """Where to start each partition with records to read (its low watermark, or
        ``start`` when later); those partitions and their captured ends go to
        ``_remaining``, every partition's end to ``ends``."""
        from confluent_kafka import TopicPartition

        wait = min(self._timeout_s, _METADATA_TIMEOUT_S)
        info = consumer.list_topics(self.topic, timeout=wait).topics.get(self.topic)
        if info is not None and info.error is not None:
            raise kafka_error(info.error, f"reading {self.topic}")  # absent, or not allowed
        if info is None or not info.partitions:
            raise UnknownTopicError(f"Kafka: topic {self.topic} does not exist")
        self._remaining = {}
        lows: dict[int, int] = {}
        for partition in sorted(info.partitions):
            tp = TopicPartition(self.topic, partition)
            offsets = consumer.get_watermark_offsets(tp, timeout=wait)
            if offsets is None:
                raise TransientError(f"no watermark offsets for {self.topic}[{partition}]")
            low, high = int(offsets[0]), int(offsets[1])
            begin = max(low, self._start.get(partition, low))
            self.ends[partition] = high
            if high > begin:
                lows[partition], self._remaining[partition] = begin, high
        return lows

    def _take(self, message: Any) -> bool:
        """Whether ``message`` is a record to yield; notes the partitions read to their end."""
        from confluent_kafka import KafkaError, KafkaException

        error = message.error()
        if error is None:
            self._reached(message.partition(), message.offset() + 1)
            return True
        if error.code() == KafkaError._PARTITION_EOF:
            self._reached(message.partition(), message.offset())
        elif error.fatal():
            raise KafkaException(error)
        else:
            log.warning("reading %s: consumer error: %s", self.topic, error)
        return False

    def _reached(self, partition: int, next_offset: int) -> None:
        end = self._remaining.get(partition)
        if end is not None and next_offset >= end:
            del self._remaining[partition]
