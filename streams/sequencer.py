"""Every record of a source partition handled once per worker run, in offset order.

Around restarts and rebalances Faust may hand an agent a record twice, late (after later
records of its partition) or not at all (faust-streaming issue 596; ``streams.faust_glue.transport``
mends the part of it that lives in Faust's fetch loop). Order per partition is order per
subject, and a lost record is a lost consent change, so the agents do not rely on it:
the sequencer keeps, per source partition, the next offset the agent has to handle, and
turns each batch the stream delivers into the records to handle, in order:

- a record below it was handled already (a redelivery): skipped;
- the expected record: handled;
- a record above it: the records in between are read from Kafka directly
  (``SourceReader``) and handled first, in order, then this one.

``plan`` does not move the expected offsets; ``done`` does, once the batch's effects are
acknowledged. A batch that fails is therefore read again: by the agent when it starts
again (``unfinished``: the records taken but not done), or as missing records by the
next batch of its partitions. A plan may follow one that is not done yet (``ahead``: the
events agent decides a batch while the previous one's last wave is on its way).

The first record of a partition after an assignment is compared with the consumer group's
committed offset, which never passes a record that was not handled (commits follow the
agents' acknowledgements, which follow the batch's effects). Given a table of positions
(the ledger's), the next offset is also kept there (``Plan.positions``, written by the
agent with the batch's state, under a key no record key can have); the larger of the two
is the start, so records whose state changes already reached the table are not applied
again after a rebalance or restart. Without it, handling is at-least-once and the
handler is idempotent (events: by event id).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Protocol

from streams.inbound import Inbound
from streams.metrics import StreamMetrics

__all__ = [
    "POSITION_KEY_PREFIX",
    "RETRY_WAIT_S",
    "Plan",
    "SourceReader",
    "SourceSequencer",
    "Step",
    "next_step",
    "position_key",
]

log = logging.getLogger(__name__)

POSITION_KEY_PREFIX: Final = b"\x00next-offset:"
RETRY_WAIT_S: Final = 0.5
"""How long an agent started again after a failure waits before reading its records again."""

Partition = tuple[str, int]
FilledCallback = Callable[[str, int, int, int], None]


class Step(Enum):
    SKIP = "skip"  # handled before
    HANDLE = "handle"  # the expected record
    FILL = "fill"  # records are missing before this one


def next_step(expected: int, offset: int) -> Step:
    if offset < expected:
        return Step.SKIP
    if offset == expected:
        return Step.HANDLE
    return Step.FILL


class SourceReader(Protocol):
    """Reads a source partition directly, outside the agent's stream."""

    async def start_offset(self, topic: str, partition: int) -> int:
        """The consumer group's committed offset, or the partition's first offset."""
        ...

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        """The records with ``start <= offset < end`` (offsets without a record, such as
        transaction markers, are simply absent)."""
        ...


@dataclass
class Plan:
    """The records of one batch to handle, in order, and what follows once they are."""

    records: list[Inbound] = field(default_factory=list)
    next: dict[Partition, int] = field(default_factory=dict)
    filled: list[tuple[str, int, int, int]] = field(default_factory=list)
    redelivered: int = 0

    @property
    def positions(self) -> dict[bytes, tuple[int, bytes]]:
        """Table entries (key -> (partition, value)) that keep the next offsets."""
        return {position_key(tp): (tp[1], str(n).encode()) for tp, n in self.next.items()}


class SourceSequencer:
    def __init__(
        self,
        stage: str,
        reader: SourceReader,
        metrics: StreamMetrics,
        on_filled: FilledCallback | None = None,
        positions: Mapping[bytes, bytes] | None = None,
    ) -> None:
        self._stage, self._reader, self._metrics = stage, reader, metrics
        self._on_filled, self._positions = on_filled, positions
        self._next: dict[Partition, int] = {}
        self._taken: dict[Partition, int] = {}
        """Per partition, the offset after the last record planned (done or not)."""

    def expected(self, topic: str, partition: int) -> int | None:
        return self._next.get((topic, partition))

    def forget(self, partitions: Iterable[Partition]) -> None:
        """After a rebalance: the next record of these partitions is a first record again."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._taken.pop(tp, None)

    async def plan(self, batch: Sequence[Inbound], ahead: Plan | None = None) -> Plan:
        """The records to handle for ``batch``: redeliveries out, missing records in.
        ``ahead``: a plan handled but not ``done`` yet, which this one follows."""
        plan = Plan()
        for record in batch:
            tp = (record.topic, record.partition)
            expected = plan.next.get(tp)
            if expected is None and ahead is not None:
                expected = ahead.next.get(tp)
            if expected is None:
                expected = self._next.get(tp)
            if expected is None:
                expected = await self._start(tp)
            step = next_step(expected, record.offset)
            if step is Step.SKIP:
                plan.redelivered += 1
                continue
            if step is Step.FILL:
                await self._fill(plan, record, expected)
            plan.records.append(record)
            plan.next[tp] = record.offset + 1
        taken = self._taken
        for tp, n in plan.next.items():
            if n > taken.get(tp, 0):
                taken[tp] = n
        return plan

    async def unfinished(self) -> Plan:
        """The records planned but not done (a batch failed and the agent starts again),
        read directly, in order: without it they would wait for the next record of their
        partition. Read after ``RETRY_WAIT_S``, so a batch that keeps failing is tried
        twice a second, not as fast as Faust restarts the agent (100 restarts in a second
        stop the worker)."""
        plan = Plan()
        if any(self._next.get(tp, -1) < end for tp, end in self._taken.items()):
            await asyncio.sleep(RETRY_WAIT_S)
        for tp, end in list(self._taken.items()):
            start = self._next.get(tp)
            if start is None:
                start = await self._start(tp)
            if start >= end:
                continue
            missing = await self._reader.read(*tp, start, end)
            log.warning(
                "%s[%d]: offsets %d..%d were taken but not settled (a batch failed); %d "
                "records read again",
                *tp,
                start,
                end - 1,
                len(missing),
            )
            plan.records.extend(missing)
            plan.next[tp] = end
            plan.filled.append((*tp, start, end))
            self._metrics.source_records.labels(self._stage, "refetched").inc(len(missing))
        return plan

    def done(self, plan: Plan) -> None:
        """The plan's records are handled and their effects acknowledged."""
        self._next.update(plan.next)
        if plan.redelivered:
            self._metrics.source_records.labels(self._stage, "redelivered").inc(plan.redelivered)
        for topic, partition, start, end in plan.filled:
            if self._on_filled is not None:
                self._on_filled(topic, partition, start, end)

    async def _start(self, tp: Partition) -> int:
        started = time.monotonic()
        committed = await self._reader.start_offset(*tp)
        stored = self._positions.get(position_key(tp)) if self._positions is not None else None
        start = max(committed, int(stored)) if stored else committed
        log.info(
            "%s[%d]: first record after an assignment; handling from offset %d "
            "(committed %d, stored %s; looked up in %.0f ms)",
            tp[0],
            tp[1],
            start,
            committed,
            stored.decode() if stored else "none",
            (time.monotonic() - started) * 1000,
        )
        return start

    async def _fill(self, plan: Plan, record: Inbound, start: int) -> None:
        topic, partition, end = record.topic, record.partition, record.offset
        missing = await self._reader.read(topic, partition, start, end)
        log.warning(
            "%s[%d]: offsets %d..%d were not delivered by the stream; %d records read "
            "directly and handled first",
            topic,
            partition,
            start,
            end - 1,
            len(missing),
        )
        plan.records.extend(missing)
        plan.filled.append((topic, partition, start, end))
        self._metrics.source_records.labels(self._stage, "refetched").inc(len(missing))


def position_key(tp: Partition) -> bytes:
    return POSITION_KEY_PREFIX + f"{tp[0]}:{tp[1]}".encode()
