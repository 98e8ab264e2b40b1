"""``CountedSends``: records produced by a batch command, every delivery counted.

The CLI's bulk senders (``replay``, ``dead-letters --republish``) produce more records
than librdkafka's local queue holds (``queue.buffering.max.messages``, 100,000 by
default), and a record the broker refuses (no ACL, topic gone) fails only in its delivery
report. So every record goes through ``produce_record`` (a full queue is waited out), and
its report is counted: ``delivered``, ``failed`` (with the first failures' reasons) and
``pending`` (not acknowledged yet, or not within ``settle``'s timeout).
"""

from __future__ import annotations

from typing import Any, Final

from producers.publisher import KafkaProducer, produce_record

__all__ = ["CountedSends"]

_REASONS_KEPT: Final = 5


class CountedSends:
    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self.sent = self.delivered = self.failed = 0
        self.reasons: list[str] = []

    @property
    def pending(self) -> int:
        return self.sent - self.delivered - self.failed

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        """Enqueue one record, waiting while the local queue is full. Raises as
        ``produce_record`` does for a record librdkafka refuses outright."""
        produce_record(self._producer, topic, key, value, headers, self._reported)
        self.sent += 1

    def _reported(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.reasons) < _REASONS_KEPT:
            self.reasons.append(f"{msg.topic() if msg is not None else '?'}: {err}")

    def settle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every report; True when all were delivered."""
        self._producer.flush(timeout_s)
        return self.pending == 0 and self.failed == 0

    def summary(self) -> str:
        """``N delivered, F failed (reasons), P not acknowledged``: the parts that apply."""
        parts = [f"{self.delivered} delivered"]
        if self.failed:
            parts.append(f"{self.failed} failed ({'; '.join(self.reasons)})")
        if self.pending:
            parts.append(f"{self.pending} not acknowledged")
        return ", ".join(parts)
