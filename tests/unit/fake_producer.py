"""A stand-in for ``confluent_kafka.Producer`` with librdkafka's bounded local queue:
``produce`` raises ``BufferError`` while ``capacity`` records wait for delivery, and
``poll``/``flush`` deliver them (a refused topic's records fail, as a broker's answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

__all__ = ["QueueProducer"]


@dataclass
class QueueProducer:
    capacity: int = 100_000
    refused: frozenset[str] = frozenset()
    deliver_on_flush: bool = True
    log: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # and flushes
    queue_full: int = 0
    _queued: list[tuple[Any, Any]] = field(default_factory=list)

    def produce(self, topic: str, value: bytes, key: bytes | None, **kwargs: Any) -> None:
        if len(self._queued) >= self.capacity:
            self.queue_full += 1
            raise BufferError("Local: Queue full")
        self.log.append((topic, key, value))
        msg = SimpleNamespace(topic=lambda: topic, key=lambda: key, value=lambda: value)
        self._queued.append((msg, kwargs.get("on_delivery")))

    def poll(self, timeout: float) -> int:
        served = len(self._queued)
        for msg, report in self._queued:
            refused = msg.topic() in self.refused
            if report is not None:
                report("Broker: Topic authorization failed" if refused else None, msg)
        self._queued.clear()
        return served

    def flush(self, timeout: float) -> int:
        self.log.append(("flush", None, b""))
        if self.deliver_on_flush:
            self.poll(0)
        return len(self._queued)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise NotImplementedError
