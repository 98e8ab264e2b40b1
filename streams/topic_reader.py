"""A topic read from its start to the end it has when the reading starts (no group
commits): what the CLI's maintenance commands read (``replay``, ``dead-letters``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from schemas.settings import Settings

__all__ = ["TopicToEnd"]


class TopicToEnd:
    """``messages()`` yields every record of ``topic`` up to the end captured when it
    starts, within ``timeout_s``; ``complete`` then says whether it got there."""

    def __init__(self, settings: Settings, topic: str, timeout_s: float = 30.0) -> None:
        self._settings, self.topic, self._timeout_s = settings, topic, timeout_s
        self.complete = False

    def messages(self) -> Iterator[Any]:
        from confluent_kafka import Consumer, TopicPartition

        group = f"{self._settings.app_id}-read-{uuid.uuid4().hex[:12]}"  # the worker's groups
        config = self._settings.consumer_config(group, **{"enable.auto.commit": False})
        consumer = Consumer(config)
        deadline = time.monotonic() + self._timeout_s
        try:
            meta = consumer.list_topics(self.topic, timeout=self._timeout_s).topics[self.topic]
            ends: dict[int, int] = {}
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=self._timeout_s
                )
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.topic, p, 0) for p in ends])
            while ends and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                yield msg
            self.complete = not ends
        finally:
            consumer.close()
