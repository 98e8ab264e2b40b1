"""The worker's transport: nothing it was handed or fetched is lost.

Producer: a flush waits for every ``send_soon`` message (table changelog).
Faust commits consumer offsets right after ``producer.flush()``; these tests take the
buffer's own flush out of the picture (it may give up after 0.1 s, which is the bug the
transport mends) and check that ``flush`` still returns only once every buffered message
was acknowledged, and refuses when a message failed or the producer stopped.
Consumer: a record re-fetched below Faust's read offset is handed to the streams, not
dropped. No broker is involved: nothing here connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

from schemas.errors import PublishError
from schemas.settings import Settings
from streams.app import create_app
from streams.transport import DeliveryTracker, IdempotentProducer, RedeliveringConsumer

Scenario = Callable[[IdempotentProducer], Awaitable[Any]]
Run = Callable[[Scenario], Any]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Runs a scenario with a worker producer built inside the scenario's event loop."""

    async def gives_up(self: Any) -> None:  # the buffer flush that returns too early
        return None

    monkeypatch.setattr(aiokafka_driver.Producer, "flush", gives_up)

    async def with_producer(scenario: Scenario) -> Any:
        producer = create_app(Settings(data_dir=str(tmp_path))).producer
        assert isinstance(producer, IdempotentProducer)
        return await scenario(producer)

    return lambda scenario: asyncio.run(with_producer(scenario))


def test_flush_waits_until_every_buffered_message_is_acknowledged(run: Run) -> None:
    async def scenario(producer: IdempotentProducer) -> list[str]:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        producer.send_soon(first)
        producer.send_soon(second)
        seen: list[str] = []
        flushing = asyncio.create_task(producer.flush())
        await asyncio.sleep(0.05)
        seen.append(f"after 50 ms: done={flushing.done()} pending={len(producer.undelivered)}")
        first.set_result("acked")
        await asyncio.sleep(0.05)
        seen.append(f"one acked: done={flushing.done()} pending={len(producer.undelivered)}")
        second.set_result("acked")
        await asyncio.wait_for(flushing, 1.0)
        seen.append(f"both acked: done={flushing.done()} pending={len(producer.undelivered)}")
        return seen

    assert run(scenario) == [
        "after 50 ms: done=False pending=2",
        "one acked: done=False pending=1",
        "both acked: done=True pending=0",
    ]


def test_flush_refuses_when_a_buffered_message_failed(run: Run) -> None:
    async def scenario(producer: IdempotentProducer) -> None:
        fut = asyncio.get_running_loop().create_future()
        producer.send_soon(fut)
        fut.set_exception(RuntimeError("NotLeaderForPartition"))
        await producer.flush()

    with pytest.raises(PublishError, match="NotLeaderForPartition"):
        run(scenario)


def test_flush_refuses_when_the_producer_stops_first(run: Run) -> None:
    async def scenario(producer: IdempotentProducer) -> None:
        fut = asyncio.get_running_loop().create_future()
        producer.send_soon(fut)
        flushing = asyncio.create_task(producer.flush())
        await asyncio.sleep(0.02)
        producer._stopped.set()
        await asyncio.wait_for(flushing, 1.0)

    with pytest.raises(PublishError, match="not acknowledged; offsets are not committed"):
        run(scenario)


def test_flush_with_nothing_buffered_returns_at_once(run: Run) -> None:
    async def scenario(producer: IdempotentProducer) -> int:
        await asyncio.wait_for(producer.flush(), 0.5)
        return len(producer.undelivered)

    assert run(scenario) == 0


def test_tracker_ignores_futures_already_done() -> None:
    async def scenario() -> int:
        tracker = DeliveryTracker()
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        tracker.track(done)
        return len(tracker)

    assert asyncio.run(scenario()) == 0


# -- the consumer: a re-fetched record below Faust's read offset is handed over -------------


@dataclass(frozen=True)
class FakeMessage:
    offset: int


def drain(consumer: RedeliveringConsumer, batch: list[tuple[TP, int]]) -> list[tuple[str, int]]:
    """What Faust's fetch loop (``Consumer._drain_messages``) hands to the streams: a record
    passes when its offset is not below the read offset, which then moves to it."""

    async def faust_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, FakeMessage]]:
        for tp, offset in batch:
            yield tp, FakeMessage(offset)

    async def scenario() -> list[tuple[str, int]]:
        handed: list[tuple[str, int]] = []
        async for tp, message in consumer.getmany(timeout=1.0):
            read = consumer._read_offset[tp]
            if read is None or message.offset >= read:
                handed.append((tp.topic, message.offset))
                consumer._read_offset[tp] = message.offset
        return handed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FaustConsumer, "getmany", faust_getmany)
        result: list[tuple[str, int]] = asyncio.run(scenario())
    return result


@pytest.fixture
def consumer(tmp_path: Path) -> RedeliveringConsumer:
    app = create_app(Settings(data_dir=str(tmp_path)))
    made = app.consumer
    assert isinstance(made, RedeliveringConsumer)
    return made


def test_records_refetched_after_a_seek_back_are_handed_over(
    consumer: RedeliveringConsumer,
) -> None:
    events = TP("ns.consent.events.v1", 2)
    consumer._read_offset[events] = 786  # left there by a batch that never reached the stream
    refetched = [(events, offset) for offset in range(759, 789)]
    handed = drain(consumer, refetched)
    assert handed == [("ns.consent.events.v1", offset) for offset in range(759, 789)]
    assert consumer.rewinds == 1
    assert consumer._read_offset[events] == 788


def test_without_the_fix_faust_would_drop_them(consumer: RedeliveringConsumer) -> None:
    """The scenario above through Faust's own getmany: the re-fetched records are lost."""
    events = TP("ns.consent.events.v1", 2)
    consumer._read_offset[events] = 786

    async def faust_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, FakeMessage]]:
        for offset in range(759, 789):
            yield events, FakeMessage(offset)

    async def scenario() -> list[int]:
        handed = []
        async for tp, message in faust_getmany(consumer, 1.0):
            read = consumer._read_offset[tp]
            if read is None or message.offset >= read:
                handed.append(message.offset)
                consumer._read_offset[tp] = message.offset
        return handed

    assert asyncio.run(scenario()) == [786, 787, 788]


def test_changelog_records_are_left_to_faust(consumer: RedeliveringConsumer) -> None:
    changelog = TP("consent-stream-consent-subjects-changelog", 0)
    consumer._read_offset[changelog] = 10
    handed = drain(consumer, [(changelog, 9), (changelog, 10), (changelog, 11)])
    assert handed == [(changelog.topic, 10), (changelog.topic, 11)]
    assert consumer.rewinds == 0


def test_records_in_order_pass_untouched(consumer: RedeliveringConsumer) -> None:
    acks = TP("ns.partner.ads.acks.v1", 1)
    handed = drain(consumer, [(acks, 0), (acks, 1), (acks, 2)])
    assert handed == [(acks.topic, 0), (acks.topic, 1), (acks.topic, 2)]
    assert consumer.rewinds == 0
