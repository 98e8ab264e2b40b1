"""The worker's producer: a flush waits for every ``send_soon`` message (table changelog).

Faust commits consumer offsets right after ``producer.flush()``; these tests take the
buffer's own flush out of the picture (it may give up after 0.1 s, which is the bug the
transport mends) and check that ``flush`` still returns only once every buffered message
was acknowledged, and refuses when a message failed or the producer stopped.
No broker is involved: nothing here connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as aiokafka_driver

from schemas.errors import PublishError
from schemas.settings import Settings
from streams.app import create_app
from streams.transport import DeliveryTracker, IdempotentProducer

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
