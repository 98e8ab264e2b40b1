"""The thread that polls librdkafka for ``streams.faust_glue.record_reader``.

librdkafka's ``poll`` blocks, and nothing in confluent-kafka wakes an event loop when
records arrive, so this thread polls and hands each batch over (``on_arrival``). It is
also the only caller of ``incremental_assign``/``incremental_unassign`` and of
``pause``/``resume``: changes asked for by the loop (``change``) are applied between two
polls, in order, and every batch carries the number of the last change applied before its
poll began. librdkafka drops what it had fetched for a partition when it is unassigned, so
a batch whose number is at least a partition's last change holds only records fetched from
that change's offset. A paused partition keeps its place: resumed, librdkafka fetches it
from after the last record polled. librdkafka keeps a partition paused through an
unassignment and a new assignment, so the thread resumes a partition it paused before it
unassigns it.

The loop never calls into the consumer while the thread runs: librdkafka calls made from
the loop while this thread polled (a cached watermark read) hung the worker's loop. The
thread reads each batch's high watermarks itself and hands them over with the batch.

What the loop holds (arrived, not yet handed to Faust) is bounded: at ``BUFFER_RECORDS``
records or ``BUFFER_BYTES`` the thread stops polling until the loop ``release``s some, so
a backlog stays in librdkafka's own bounded prefetch (``queued.max.messages.kbytes``),
not in Python objects.

A failure of the consumer (a fatal error, an assignment refused) is kept and raised on
the loop by ``raise_failure``; errors librdkafka retries by itself are logged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from schemas.errors import FetchError

__all__ = ["Arrival", "Change", "FetchThread"]

log = logging.getLogger(__name__)

POLL_S: Final = 0.05
"""How long one poll waits for a record; also the longest a change waits to be applied."""
METADATA_TIMEOUT_S: Final = 5.0
"""The longest the thread waits for a new topic's metadata (it polls nothing meanwhile)."""
BATCH_RECORDS: Final = 500
BUFFER_RECORDS: Final = 20_000
"""With 2,000 a no-op agent drained 3,600-4,100 records/s, with 20,000 10,800 (aiokafka's
fetcher: 16,000): the bound sets how much the loop gets per fetch call on a backlog."""
BUFFER_BYTES: Final = 8 << 20

TP = tuple[str, int]


class Arrival(NamedTuple):
    """One poll's records, with the number of the last change applied before the poll and
    the high watermark of each partition in it (None when librdkafka has none yet)."""

    applied: int
    messages: list[Any]
    highwaters: dict[TP, int | None]


class Change(NamedTuple):
    """What the loop asks of the consumer, applied in this order."""

    number: int
    unassign: list[TP]
    assign: list[tuple[TP, int]]
    pause: list[TP]
    resume: list[TP]


class FetchThread:
    """Polls a librdkafka consumer on a thread of its own (module docstring)."""

    def __init__(self, consumer_factory: Callable[[], Any], name: str = "record-fetch") -> None:
        self._factory, self._name = consumer_factory, name
        self._consumer: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._changes: queue.SimpleQueue[Change] = queue.SimpleQueue()
        self._paused: set[TP] = set()  # thread side
        self._known_topics: set[str] = set()  # thread side: metadata asked for
        self._last_change = 0  # loop side: numbers handed out
        self._applied = 0  # thread side: the last change applied
        self._arrived: deque[Arrival] = deque()
        self._failure: BaseException | None = None
        self._room = threading.Condition()
        self._held_records = 0
        self._held_bytes = 0
        self.on_arrival: Callable[[], None] = lambda: None

    def start(self) -> None:
        self._consumer = self._factory()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._room:
            self._room.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def change(
        self,
        unassign: Iterable[TP] = (),
        assign: Iterable[tuple[TP, int]] = (),
        pause: Iterable[TP] = (),
        resume: Iterable[TP] = (),
    ) -> int:
        """Ask for partitions to be unassigned, then assigned at offsets, then paused or
        resumed; returns the change's number (loop side)."""
        self._last_change += 1
        change = Change(self._last_change, list(unassign), list(assign), list(pause), list(resume))
        self._changes.put(change)
        return self._last_change

    def take(self) -> list[Arrival]:
        """The batches that arrived since the last call."""
        arrived = self._arrived
        return [arrived.popleft() for _ in range(len(arrived))]

    def release(self, records: int, nbytes: int) -> None:
        """The loop no longer holds ``records`` arrived records of ``nbytes`` bytes (handed
        over or dropped)."""
        with self._room:
            self._held_records -= records
            self._held_bytes -= nbytes
            self._room.notify()

    def full(self) -> bool:
        """Whether the loop holds as much as the bound allows (the thread waits)."""
        return self._held_records >= BUFFER_RECORDS or self._held_bytes >= BUFFER_BYTES

    def _wait_for_room(self) -> bool:
        """True once the loop holds less than the bound; False after ``POLL_S`` (changes
        are applied in between)."""
        with self._room:
            if self.full():
                self._room.wait(POLL_S)
            return not self.full()

    def _hold(self, messages: list[Any]) -> None:
        with self._room:
            self._held_records += len(messages)
            self._held_bytes += sum(map(len, messages))

    def _highwaters(self, messages: list[Any]) -> dict[TP, int | None]:
        """Each partition's high watermark, as librdkafka last saw it (no request)."""
        highwaters: dict[TP, int | None] = {}
        for message in messages:
            tp = (message.topic(), message.partition())
            if tp not in highwaters:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
                highwaters[tp] = high if high >= 0 else None
        return highwaters

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise FetchError(f"record fetching failed: {self._failure}") from self._failure

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._apply_changes()
                if not self._wait_for_room():
                    continue
                messages = self._poll()
                if messages:
                    self._hold(messages)
                    self._arrived.append(
                        Arrival(self._applied, messages, self._highwaters(messages))
                    )
                    self.on_arrival()
        except BaseException as exc:  # kept for the loop, which raises it
            log.error("record fetching stopped: %r", exc)
            self._failure = exc
            self.on_arrival()

    def _apply_changes(self) -> None:
        while True:
            try:
                change = self._changes.get_nowait()
            except queue.Empty:
                return
            self._apply(change)
            self._applied = change.number

    def _apply(self, change: Change) -> None:
        consumer, paused = self._consumer, self._paused
        if change.unassign:
            if was_paused := [tp for tp in change.unassign if tp in paused]:
                consumer.resume([TopicPartition(*tp) for tp in was_paused])
                paused.difference_update(was_paused)
            consumer.incremental_unassign([TopicPartition(*tp) for tp in change.unassign])
        if change.assign:
            consumer.incremental_assign(
                [TopicPartition(topic, p, offset) for (topic, p), offset in change.assign]
            )
            self._learn_leaders({topic for (topic, _), _ in change.assign})
        if change.pause:
            consumer.pause([TopicPartition(*tp) for tp in change.pause])
            paused.update(change.pause)
        if change.resume:
            consumer.resume([TopicPartition(*tp) for tp in change.resume])
            paused.difference_update(change.resume)

    def _learn_leaders(self, topics: set[str]) -> None:
        """Ask for the cluster's metadata when topics are assigned for the first time, so
        that their partitions are fetched now: left to itself, librdkafka looks up the
        leaders of a new topic on its 1 s topic scan, and a restarted worker waited that
        long twice (the changelogs, then the source topics). One request for all topics:
        the broker answers it only after the fetch in flight on the same connection (up to
        ``fetch.wait.max.ms``). A failure is logged; the scan remains."""
        if not topics <= self._known_topics:
            try:
                metadata = self._consumer.list_topics(timeout=METADATA_TIMEOUT_S)
            except KafkaException as exc:
                log.warning(
                    "metadata of %s: %s (their leaders come with librdkafka's next scan)",
                    sorted(topics - self._known_topics),
                    exc,
                )
            else:
                self._known_topics.update(metadata.topics)

    def _poll(self) -> list[Any]:
        first = self._consumer.poll(POLL_S)
        if first is None:
            return []
        messages = [first, *self._consumer.consume(BATCH_RECORDS - 1, 0)]
        if any(message.error() is not None for message in messages):
            messages = [m for m in messages if not self._is_error(m)]
        return messages

    def _is_error(self, message: Any) -> bool:
        error: KafkaError | None = message.error()
        if error is None:
            return False
        if error.fatal():
            raise KafkaException(error)
        log.warning("fetching %s[%s]: %s", message.topic(), message.partition(), error)
        return True
