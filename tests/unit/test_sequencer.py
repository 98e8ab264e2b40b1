"""The sequencer turns each batch the stream delivers into the records to handle: every
record of a partition once, in offset order, whatever order (and how often) the stream
delivers them. No Kafka: a fake reader."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from streams.inbound import Inbound
from streams.metrics import StreamMetrics, stream_metrics
from streams.sequencer import Plan, SourceSequencer, Step, next_step, position_key

TOPIC = "ns.consent.events.v1"

Filled = tuple[str, int, int, int]


def rec(offset: int, partition: int = 0, topic: str = TOPIC) -> Inbound:
    return Inbound(f"k{offset}".encode(), f"v{offset}".encode(), {}, topic, partition, offset)


def offsets(plan: Plan) -> list[tuple[int, int]]:
    """(partition, offset) of the plan's records, in order."""
    return [(r.partition, r.offset) for r in plan.records]


class FakeReader:
    """Every partition's log as a list; ``start_offset`` is the group's committed offset."""

    def __init__(self, log: Iterable[int], committed: int | None = None) -> None:
        self.log = sorted(log)
        self.committed = committed
        self.reads: list[tuple[int, int]] = []

    async def start_offset(self, topic: str, partition: int) -> int:
        return self.committed if self.committed is not None else self.log[0]

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Inbound]:
        self.reads.append((start, end))
        return [rec(o, partition, topic) for o in self.log if start <= o < end]


class Agent:
    """An agent's loop over a sequencer: plan each batch, handle it, then ``done``."""

    def __init__(
        self,
        reader: FakeReader,
        metrics: StreamMetrics | None = None,
        positions: dict[bytes, bytes] | None = None,
    ) -> None:
        self.filled: list[Filled] = []
        self.handled: list[int] = []
        self.positions = positions
        self.seq = SourceSequencer(
            "events",
            reader,
            metrics or stream_metrics(CollectorRegistry()),
            lambda *a: self.filled.append(a),
            positions,
        )

    def plan(self, *offsets: int) -> Plan:
        return asyncio.run(self.seq.plan([rec(o) for o in offsets]))

    def run(self, batches: Iterable[Sequence[int]]) -> list[int]:
        """Each batch planned, handled (positions written to the table) and done."""
        for batch in batches:
            plan = self.plan(*batch)
            self.handled += [r.offset for r in plan.records]
            if self.positions is not None:
                self.positions.update({k: v for k, (_, v) in plan.positions.items()})
            self.seq.done(plan)
        return self.handled


def one_by_one(offsets: Iterable[int]) -> list[list[int]]:
    return [[o] for o in offsets]


def in_batches(offsets: Sequence[int], size: int) -> list[Sequence[int]]:
    return [offsets[i : i + size] for i in range(0, len(offsets), size)]


def source_records(registry: CollectorRegistry, outcome: str) -> float | None:
    return registry.get_sample_value(
        "consent_source_records_total", {"stage": "events", "outcome": outcome}
    )


# ---- per record -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "offset", "step"),
    [(5, 4, Step.SKIP), (5, 5, Step.HANDLE), (5, 6, Step.FILL), (0, 0, Step.HANDLE)],
)
def test_next_step(expected: int, offset: int, step: Step) -> None:
    assert next_step(expected, offset) is step


@pytest.mark.parametrize("size", [1, 2, 5])
def test_in_order_delivery_is_handled_as_is(size: int) -> None:
    reader = FakeReader(range(0, 8), committed=3)
    agent = Agent(reader)

    assert agent.run(in_batches(range(3, 8), size)) == [3, 4, 5, 6, 7]
    assert agent.filled == [] and reader.reads == []


def test_a_hole_at_the_start_is_read_directly_and_handled_first() -> None:
    """Faust's restart race: committed 759, the stream starts at 787 (issue 596)."""
    reader = FakeReader(range(700, 800), committed=759)
    agent = Agent(reader)

    assert agent.run([[787, 788, 789]]) == list(range(759, 790))
    assert reader.reads == [(759, 787)]
    assert agent.filled == [(TOPIC, 0, 759, 787)]


@pytest.mark.parametrize("size", [1, 10, 500])
def test_late_and_repeated_records_are_skipped_and_order_is_kept(size: int) -> None:
    """The failure seen with redelivery alone: 138 and 139 missing from the queued copy,
    then every record again after the seek back. Each is handled once, in order."""
    registry = CollectorRegistry()
    reader = FakeReader(range(0, 200), 99)
    first_pass = [o for o in range(99, 200) if o not in (138, 139)]

    handled = Agent(reader, stream_metrics(registry)).run(
        in_batches([*first_pass, *range(99, 200)], size)
    )

    assert handled == list(range(99, 200))
    assert reader.reads == [(138, 140)]
    assert source_records(registry, "redelivered") == 101


def test_missing_offsets_without_a_record_are_not_invented() -> None:
    """Transaction markers occupy offsets without records: nothing to handle there."""
    reader = FakeReader([0, 1, 2, 5, 6], committed=0)

    assert Agent(reader).run([[0, 1, 2, 5, 6]]) == [0, 1, 2, 5, 6]
    assert reader.reads == [(3, 5)]


def test_partitions_are_sequenced_independently_and_forgotten_on_revocation() -> None:
    reader = FakeReader(range(0, 10), committed=0)
    agent = Agent(reader)
    seq = agent.seq

    async def go() -> list[tuple[int, int]]:
        handled: list[tuple[int, int]] = []
        for batch in ([rec(0, 0), rec(0, 1)], [rec(1, 1)]):
            plan = await seq.plan(batch)
            handled += offsets(plan)
            seq.done(plan)
        seq.forget([(TOPIC, 1)])
        assert seq.expected(TOPIC, 0) == 1
        assert seq.expected(TOPIC, 1) is None
        reader.committed = 2  # the new owner's view after the rebalance
        plan = await seq.plan([rec(1, 1), rec(2, 1)])  # 1 handled before: committed is 2
        seq.done(plan)
        return handled + offsets(plan)

    assert asyncio.run(go()) == [(0, 0), (1, 0), (1, 1), (1, 2)]


def test_the_metric_counts_redelivered_and_refetched_records() -> None:
    registry = CollectorRegistry()

    Agent(FakeReader(range(0, 5), committed=0), stream_metrics(registry)).run(
        one_by_one([0, 3, 1, 2, 4])
    )

    assert source_records(registry, "refetched") == 2
    assert source_records(registry, "redelivered") == 2


def test_positions_in_the_table_keep_a_restart_from_applying_records_again() -> None:
    """Committed offset 2, but the table (recovered from its changelog) says the state
    already reflects records up to 4: those are skipped, not applied a second time."""
    table: dict[bytes, bytes] = {}
    first = Agent(FakeReader(range(10), 0), positions=table)

    assert first.run(in_batches(range(5), 2)) == [0, 1, 2, 3, 4]
    assert table == {b"\x00next-offset:ns.consent.events.v1:0": b"5"}

    restarted = Agent(FakeReader(range(10), committed=2), positions=table)
    assert restarted.run(in_batches(range(2, 8), 3)) == [5, 6, 7]
    assert table[b"\x00next-offset:ns.consent.events.v1:0"] == b"8"


# ---- plans over batches ---------------------------------------------------------------


def test_a_plan_drops_redeliveries_and_fills_holes_per_partition() -> None:
    registry = CollectorRegistry()
    reader = FakeReader(range(10), committed=0)
    agent = Agent(reader, stream_metrics(registry))
    agent.run([[0, 1]])
    seq = agent.seq

    plan = asyncio.run(seq.plan([rec(1), rec(0, 1), rec(4), rec(1, 1), rec(4), rec(5)]))

    assert offsets(plan) == [(1, 0), (0, 2), (0, 3), (0, 4), (1, 1), (0, 5)]
    assert plan.redelivered == 2  # 1 (handled in the batch before) and 4 (twice in this one)
    assert plan.next == {(TOPIC, 0): 6, (TOPIC, 1): 2}
    assert plan.filled == [(TOPIC, 0, 2, 4)]
    assert reader.reads == [(2, 4)]
    # nothing moves before the batch is done
    assert seq.expected(TOPIC, 0) == 2 and seq.expected(TOPIC, 1) is None
    assert agent.filled == [] and source_records(registry, "redelivered") is None

    seq.done(plan)

    assert seq.expected(TOPIC, 0) == 6 and seq.expected(TOPIC, 1) == 2
    assert agent.filled == [(TOPIC, 0, 2, 4)]
    assert source_records(registry, "redelivered") == 2


def test_a_batch_not_done_is_read_again_by_the_next_plan() -> None:
    """A failed batch: ``done`` is not called, so its records are missing for the next."""
    reader = FakeReader(range(10), committed=2)
    agent = Agent(reader)

    failed = agent.plan(4)
    retried = agent.plan(5)

    assert [r.offset for r in failed.records] == [2, 3, 4]
    assert [r.offset for r in retried.records] == [2, 3, 4, 5]
    assert reader.reads == [(2, 4), (2, 5)]
    assert agent.seq.expected(TOPIC, 0) is None and agent.filled == []


def test_plan_positions_are_the_next_offsets_under_position_keys() -> None:
    agent = Agent(FakeReader(range(10), committed=3))

    plan = asyncio.run(agent.seq.plan([rec(3), rec(4), rec(3, 2)]))

    assert plan.positions == {
        position_key((TOPIC, 0)): (0, b"5"),
        position_key((TOPIC, 2)): (2, b"4"),
    }
    assert position_key((TOPIC, 2)) == b"\x00next-offset:ns.consent.events.v1:2"


def test_a_plan_follows_one_not_done_yet() -> None:
    """The events agent decides a batch while the previous one's last wave is out: the
    new plan starts where the previous plan ends, then both are done in order."""
    reader = FakeReader(range(10), committed=0)
    agent = Agent(reader)

    first = agent.plan(0, 1, 2)
    second = asyncio.run(agent.seq.plan([rec(3), rec(4)], first))

    assert [r.offset for r in second.records] == [3, 4] and reader.reads == []
    agent.seq.done(first)
    agent.seq.done(second)
    assert agent.seq.expected(TOPIC, 0) == 5


def test_records_taken_but_not_done_are_read_again_when_the_agent_starts_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.sequencer.RETRY_WAIT_S", 0)
    registry = CollectorRegistry()
    reader = FakeReader(range(10), committed=0)
    agent = Agent(reader, stream_metrics(registry))
    agent.run([[0, 1, 2]])
    failed = agent.plan(3, 4)  # handled, but its effects failed: never done
    assert offsets(failed) == [(0, 3), (0, 4)]

    again = asyncio.run(agent.seq.unfinished())

    assert offsets(again) == [(0, 3), (0, 4)] and reader.reads == [(3, 5)]
    agent.seq.done(again)
    assert agent.filled == [(TOPIC, 0, 3, 5)]  # acknowledged to the consumer
    assert agent.seq.expected(TOPIC, 0) == 5
    assert asyncio.run(agent.seq.unfinished()).records == []  # nothing left
    refetched = {"stage": "events", "outcome": "refetched"}
    assert registry.get_sample_value("consent_source_records_total", refetched) == 2
    assert offsets(agent.plan(3, 4, 5)) == [(0, 5)]  # the stream's copies are skipped


def test_nothing_is_unfinished_when_every_plan_is_done_or_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.sequencer.RETRY_WAIT_S", 0)
    reader = FakeReader(range(10), committed=0)
    agent = Agent(reader)
    agent.run([[0, 1], [2]])
    assert asyncio.run(agent.seq.unfinished()).records == []
    agent.plan(3)
    agent.seq.forget([(TOPIC, 0)])  # revoked: another worker handles the partition
    assert asyncio.run(agent.seq.unfinished()).records == [] and reader.reads == []
