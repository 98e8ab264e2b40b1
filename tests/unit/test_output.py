"""OutputProducer and KafkaOutputs over a fake confluent-kafka producer: the test plays
the broker (``ack``), the OutputProducer's poller thread serves the delivery reports, and
``delivered()`` waits for exactly the records of its own ``Outputs``."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from schemas.errors import PublishError
from streams.output import KafkaOutputs, OutputProducer

TIMEOUT_S = 5.0


@dataclass
class Produced:
    topic: str
    value: bytes | None
    key: bytes | None
    kwargs: dict[str, Any]


class FakeProducer:
    """A confluent ``Producer``: ``produce`` queues a record, ``ack`` (the broker) readies
    its delivery report, ``poll`` serves ready reports in the calling thread."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.produced: list[Produced] = []
        self.refuse: list[BaseException] = []  # raised by the next produce calls
        self.polls = 0
        self.served = 0
        self.callback_threads: set[int] = set()
        self._ready: deque[tuple[Callable[..., None], KafkaError | None]] = deque()
        self._cond = threading.Condition()

    def produce(self, topic: str, value: bytes | None, key: bytes | None, **kwargs: Any) -> None:
        with self._cond:
            if self.refuse:
                raise self.refuse.pop(0)
            self.produced.append(Produced(topic, value, key, kwargs))

    def ack(self, index: int, error: KafkaError | None = None) -> None:
        with self._cond:
            self._ready.append((self.produced[index].kwargs["on_delivery"], error))
            self._cond.notify_all()

    def poll(self, timeout: float) -> int:
        with self._cond:
            self.polls += 1
            if not self._ready:
                self._cond.wait(timeout)
            ready = list(self._ready)
            self._ready.clear()
        for on_delivery, error in ready:
            on_delivery(error, None)
            with self._cond:
                self.served += 1
                self.callback_threads.add(threading.get_ident())
                self._cond.notify_all()
        return len(ready)

    def wait_served(self, count: int) -> None:
        """Block until ``count`` delivery reports have been served."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.served >= count, TIMEOUT_S)

    def flush(self, timeout: float) -> int:
        return len(self.produced) - self.served


@contextmanager
def output_producer() -> Iterator[tuple[OutputProducer, FakeProducer]]:
    fakes: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        fakes.append(FakeProducer(config))
        return fakes[-1]

    producer = OutputProducer({"client.id": "test"}, factory)
    try:
        yield producer, fakes[0]
    finally:
        producer.close(1.0)


def run(test: Callable[[OutputProducer, FakeProducer], Coroutine[Any, Any, None]]) -> None:
    with output_producer() as (producer, fake):
        asyncio.run(test(producer, fake))


async def settle() -> None:
    """Let the event loop run what delivery reports scheduled on it."""
    await asyncio.sleep(0.05)


async def within(outputs: KafkaOutputs) -> None:
    await asyncio.wait_for(outputs.delivered(), TIMEOUT_S)


# ---- delivered() ----------------------------------------------------------------------


def test_delivered_returns_at_once_when_nothing_is_pending() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        outputs = producer.outputs("events")
        await asyncio.wait_for(outputs.delivered(), 0.01)
        outputs.send("t", b"k", b"v")
        fake.ack(0)
        fake.wait_served(1)
        await asyncio.wait_for(outputs.delivered(), 0.01)  # acknowledged before the wait

    run(test)


def test_delivered_waits_for_every_record() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        outputs = producer.outputs("events")
        for n in range(3):
            outputs.send("t", b"k", f"v{n}".encode())
        waiting = asyncio.create_task(outputs.delivered())
        await settle()  # waiting before the reports arrive
        fake.ack(2)
        fake.ack(0)
        fake.wait_served(2)
        await settle()
        assert not waiting.done()

        fake.ack(1)

        await asyncio.wait_for(waiting, TIMEOUT_S)
        assert threading.get_ident() not in fake.callback_threads  # served by the poller

    run(test)


def test_a_failed_delivery_makes_delivered_raise_once_all_are_settled() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        outputs = producer.outputs("events")
        outputs.send("t", b"k", b"v0")
        outputs.send("t", b"k", b"v1")
        waiting = asyncio.create_task(outputs.delivered())
        await settle()  # waiting before the reports arrive
        fake.ack(0, KafkaError(KafkaError._MSG_TIMED_OUT))
        fake.wait_served(1)
        await settle()
        assert not waiting.done()

        fake.ack(1)

        with pytest.raises(PublishError, match=r"events: 1 records not acknowledged.*timed out"):
            await asyncio.wait_for(waiting, TIMEOUT_S)
        await asyncio.wait_for(outputs.delivered(), 0.01)  # reported once

    run(test)


def test_each_outputs_waits_only_for_its_own_records() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        events, ledger = producer.outputs("events"), producer.outputs("ledger")
        events.send("a", b"k", b"v")
        ledger.send("b", b"k", b"v")
        events_waiting = asyncio.create_task(events.delivered())
        await settle()

        fake.ack(1)

        await within(ledger)
        assert not events_waiting.done()
        fake.ack(0)
        await asyncio.wait_for(events_waiting, TIMEOUT_S)

    run(test)


def test_a_failure_is_reported_to_the_outputs_that_sent_the_record() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        events, ledger = producer.outputs("events"), producer.outputs("ledger")
        events.send("a", b"k", b"v")
        ledger.send("b", b"k", b"v")

        fake.ack(0)
        fake.ack(1, KafkaError(KafkaError._MSG_TIMED_OUT))

        await within(events)
        with pytest.raises(PublishError, match="ledger"):
            await within(ledger)

    run(test)


# ---- produce --------------------------------------------------------------------------


def test_records_are_produced_with_their_headers_and_partition() -> None:
    with output_producer() as (producer, fake):
        outputs = producer.outputs("events")

        outputs.send("t", b"k", b"v", [("ce_id", b"1")], 3)
        outputs.send("t", None, None)

    first, tombstone = fake.produced
    assert (first.topic, first.key, first.value) == ("t", b"k", b"v")
    assert first.kwargs == {
        "on_delivery": outputs.on_delivery,
        "headers": [("ce_id", b"1")],
        "partition": 3,
    }
    assert (tombstone.key, tombstone.value) == (None, None)
    assert tombstone.kwargs == {"on_delivery": outputs.on_delivery}  # broker's choice
    assert fake.config == {"client.id": "test"}


def test_a_full_queue_is_waited_out_by_polling() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        outputs = producer.outputs("events")
        fake.refuse = [BufferError("queue full"), BufferError("queue full")]
        polls = fake.polls

        outputs.send("t", b"k", b"v")

        assert len(fake.produced) == 1 and fake.polls >= polls + 2
        fake.ack(0)
        await within(outputs)

    run(test)


def test_a_record_that_cannot_be_enqueued_raises_and_is_not_waited_for() -> None:
    async def test(producer: OutputProducer, fake: FakeProducer) -> None:
        outputs = producer.outputs("events")
        fake.refuse = [KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))]

        with pytest.raises(KafkaException):
            outputs.send("t", b"k", b"v")

        await asyncio.wait_for(outputs.delivered(), 0.01)
        assert fake.produced == []

    run(test)


def test_close_flushes_and_stops_the_poller() -> None:
    with output_producer() as (producer, fake):
        outputs = producer.outputs("events")
        outputs.send("t", b"k", b"v0")
        outputs.send("t", b"k", b"v1")
        fake.ack(0)
        fake.wait_served(1)

        assert producer.close(1.0) == 1  # the records flush could not deliver
        polls = fake.polls
        threading.Event().wait(0.2)
        assert fake.polls == polls
