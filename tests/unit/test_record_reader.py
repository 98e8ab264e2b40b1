"""The librdkafka record reader kept in step with aiokafka's positions (no Kafka)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition
from confluent_kafka import TIMESTAMP_CREATE_TIME
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from schemas.errors import FetchError
from streams.faust_glue import record_reader
from streams.faust_glue.fetch_thread import Arrival
from streams.faust_glue.record_reader import (
    RecordReader,
    assigned_states,
    faust_messages,
    positions_only,
)

EVENTS0, EVENTS1 = ("events", 0), ("events", 1)


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test run in a new event loop, with its fixtures."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


class Message:
    def __init__(self, tp: tuple[str, int], offset: int, value: bytes = b"v") -> None:
        self._tp, self._offset, self._value = tp, offset, value

    def topic(self) -> str:
        return self._tp[0]

    def partition(self) -> int:
        return self._tp[1]

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, 1_700_000_000_000 + self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None

    def error(self) -> None:
        return None


class State:
    """aiokafka's TopicPartitionState, as far as the reader uses it."""

    def __init__(self, position: int | None) -> None:
        self.position = position
        self.timestamp: float | None = None
        self.highwater: int | None = None
        self.paused = False

    @property
    def has_valid_position(self) -> bool:
        return self.position is not None

    def consumed_to(self, position: int) -> None:
        self.position = position


class Thread:
    """The fetch thread's interface, driven by the test."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, list[Any], list[Any]]] = []
        self.arrived: list[Arrival] = []
        self.failure: BaseException | None = None
        self.on_arrival: Any = None
        self.held = 0
        self.bound = 1_000
        self.pauses: list[tuple[int, list[Any], list[Any]]] = []

    def full(self) -> bool:
        return self.held >= self.bound

    def release(self, records: int, nbytes: int) -> None:
        self.held -= records

    def change(
        self, unassign: Any = (), assign: Any = (), pause: Any = (), resume: Any = ()
    ) -> int:
        if pause or resume:
            self.pauses.append((len(self.changes) + 1, list(pause), list(resume)))
            self.changes.append((len(self.changes) + 1, [], []))
        else:
            self.changes.append((len(self.changes) + 1, list(unassign), list(assign)))
        return len(self.changes)

    def take(self) -> list[Arrival]:
        arrived, self.arrived = self.arrived, []
        return arrived

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise FetchError("record fetching failed") from self.failure

    def deliver(self, applied: int, *messages: Message, high: int | None = None) -> None:
        highwaters = {(m.topic(), m.partition()): high for m in messages}
        self.held += len(messages)
        self.arrived.append(Arrival(applied, list(messages), highwaters))
        if self.on_arrival is not None:
            self.on_arrival()


def reader_with(states: dict[Any, State]) -> tuple[RecordReader, Thread, Any]:
    thread = Thread()
    reader = RecordReader(thread, asyncio.get_running_loop())  # type: ignore[arg-type]

    async def fetch(active: Any = None, timeout: float = 0.0, limit: int | None = None) -> Any:
        asked = list(states) if active is None else active
        got = await reader.fetched(lambda: states, asked, timeout, limit)
        return {tp: [m.offset() for m in messages] for tp, messages in got.items()}

    return reader, thread, fetch


@in_loop
async def test_assigns_at_aiokafkas_positions_and_moves_them() -> None:
    states = {EVENTS0: State(5), EVENTS1: State(None)}
    _reader, thread, fetch = reader_with(states)
    assert await fetch() == {}
    assert thread.changes == [(1, [], [(EVENTS0, 5)])]  # no position yet: not assigned
    assert states[EVENTS0].timestamp is not None  # Faust's "fetch sent" check reads it
    thread.deliver(1, Message(EVENTS0, 5), Message(EVENTS0, 6), high=9)
    assert await fetch() == {EVENTS0: [5, 6]}
    assert states[EVENTS0].position == 7
    assert states[EVENTS0].highwater == 9
    states[EVENTS1].position = 0
    assert await fetch() == {}
    assert thread.changes[-1] == (2, [], [(EVENTS1, 0)])


def test_a_message_becomes_what_fausts_aiokafka_driver_makes_of_a_record() -> None:
    app = SimpleNamespace(consumer_generation_id=3)
    tp = TP("events", 0)
    message = faust_messages(app)(tp, Message(EVENTS0, 7, b"body"))
    assert (message.topic, message.partition, message.offset, message.tp) == ("events", 0, 7, tp)
    assert (message.key, message.value, message.headers) == (b"k", b"body", [])
    assert (message.timestamp, message.timestamp_type) == (1_700_000_000.007, 0)
    assert (message.serialized_key_size, message.serialized_value_size) == (1, 4)
    assert message.checksum is None
    assert message.generation_id == 3
    assert isinstance(message, ConsumerMessage)
    assert not message.tracked  # tracked (and so committed) once an agent takes it


@in_loop
async def test_a_seek_drops_what_was_fetched_and_fetches_from_the_new_position() -> None:
    states = {EVENTS0: State(10)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, Message(EVENTS0, 10), Message(EVENTS0, 11))
    assert await fetch(limit=1) == {EVENTS0: [10]}
    states[EVENTS0].position = 3  # Faust seeks back to the committed offset
    thread.deliver(1, Message(EVENTS0, 12))  # polled before the change was applied: stale
    assert await fetch() == {}
    assert thread.changes[-1] == (2, [EVENTS0], [(EVENTS0, 3)])
    thread.deliver(2, Message(EVENTS0, 3), Message(EVENTS0, 4))
    assert await fetch() == {EVENTS0: [3, 4]}
    assert states[EVENTS0].position == 5


@in_loop
async def test_stale_and_repeated_records_are_not_handed_over() -> None:
    states = {EVENTS0: State(0)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(0, Message(EVENTS0, 0))  # a poll from before the assignment
    thread.deliver(1, Message(EVENTS0, 0), Message(EVENTS0, 1), Message(EVENTS0, 1))
    thread.deliver(1, Message(EVENTS0, 4))  # a gap (compaction, a marker) is accepted
    assert await fetch() == {EVENTS0: [0, 1, 4]}
    assert states[EVENTS0].position == 5
    assert thread.held == 0  # the dropped ones are released too


@in_loop
async def test_a_partition_held_back_by_flow_control_keeps_what_was_fetched() -> None:
    states = {EVENTS0: State(0), EVENTS1: State(0)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, Message(EVENTS0, 0), Message(EVENTS0, 1), Message(EVENTS1, 0))
    assert await fetch(active=[EVENTS1]) == {EVENTS1: [0]}  # events-0's buffer is full
    thread.deliver(1, Message(EVENTS0, 2))  # still assigned: still fetched
    assert await fetch(active=[EVENTS1]) == {}
    assert await fetch(active=[EVENTS0, EVENTS1]) == {EVENTS0: [0, 1, 2]}
    assert len(thread.changes) == 1  # never unassigned
    assert states[EVENTS0].position == 3
    assert thread.held == 0


@in_loop
async def test_records_held_back_from_a_stalled_agent_are_dropped_when_they_fill_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(record_reader, "STALLED_S", 0.05)
    states = {EVENTS0: State(0), EVENTS1: State(0)}
    _reader, thread, fetch = reader_with(states)
    thread.bound = 2
    await fetch()
    thread.deliver(1, Message(EVENTS0, 0), Message(EVENTS0, 1))  # the thread waits now
    assert await fetch(active=[EVENTS1]) == {}  # held back a moment: kept
    assert len(thread.changes) == 1
    await asyncio.sleep(0.06)
    assert await fetch(active=[EVENTS1]) == {}  # held back too long: make room
    assert thread.changes[-1] == (2, [EVENTS0], [])
    assert thread.held == 0
    thread.deliver(1, Message(EVENTS0, 2))  # polled before the unassignment: dropped
    thread.deliver(2, Message(EVENTS1, 0))
    assert await fetch(active=[EVENTS0, EVENTS1]) == {EVENTS1: [0]}
    assert thread.changes[-1] == (3, [], [(EVENTS0, 0)])  # fetched again from its position
    thread.deliver(3, Message(EVENTS0, 0))
    assert await fetch() == {EVENTS0: [0]}


@in_loop
async def test_a_partition_aiokafka_pauses_is_dropped_and_fetched_again_when_resumed() -> None:
    states = {EVENTS0: State(0), EVENTS1: State(0)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, Message(EVENTS0, 0), Message(EVENTS1, 0))
    states[EVENTS0].paused = True  # Faust pauses it (recovery) in aiokafka too
    assert await fetch(active=[EVENTS1]) == {EVENTS1: [0]}
    assert thread.changes[-1] == (2, [EVENTS0], [])
    assert thread.held == 0
    states[EVENTS0].paused = False
    assert await fetch() == {}
    assert thread.changes[-1] == (3, [], [(EVENTS0, 0)])


@in_loop
async def test_a_held_back_partition_moved_by_a_seek_is_dropped() -> None:
    states = {EVENTS0: State(4)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, Message(EVENTS0, 4), Message(EVENTS0, 5))
    states[EVENTS0].position = 2  # Faust seeks back while the partition is held back
    assert await fetch(active=[]) == {}
    assert thread.changes[-1] == (2, [EVENTS0], [])
    assert thread.held == 0
    assert await fetch() == {}
    assert thread.changes[-1] == (3, [], [(EVENTS0, 2)])


@in_loop
async def test_a_partition_holding_its_share_is_paused_in_librdkafka_until_it_is_half_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(record_reader, "PARTITION_RECORDS", 4)
    states = {EVENTS0: State(0), EVENTS1: State(0)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, *(Message(EVENTS0, i) for i in range(3)), Message(EVENTS1, 0))
    assert await fetch(active=[EVENTS1]) == {EVENTS1: [0]}
    assert thread.pauses == []
    thread.deliver(1, Message(EVENTS0, 3), Message(EVENTS0, 4))  # polled before the pause
    assert await fetch(active=[EVENTS1]) == {}
    assert thread.pauses == [(2, [EVENTS0], [])]  # once
    assert await fetch(active=[EVENTS0], limit=2) == {EVENTS0: [0, 1]}
    assert len(thread.pauses) == 1  # 3 left: more than half
    assert await fetch(active=[EVENTS0], limit=1) == {EVENTS0: [2]}
    assert thread.pauses[-1] == (3, [], [EVENTS0])
    thread.deliver(3, Message(EVENTS0, 5))  # fetched on from where the thread stopped
    assert await fetch() == {EVENTS0: [3, 4, 5]}
    assert states[EVENTS0].position == 6
    assert len(thread.changes) == 3  # never unassigned


@in_loop
async def test_a_partition_aiokafka_no_longer_holds_is_forgotten() -> None:
    states = {EVENTS0: State(0), EVENTS1: State(0)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, Message(EVENTS1, 0))
    del states[EVENTS1]  # revoked
    assert await fetch() == {}
    assert thread.changes[-1] == (2, [EVENTS1], [])
    states[EVENTS1] = State(0)  # assigned again, from its committed offset
    assert await fetch() == {}
    assert thread.changes[-1] == (3, [], [(EVENTS1, 0)])


@in_loop
async def test_max_records_is_shared_between_partitions() -> None:
    states = {EVENTS0: State(0), EVENTS1: State(0)}
    _reader, thread, fetch = reader_with(states)
    await fetch()
    thread.deliver(1, *(Message(EVENTS0, i) for i in range(3)), Message(EVENTS1, 0))
    first = await fetch(limit=2)
    assert sum(map(len, first.values())) == 2
    rest = await fetch()
    assert sorted(first.get(EVENTS0, []) + rest.get(EVENTS0, [])) == [0, 1, 2]
    assert first.get(EVENTS1, []) + rest.get(EVENTS1, []) == [0]


@in_loop
async def test_waits_for_records_until_the_timeout() -> None:
    states = {EVENTS0: State(0)}
    _reader, thread, fetch = reader_with(states)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await fetch(timeout=0.05) == {}
    assert loop.time() - started >= 0.05
    loop.call_later(0.02, thread.deliver, 1, Message(EVENTS0, 0))
    assert await fetch(timeout=5) == {EVENTS0: [0]}
    assert loop.time() - started < 1


@in_loop
async def test_a_failed_fetch_thread_fails_the_fetch() -> None:
    states = {EVENTS0: State(0)}
    _reader, thread, fetch = reader_with(states)
    thread.failure = RuntimeError("fatal")
    with pytest.raises(FetchError):
        await fetch()


def test_aiokafkas_fetcher_keeps_resetting_positions_but_sends_no_fetch() -> None:
    class Fetcher:
        def _get_actions_per_node(self, assignment: Any) -> Any:
            return [(1, "fetch request")], {1: ["events-0"]}, 0.2, False, ["resume"]

    fetcher = Fetcher()
    positions_only(fetcher)
    assert fetcher._get_actions_per_node(None) == ([], {1: ["events-0"]}, 0.2, False, ["resume"])


@in_loop
async def test_assigned_states_are_aiokafkas_own_states_of_the_assignment_now() -> None:
    subscription = SubscriptionState()
    consumer = SimpleNamespace(_subscription=subscription)
    states = assigned_states(consumer)
    assert states() == {}  # nothing assigned yet

    subscription.assign_from_user({TopicPartition(*EVENTS0)})
    assignment = subscription.subscription.assignment
    assert states()[EVENTS0] is assignment.state_value(EVENTS0)  # Faust's TP finds it
    assert states().get(EVENTS1) is None

    subscription.assign_from_user({TopicPartition(*EVENTS1)})  # a new assignment
    assert set(states()) == {EVENTS1}


@in_loop
async def test_a_partition_faust_resumes_while_a_call_waits_is_fetched_in_that_call() -> None:
    """Faust resumes the source partitions after a rebalance's recovery in the set it
    passed (in place) and the consumer wakes the call: their records come now, not after
    the call's timeout (1 s in Faust's fetch loop)."""
    states = {EVENTS0: State(0), EVENTS1: State(4)}
    reader, thread, _fetch = reader_with(states)
    active = {EVENTS0}  # Faust's set of active partitions, changed in place
    call = asyncio.ensure_future(reader.fetched(lambda: states, active, 30.0, None))
    await asyncio.sleep(0.01)
    assert thread.changes == [(1, [], [(EVENTS0, 0)])]
    active.add(EVENTS1)
    reader.wake()
    await asyncio.sleep(0.01)
    assert thread.changes[-1] == (2, [], [(EVENTS1, 4)])
    thread.deliver(2, Message(EVENTS1, 4))
    got = await asyncio.wait_for(call, 1.0)
    assert {tp: [m.offset() for m in ms] for tp, ms in got.items()} == {EVENTS1: [4]}
