"""librdkafka fetches the records of the partitions Faust's aiokafka consumer holds.

aiokafka costs 330-390 us of Python per fetch cycle (request built, response parsed,
per partition), and a worker fetch names every partition it holds (events, ledger,
twelve partner-acknowledgement partitions): at 1,000 paced events/s the worker made ~300
fetches a second, and aiokafka's fetcher and protocol took a quarter of its CPU. A
librdkafka consumer reading the same partitions costs 73-108 us per record, threads
included (docs/benchmarks.md).

aiokafka keeps everything else: group membership, assignment and rebalances, committed
offsets, seeks, positions, its offset resets. It only stops sending fetch requests
(``positions_only``). ``RecordReader`` does the fetching and stays in step with it:

- aiokafka's subscription state is the authority. On every fetch call the reader compares,
  for each partition Faust asks for, aiokafka's position with the offset it would hand over
  next; a partition newly asked for, or moved by a seek, is (re)assigned in librdkafka at
  aiokafka's position, and whatever was fetched for it before is dropped.
- Faust gets librdkafka's messages and makes its own from them (``faust_messages``, in
  place of its aiokafka driver's ``_to_message``).
- Handing records over moves aiokafka's position (``consumed_to``), as aiokafka's own
  fetcher does, and sets the partition's highwater and fetch time, which Faust's lag
  metrics and its slow-processing checks read.
- A partition Faust holds back because its agent's buffer is full (flow control) stays
  assigned, and what was fetched for it is kept for when it is asked for again, as
  aiokafka's fetcher keeps it: dropping it made a no-op agent fetch four records for each
  three it took (docs/benchmarks.md). While records are held back, a fetch call waits at
  most ``HELD_BACK_WAIT_S``, so that Faust asks again as soon as the agent has room.
- What the loop holds is bounded: ``PARTITION_RECORDS`` held for one partition pause it
  in librdkafka (resumed at half), and at ``fetch_thread.BUFFER_RECORDS`` in all, a
  partition not asked for in ``STALLED_S`` is unassigned and its records dropped, so that
  an agent stalled on an outage does not starve the others.
- A partition aiokafka pauses, revokes or moves is unassigned and its records dropped.
  Asked for again, it is assigned again at aiokafka's position.
- librdkafka's ``poll`` blocks, so one thread (``FetchThread``) calls it and hands batches
  to the event loop. Only that thread assigns, unassigns, pauses and resumes, between two
  polls, in the order the loop asked; each batch carries the number of the last change
  applied before its poll, and the records of a partition (re)assigned later than that
  are dropped (librdkafka fetches them again from the new position).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME
from faust.types.tuples import ConsumerMessage

from streams.faust_glue.fetch_thread import FetchThread

__all__ = ["RecordReader", "assigned_states", "faust_messages", "positions_only"]

log = logging.getLogger(__name__)

TP = tuple[str, int]

PARTITION_RECORDS: Final = 4_000
"""A partition holding this many records is paused in librdkafka, and resumed at half."""
STALLED_S: Final = 1.0
"""Records held this long for a partition not asked for may be dropped to make room."""
HELD_BACK_WAIT_S: Final = 0.01
"""The longest a fetch call waits while records are held for partitions not asked for."""
_NONE_ASSIGNED: Final[Mapping[TP, Any]] = MappingProxyType({})
"""aiokafka's partition states while the consumer holds no assignment."""


def faust_messages(app: Any) -> Callable[[TP, Any], ConsumerMessage]:
    """Faust's ``Consumer._to_message`` for the records the reader hands over: a
    librdkafka message becomes the ``ConsumerMessage`` Faust's aiokafka driver makes of
    aiokafka's record (no record object in between). It must be that class: its messages
    are tracked until acknowledged, and a plain ``Message`` is not, so its offsets were
    never committed."""

    def to_message(tp: Any, message: Any) -> ConsumerMessage:  # tp: Faust's TP
        kind, stamp = message.timestamp()
        key, value = message.key(), message.value()
        seconds: Any = stamp / 1000.0 if kind else None  # None as in Faust's driver
        return ConsumerMessage(
            tp[0],
            tp[1],
            message.offset(),
            seconds,
            1 if kind == TIMESTAMP_LOG_APPEND_TIME else 0,
            message.headers() or [],
            key,
            value,
            None,
            -1 if key is None else len(key),
            -1 if value is None else len(value),
            tp,
            generation_id=app.consumer_generation_id,
        )

    return to_message


@dataclass
class _Partition:
    """The reader's view of one partition (event loop only)."""

    next: int
    """The offset to hand over next: aiokafka's position."""
    fetch_from: int
    """Where librdkafka fetches (after the last record kept)."""
    since: int = 0
    """Batches of polls before this change number are stale for this partition."""
    records: deque[Any] = field(default_factory=deque)
    highwater: int | None = None
    asked_at: float = 0.0
    """When Faust last asked for it (``time.monotonic``)."""
    paused: bool = False
    """Paused in librdkafka: it holds ``PARTITION_RECORDS`` records or more."""


def _position(state: Any) -> int | None:
    """aiokafka's position of a partition it holds, unpaused, with a valid position."""
    if state is None or state.paused or not state.has_valid_position:
        return None
    return int(state.position)


def positions_only(fetcher: Any) -> None:
    """aiokafka's fetcher goes on resetting positions but sends no fetch request."""
    actions = fetcher._get_actions_per_node

    def without_fetches(assignment: Any) -> Any:
        _fetches, resets, timeout, invalid_metadata, resumes = actions(assignment)
        return [], resets, timeout, invalid_metadata, resumes

    fetcher._get_actions_per_node = without_fetches


class RecordReader:
    """Records of the partitions Faust asks for, fetched by librdkafka (module docstring)."""

    def __init__(self, thread: FetchThread, loop: asyncio.AbstractEventLoop) -> None:
        self._thread, self._loop = thread, loop
        self._parts: dict[TP, _Partition] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._rotation = 0
        thread.on_arrival = self._arrival_from_thread

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _arrival_from_thread(self) -> None:
        self._loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        """A waiting fetch call looks again (records arrived, or Faust resumed partitions:
        it asks for them in the set it passed, which it changes in place)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def fetched(
        self,
        states: Callable[[], Mapping[TP, Any]],
        active: Iterable[TP],
        timeout: float,  # noqa: ASYNC109 - aiokafka's fetched_records signature
        max_records: int | None,
    ) -> dict[TP, list[Any]]:
        """librdkafka's messages of the ``active`` partitions, from aiokafka's positions;
        waits up to ``timeout`` seconds for some, or ``HELD_BACK_WAIT_S`` while records are held for
        partitions not asked for: flow control asks for them again once their agent has
        room, and only a new call says so. ``states()``: aiokafka's partition states as
        they are now, and ``active`` Faust's set of active partitions as it is now (both
        read again after every wait: Faust resumes partitions in that set, and ``wake``s
        the wait, so that records of partitions resumed after a rebalance's recovery
        come now, not after the call's timeout)."""
        deadline = time.monotonic() + timeout
        asked = active
        while True:
            active = list(asked)
            self._thread.raise_failure()
            self._take_arrived()
            assigned = states()
            self._reconcile(assigned, active)
            drained = self._hand_over(assigned, active, max_records)
            remaining = deadline - time.monotonic()
            if not drained and self._holds_back(active):
                remaining = min(remaining, HELD_BACK_WAIT_S)
                deadline = time.monotonic() + remaining
            if drained or remaining <= 0:
                return drained
            self._waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), remaining)
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    def _holds_back(self, active: list[TP]) -> bool:
        return any(part.records and tp not in active for tp, part in self._parts.items())

    def _reconcile(self, states: Mapping[TP, Any], active: list[TP]) -> None:
        """Assign what is asked for at aiokafka's positions; unassign what aiokafka no
        longer holds, paused or moved; keep what flow control holds back, unless the
        bound is reached and it was not asked for in ``STALLED_S``."""
        parts = self._parts
        assign: list[tuple[TP, int]] = []
        state_of: Callable[[TP], Any] = states.get
        unassign = [tp for tp, part in parts.items() if _position(state_of(tp)) != part.next]
        for tp in unassign:
            self._drop(parts.pop(tp))
        now, now_ms = time.monotonic(), time.time() * 1000
        for tp in active:
            state = state_of(tp)
            if (part := parts.get(tp)) is None:  # else kept above: at a valid position
                position = _position(state)
                if position is None:
                    continue
                parts[tp] = part = _Partition(position, position)
                assign.append((tp, position))
            state.timestamp = now_ms  # Faust's "no fetch sent" check reads it
            part.asked_at = now
        if self._thread.full():
            stalled = [
                tp for tp, part in parts.items() if part.records and now - part.asked_at > STALLED_S
            ]
            for tp in stalled:
                self._drop(parts.pop(tp))
            unassign += stalled
        if assign or unassign:
            change = self._thread.change(unassign, assign)
            for tp, _ in assign:
                parts[tp].since = change

    def _take_arrived(self) -> None:
        """Batches from the thread into each partition's records, without stale ones;
        a partition that now holds ``PARTITION_RECORDS`` is paused."""
        parts = self._parts
        pause: list[TP] = []
        for applied, messages, highwaters in self._thread.take():
            for tp, high in highwaters.items():
                if (part := parts.get(tp)) is not None and high is not None:
                    part.highwater = high
            dropped = dropped_bytes = 0
            for message in messages:
                tp = (message.topic(), message.partition())
                part = parts.get(tp)
                offset = message.offset()
                if part is None or applied < part.since or offset < part.fetch_from:
                    dropped += 1  # fetched before the partition's last change, or again
                    dropped_bytes += len(message)
                    continue
                part.records.append(message)
                part.fetch_from = offset + 1
                if not part.paused and len(part.records) >= PARTITION_RECORDS:
                    part.paused = True
                    pause.append(tp)
            if dropped:
                self._thread.release(dropped, dropped_bytes)
        if pause:
            self._thread.change(pause=pause)

    def _drop(self, part: _Partition) -> None:
        if part.records:
            self._thread.release(len(part.records), sum(map(len, part.records)))
            part.records.clear()

    def _hand_over(
        self, states: Mapping[TP, Any], active: list[TP], max_records: int | None
    ) -> dict[TP, list[Any]]:
        drained: dict[TP, list[Any]] = {}
        resume: list[TP] = []
        budget = max_records or 1 << 30
        self._rotation = (self._rotation + 1) % max(1, len(active))
        for tp in active[self._rotation :] + active[: self._rotation]:
            part = self._parts.get(tp)
            if part is None or not part.records:
                continue
            records = part.records
            if len(records) <= budget:
                taken = list(records)
                records.clear()
            else:
                taken = [records.popleft() for _ in range(budget)]
            self._thread.release(len(taken), sum(map(len, taken)))
            drained[tp] = taken
            part.next = taken[-1].offset() + 1
            state = states[tp]
            state.consumed_to(part.next)
            if part.highwater is not None:
                state.highwater = part.highwater
            if part.paused and len(records) <= PARTITION_RECORDS // 2:
                part.paused = False
                resume.append(tp)
            budget -= len(taken)
            if not budget:
                break
        if resume:
            self._thread.change(resume=resume)
        return drained


def assigned_states(consumer: Any) -> Callable[[], Mapping[TP, Any]]:
    """``() -> {tp: aiokafka's state of it}`` for the partitions assigned now (none while
    unassigned): the reader looks each partition up in one dict per pass (aiokafka's
    ``Assignment.state_value`` is that dict's ``get``)."""
    subscription = consumer._subscription

    def states() -> Mapping[TP, Any]:
        current = subscription.subscription
        assignment = None if current is None else current.assignment
        if assignment is None:
            return _NONE_ASSIGNED
        tp_states: Mapping[TP, Any] = assignment._tp_state
        return tp_states

    return states
