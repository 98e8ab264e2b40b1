"""The sequencer hands every record of a partition to the handler once, in offset order,
whatever order (and how often) the stream delivers them. No Kafka: a fake reader."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry

from streams.inbound import Inbound
from streams.metrics import StreamMetrics, stream_metrics
from streams.sequencer import SourceSequencer, Step, next_step

TOPIC = "ns.consent.events.v1"


def rec(offset: int, partition: int = 0, topic: str = TOPIC) -> Inbound:
    return Inbound(f"k{offset}".encode(), f"v{offset}".encode(), {}, topic, partition, offset)


class FakeReader:
    """The partition's log as a list; ``start_offset`` is the group's committed offset."""

    def __init__(self, log: Iterable[int], committed: int | None = None) -> None:
        self.log = sorted(log)
        self.committed = committed
        self.reads: list[tuple[int, int]] = []

    async def start_offset(self, topic: str, partition: int) -> int:
        return self.committed if self.committed is not None else self.log[0]

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        self.reads.append((start, end))
        return [rec(o, partition, topic) for o in self.log if start <= o < end]


def run(
    delivered: Iterable[int], reader: FakeReader, metrics: StreamMetrics | None = None
) -> tuple[list[int], list[Step], list[tuple[str, int, int, int]]]:
    handled: list[int] = []
    steps: list[Step] = []
    filled: list[tuple[str, int, int, int]] = []
    m = metrics or stream_metrics(CollectorRegistry())
    seq = SourceSequencer("events", reader, m, lambda *a: filled.append(a))

    async def handle(r: Inbound) -> None:
        handled.append(r.offset)

    async def go() -> None:
        for offset in delivered:
            steps.append(await seq.handle(rec(offset), handle))

    asyncio.run(go())
    return handled, steps, filled


@pytest.mark.parametrize(
    ("expected", "offset", "step"),
    [(5, 4, Step.SKIP), (5, 5, Step.HANDLE), (5, 6, Step.FILL), (0, 0, Step.HANDLE)],
)
def test_next_step(expected: int, offset: int, step: Step) -> None:
    assert next_step(expected, offset) is step


def test_in_order_delivery_is_handled_as_is() -> None:
    handled, steps, filled = run(range(3, 8), FakeReader(range(0, 8), committed=3))
    assert handled == [3, 4, 5, 6, 7]
    assert set(steps) == {Step.HANDLE}
    assert filled == []


def test_a_hole_at_the_start_is_read_directly_and_handled_first() -> None:
    """Faust's restart race: committed 759, the stream starts at 787 (issue 596)."""
    reader = FakeReader(range(700, 800), committed=759)
    handled, steps, filled = run(range(787, 790), reader)
    assert handled == list(range(759, 790))
    assert reader.reads == [(759, 787)]
    assert steps == [Step.FILL, Step.HANDLE, Step.HANDLE]
    assert filled == [(TOPIC, 0, 759, 787)]


def test_late_and_repeated_records_are_skipped_and_order_is_kept() -> None:
    """The failure seen with redelivery alone: 138 and 139 missing from the queued copy,
    then every record again after the seek back. Each is handled once, in order."""
    first_pass = [o for o in range(99, 200) if o not in (138, 139)]
    handled, steps, _ = run([*first_pass, *range(99, 200)], FakeReader(range(0, 200), 99))
    assert handled == list(range(99, 200))
    assert steps.count(Step.FILL) == 1
    assert steps.count(Step.SKIP) == 101


def test_missing_offsets_without_a_record_are_not_invented() -> None:
    """Transaction markers occupy offsets without records: nothing to handle there."""
    reader = FakeReader([0, 1, 2, 5, 6], committed=0)
    handled, _, _ = run([0, 1, 2, 5, 6], reader)
    assert handled == [0, 1, 2, 5, 6]
    assert reader.reads == [(3, 5)]


def test_partitions_are_sequenced_independently_and_forgotten_on_revocation() -> None:
    reader = FakeReader(range(0, 10), committed=0)
    seq = SourceSequencer("events", reader, stream_metrics(CollectorRegistry()))
    handled: list[tuple[int, int]] = []

    async def handle(r: Inbound) -> None:
        handled.append((r.partition, r.offset))

    async def go() -> None:
        await seq.handle(rec(0, partition=0), handle)
        await seq.handle(rec(0, partition=1), handle)
        await seq.handle(rec(1, partition=1), handle)
        seq.forget([(TOPIC, 1)])
        assert seq.expected(TOPIC, 0) == 1
        assert seq.expected(TOPIC, 1) is None
        reader.committed = 2  # the new owner's view after the rebalance
        await seq.handle(rec(1, partition=1), handle)  # handled before: committed is 2
        await seq.handle(rec(2, partition=1), handle)

    asyncio.run(go())
    assert handled == [(0, 0), (1, 0), (1, 1), (1, 2)]


def test_the_metric_counts_redelivered_and_refetched_records() -> None:
    registry = CollectorRegistry()
    run([0, 3, 1, 2, 4], FakeReader(range(0, 5), committed=0), stream_metrics(registry))

    def value(outcome: str) -> float | None:
        return registry.get_sample_value(
            "consent_source_records_total", {"stage": "events", "outcome": outcome}
        )

    assert value("refetched") == 2
    assert value("redelivered") == 2


def test_positions_in_the_table_keep_a_restart_from_applying_records_again() -> None:
    """Committed offset 2, but the table (recovered from its changelog) says the state
    already reflects records up to 4: those are skipped, not applied a second time."""
    table: dict[bytes, bytes] = {}
    first = SourceSequencer(
        "ledger", FakeReader(range(10), 0), stream_metrics(CollectorRegistry()), positions=table
    )
    handled: list[int] = []

    async def handle(r: Inbound) -> None:
        handled.append(r.offset)

    async def go(seq: SourceSequencer, offsets: Iterable[int]) -> None:
        for o in offsets:
            await seq.handle(rec(o), handle)

    asyncio.run(go(first, range(5)))
    assert table == {b"\x00next-offset:ns.consent.events.v1:0": b"5"}
    restarted = SourceSequencer(
        "ledger",
        FakeReader(range(10), committed=2),
        stream_metrics(CollectorRegistry()),
        positions=table,
    )
    asyncio.run(go(restarted, range(2, 8)))
    assert handled == [0, 1, 2, 3, 4, 5, 6, 7]
    assert table[b"\x00next-offset:ns.consent.events.v1:0"] == b"8"

