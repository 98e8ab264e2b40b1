"""A stand-in for the few ``confluent_kafka.Consumer`` calls a read to the end makes
(``consumers.topic_reader``): the topic's watermarks and the batches ``consume`` returns."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

__all__ = ["FakeConsumer", "Record"]


class Record:
    """A consumed record, or an event of the consumer when ``error`` is set."""

    def __init__(
        self,
        partition: int,
        offset: int,
        value: bytes | None,
        error: Any = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._p, self._o, self._v, self._e, self._k = partition, offset, value, error, key
        self._h = headers

    def error(self) -> Any:
        return self._e

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._h


class FakeConsumer:
    """(low, high) per partition; each ``consume`` returns the next of ``batches``; the
    topic's metadata carries ``error`` when one is given."""

    def __init__(
        self, ends: dict[int, tuple[int, int]], batches: list[list[Record]], error: Any = None
    ) -> None:
        self.ends, self.batches, self.error = ends, batches, error
        self.assigned: list[tuple[int, int]] = []
        self.config: dict[str, Any] = {}
        self.closed = False

    def __call__(self, config: dict[str, Any]) -> FakeConsumer:
        """The consumer factory: notes the configuration it was built with."""
        self.config = config
        return self

    def list_topics(self, topic: str, timeout: float) -> Any:
        info = SimpleNamespace(error=self.error, partitions={p: None for p in self.ends})
        return SimpleNamespace(topics={topic: info})

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return self.ends[tp.partition]

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True
