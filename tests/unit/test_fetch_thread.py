"""The thread that polls librdkafka for the record reader, with a fake consumer (no Kafka)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from schemas.errors import FetchError
from streams.faust_glue import fetch_thread
from streams.faust_glue.fetch_thread import FetchThread


class Message:
    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self._offset, self._error = offset, error

    def topic(self) -> str:
        return "events"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> KafkaError | None:
        return self._error

    def __len__(self) -> int:
        return 0


class Consumer:
    """Records a log of calls; ``poll`` hands out what the test queued."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.queued: list[Message] = []
        self.closed = False
        self.lock = threading.Lock()
        self.metadata_requests: list[str | None] = []
        self.cluster_topics = ["events", "acks"]
        self.metadata_error: KafkaException | None = None

    def incremental_assign(self, partitions: Any) -> None:
        self.calls.append(("assign", [(p.topic, p.partition, p.offset) for p in partitions]))

    def incremental_unassign(self, partitions: Any) -> None:
        self.calls.append(("unassign", [(p.topic, p.partition) for p in partitions]))

    def pause(self, partitions: Any) -> None:
        self.calls.append(("pause", [(p.topic, p.partition) for p in partitions]))

    def resume(self, partitions: Any) -> None:
        self.calls.append(("resume", [(p.topic, p.partition) for p in partitions]))

    def poll(self, timeout: float) -> Message | None:
        with self.lock:
            if self.queued:
                self.calls.append("poll")
                return self.queued.pop(0)
        time.sleep(min(timeout, 0.005))
        return None

    def consume(self, count: int, timeout: float) -> list[Message]:
        with self.lock:
            taken, self.queued = self.queued[:count], self.queued[count:]
        return taken

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.metadata_requests.append(topic)
        if self.metadata_error is not None:
            raise self.metadata_error
        return SimpleNamespace(topics={name: object() for name in self.cluster_topics})

    def get_watermark_offsets(self, tp: Any, cached: bool = False) -> tuple[int, int]:
        return 0, 42

    def close(self) -> None:
        self.closed = True


def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def arrivals(thread: FetchThread) -> Any:
    """Waits for the first arrivals (``take``) and returns them."""
    taken: list[Any] = []

    def some() -> bool:
        taken.extend(thread.take())
        return bool(taken)

    wait_for(some)
    return taken


def failed(thread: FetchThread) -> bool:
    try:
        thread.raise_failure()
    except FetchError:
        return True
    return False


def started() -> tuple[FetchThread, Consumer]:
    consumer = Consumer()
    thread = FetchThread(lambda: consumer)
    thread.start()
    return thread, consumer


def test_changes_are_applied_in_order_before_the_next_poll_and_batches_carry_their_number() -> None:
    thread, consumer = started()
    try:
        first = thread.change([], [(("events", 0), 5)])
        second = thread.change([("events", 0)], [(("events", 0), 2)])
        wait_for(lambda: len(consumer.calls) == 3)
        with consumer.lock:
            consumer.queued = [Message(2), Message(3)]
        taken = arrivals(thread)
    finally:
        thread.stop()
    assert (first, second) == (1, 2)
    assert consumer.calls[:4] == [
        ("assign", [("events", 0, 5)]),
        ("unassign", [("events", 0)]),
        ("assign", [("events", 0, 2)]),
        "poll",
    ]
    [arrival] = taken
    assert arrival.applied == 2
    assert [m.offset() for m in arrival.messages] == [2, 3]
    assert arrival.highwaters == {("events", 0): 42}
    assert consumer.closed


def test_a_paused_partition_is_resumed_before_it_is_unassigned() -> None:
    """librdkafka would keep it paused through a new assignment."""
    thread, consumer = started()
    events0, events1 = ("events", 0), ("events", 1)
    try:
        thread.change(assign=[(events0, 0), (events1, 0)], pause=[events0, events1])
        thread.change(resume=[events1])
        thread.change(unassign=[events0, events1], assign=[(events0, 7)])
        wait_for(lambda: len(consumer.calls) == 6)
    finally:
        thread.stop()
    assert consumer.calls == [
        ("assign", [("events", 0, 0), ("events", 1, 0)]),
        ("pause", [("events", 0), ("events", 1)]),
        ("resume", [("events", 1)]),
        ("resume", [("events", 0)]),  # paused still: resumed first
        ("unassign", [("events", 0), ("events", 1)]),
        ("assign", [("events", 0, 7)]),
    ]


def test_each_arrival_wakes_the_loop_and_errors_librdkafka_retries_are_skipped() -> None:
    woken = threading.Event()
    thread, consumer = started()
    thread.on_arrival = woken.set
    try:
        transport = KafkaError(KafkaError._TRANSPORT)
        with consumer.lock:
            consumer.queued = [Message(-1, transport), Message(0)]
        assert woken.wait(5)
        taken = arrivals(thread)
    finally:
        thread.stop()
    assert [m.offset() for m in taken[0].messages] == [0]
    thread.raise_failure()  # nothing failed


def test_a_fatal_error_stops_the_thread_and_is_raised_on_the_loop() -> None:
    thread, consumer = started()
    try:
        fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
        with consumer.lock:
            consumer.queued = [Message(-1, fatal)]
        wait_for(lambda: failed(thread))
        with pytest.raises(FetchError, match="fenced"):
            thread.raise_failure()
    finally:
        thread.stop()


def test_polling_stops_while_the_loop_holds_the_bound_and_resumes_on_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fetch_thread, "BUFFER_RECORDS", 3)
    monkeypatch.setattr(fetch_thread, "BATCH_RECORDS", 2)
    thread, consumer = started()
    try:
        with consumer.lock:
            consumer.queued = [Message(i) for i in range(6)]
        taken = arrivals(thread)
        time.sleep(0.2)  # a second batch (2 + 2 > 3 held) and then no more polls
        taken += thread.take()
        assert [m.offset() for a in taken for m in a.messages] == [0, 1, 2, 3]
        assert len(consumer.queued) == 2
        thread.release(4, 0)
        wait_for(lambda: not consumer.queued)
    finally:
        thread.stop()


def test_the_cluster_metadata_is_asked_for_when_a_topic_is_assigned_the_first_time() -> None:
    """librdkafka alone looks up a new topic's leaders on its 1 s scan: a restarted worker
    waited for that twice before it fetched (docs/operations.md)."""
    thread, consumer = started()
    try:
        thread.change(assign=[(("events", 0), 0)])
        thread.change(assign=[(("events", 1), 0), (("acks", 0), 0)])  # both in the answer
        wait_for(lambda: len(consumer.calls) == 2)
        assert consumer.metadata_requests == [None]  # one request, for every topic
        consumer.cluster_topics.append("ledger")
        thread.change(assign=[(("ledger", 0), 0)])
        wait_for(lambda: len(consumer.metadata_requests) == 2)
    finally:
        thread.stop()
    assert consumer.metadata_requests == [None, None]


def test_a_failed_metadata_request_is_logged_and_asked_again_next_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    thread, consumer = started()
    try:
        consumer.metadata_error = KafkaException(KafkaError(KafkaError._TIMED_OUT))
        thread.change(assign=[(("events", 0), 0)])
        wait_for(lambda: len(consumer.metadata_requests) == 1)
        consumer.metadata_error = None
        thread.change(assign=[(("events", 1), 0)])
        wait_for(lambda: len(consumer.metadata_requests) == 2)
        thread.raise_failure()  # fetching goes on
    finally:
        thread.stop()
    assert consumer.metadata_requests == [None, None]
    assert "metadata of ['events']" in caplog.text
