"""``streams.faust_glue.fetched`` (a direct partition's records as one chunk) and the fetch
loop's bookkeeping for a chunk (``fetch_loop._fresh``), with a stand-in for the consumer
(no Kafka), and a guard on the Faust code ``fetched`` copies."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from streams.faust_glue.direct import Chunk, DirectHandler
from streams.faust_glue.fetch_loop import _fresh
from streams.faust_glue.fetched import fetched

UPSTREAM_GETMANY_SHA256 = "4b168d84882a70d6"
"""faust-streaming 0.15.3's ``Consumer.getmany``, which ``fetched`` copies."""

EVENTS0, EVENTS1 = TP("ns.consent.events.v1", 0), TP("ns.consent.events.v1", 1)
CHANGELOG = TP("consent-stream-consent-subjects-changelog", 0)
OTHER = TP("ns.other.v1", 0)


@dataclass
class FakeConsumer:
    """What ``fetched`` reads of Faust's consumer; records are plain offsets."""

    records: dict[TP, list[int]]
    direct: set[TP]
    active: set[TP] | None = None
    flow_active: bool = True
    should_stop: bool = False
    sought: int = 0
    tracked: list[tuple[TP, int]] = field(default_factory=list)
    _buffered_partitions: set[TP] = field(default_factory=set)

    def __post_init__(self) -> None:
        handler = DirectHandler.__new__(DirectHandler)  # never called here
        callbacks = {tp: (handler if tp in self.direct else "faust's") for tp in self.records}
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            topics=SimpleNamespace(_tp_to_callback=callbacks),
            monitor=SimpleNamespace(track_tp_end_offset=self._track),
        )
        self.scheduler = DefaultSchedulingStrategy()
        self.log = SimpleNamespace(dev=lambda *a: None, warning=lambda *a: None)

    def _track(self, tp: TP, offset: int) -> None:
        self.tracked.append((tp, offset))

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        return self.records, self.active

    async def perform_seek(self) -> None:
        self.sought += 1

    def highwater(self, tp: TP) -> int:
        return 1000

    def _to_message(self, tp: TP, record: int) -> tuple[TP, int]:
        return tp, record


def collect(consumer: FakeConsumer, on_item: Any = None) -> list[tuple[TP, Any]]:
    async def main() -> list[tuple[TP, Any]]:
        items = []
        async for tp, item in fetched(consumer, 1.0):
            items.append((tp, item))
            if on_item is not None:
                on_item(consumer)
        return items

    return asyncio.run(main())


def test_a_direct_partitions_records_come_as_one_chunk_the_others_one_by_one() -> None:
    consumer = FakeConsumer(
        {EVENTS0: [5, 6, 7], CHANGELOG: [1, 2], EVENTS1: [9], OTHER: [3, 4]},
        direct={EVENTS0, EVENTS1},
    )
    items = collect(consumer)
    chunks = [(tp, item) for tp, item in items if isinstance(item, Chunk)]
    assert [(tp, list(c), c.tp) for tp, c in chunks] == [
        (EVENTS0, [(EVENTS0, 5), (EVENTS0, 6), (EVENTS0, 7)], EVENTS0),
        (EVENTS1, [(EVENTS1, 9)], EVENTS1),
    ]
    singles = [item for _, item in items if not isinstance(item, Chunk)]
    # Faust's round-robin over topics for the rest
    assert singles == [(CHANGELOG, 1), (OTHER, 3), (CHANGELOG, 2), (OTHER, 4)]
    assert consumer.tracked.count((EVENTS0, 1000)) == 1  # once per chunk, not per record
    assert len(consumer.tracked) == 2 + 4


def test_a_changed_generation_stops_the_fetch_before_the_next_item() -> None:
    consumer = FakeConsumer({EVENTS0: [1, 2], EVENTS1: [3], OTHER: [4]}, direct={EVENTS0, EVENTS1})

    def rebalance(c: FakeConsumer) -> None:
        c.app.consumer_generation_id = 2

    items = collect(consumer, rebalance)
    assert [(tp, list(item)) for tp, item in items] == [(EVENTS0, [(EVENTS0, 1), (EVENTS0, 2)])]


def test_a_stopped_flow_stops_the_fetch_and_no_chunk_follows() -> None:
    consumer = FakeConsumer({EVENTS0: [1], EVENTS1: [2]}, direct={EVENTS0, EVENTS1})

    def suspend(c: FakeConsumer) -> None:
        c.flow_active = False

    assert len(collect(consumer, suspend)) == 1


def test_an_inactive_partition_is_skipped_and_empty_ones_make_no_chunk() -> None:
    consumer = FakeConsumer(
        {EVENTS0: [1], EVENTS1: [2], OTHER: []}, direct={EVENTS0, EVENTS1, OTHER}, active={EVENTS1}
    )
    assert [(tp, list(item)) for tp, item in collect(consumer)] == [(EVENTS1, [(EVENTS1, 2)])]


def test_with_the_flow_not_active_it_seeks_back_and_yields_nothing() -> None:
    consumer = FakeConsumer({EVENTS0: [1]}, direct={EVENTS0}, flow_active=False)
    assert collect(consumer) == []
    assert consumer.sought == 1


# -- the fetch loop's bookkeeping for a chunk ----------------------------------------------


@dataclass(frozen=True)
class Message:
    offset: int


class LoopConsumer:
    def __init__(self, acks_enabled: bool) -> None:
        self.gaps: list[tuple[TP, int, int]] = []
        self.app = SimpleNamespace(
            topics=SimpleNamespace(acks_enabled_for=lambda topic: acks_enabled)
        )

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))


def fresh(consumer: LoopConsumer, offsets: list[int], read_offset: int | None) -> list[int]:
    chunk = Chunk(EVENTS0, [Message(o) for o in offsets])
    kept = asyncio.run(_fresh(consumer, EVENTS0, chunk, read_offset))
    assert isinstance(kept, Chunk) and kept.tp == EVENTS0
    return [m.offset for m in kept]


def test_a_chunk_keeps_what_the_loop_would_hand_over_record_by_record() -> None:
    consumer = LoopConsumer(acks_enabled=True)
    # below the read offset: already handed over; at it: handed over again, as Faust does
    assert fresh(consumer, [8, 9, 10, 11, 14, 15], read_offset=10) == [10, 11, 14, 15]
    assert consumer.gaps == [(EVENTS0, 12, 14)]  # the gap between 11 and 14, as Faust notes
    assert fresh(consumer, [3, 5], read_offset=None) == [3, 5]
    assert consumer.gaps == [(EVENTS0, 12, 14), (EVENTS0, 4, 5)]


def test_no_gaps_are_noted_for_a_topic_whose_acks_are_disabled() -> None:
    consumer = LoopConsumer(acks_enabled=False)
    assert fresh(consumer, [1, 4, 9], read_offset=0) == [1, 4, 9]
    assert consumer.gaps == []


def test_the_copied_getmany_is_the_installed_faust_one() -> None:
    """If this fails, faust-streaming changed ``Consumer.getmany``: re-copy it into
    ``fetched.fetched`` (or drop the chunks if it hands a partition's records over whole)."""
    source = inspect.getsource(Consumer.getmany)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == UPSTREAM_GETMANY_SHA256
