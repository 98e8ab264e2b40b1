"""``streams.faust_glue.fetch_loop``: a record handed over as ``wait_first`` would, without
its tasks when the callback need not wait; and a guard on the Faust code it copies."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from mode.utils.locks import Event

from streams.faust_glue.fetch_loop import deliver
from streams.faust_glue.transport import RedeliveringConsumer

UPSTREAM_DRAIN_MESSAGES_SHA256 = "44a2500309e83c63"
"""faust-streaming 0.15.3's ``Consumer._drain_messages``, which ``drain_messages`` copies."""


class WaitFirst:
    """Records the calls; behaves like mode's wait_first for two awaitables."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *aws: Any) -> list[Any]:
        self.calls += 1
        tasks = [asyncio.ensure_future(a) for a in aws]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return [t.result() for t in done]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_callback_that_need_not_wait_runs_without_wait_first() -> None:
    seen: list[int] = []

    async def callback(n: int) -> None:
        seen.append(n)

    async def main() -> int:
        wait_first, suspend = WaitFirst(), Event()
        for n in range(3):
            await deliver(callback(n), suspend, lambda: False, wait_first)
        return wait_first.calls

    assert _run(main()) == 0
    assert seen == [0, 1, 2]


def test_a_callback_that_waits_is_finished_under_wait_first() -> None:
    seen: list[str] = []

    async def callback(queue: asyncio.Queue[str]) -> None:
        seen.append("started")
        seen.append(await queue.get())  # a full agent queue, flow control: it must wait
        await asyncio.sleep(0)
        seen.append("done")

    async def main() -> int:
        wait_first, suspend, queue = WaitFirst(), Event(), asyncio.Queue[str]()
        asyncio.get_running_loop().call_later(0.01, queue.put_nowait, "item")
        await deliver(callback(queue), suspend, lambda: False, wait_first)
        return wait_first.calls

    assert _run(main()) == 1
    assert seen == ["started", "item", "done"]


def test_a_suspended_flow_abandons_a_waiting_callback_as_before() -> None:
    seen: list[str] = []

    async def callback() -> None:
        seen.append("started")
        await asyncio.sleep(10)
        seen.append("never")

    async def main() -> None:
        wait_first, suspend = WaitFirst(), Event()
        asyncio.get_running_loop().call_later(0.01, suspend.set)
        await deliver(callback(), suspend, lambda: False, wait_first)
        await asyncio.sleep(0.01)

    _run(main())
    assert seen == ["started"]


def test_suspended_or_stopping_goes_through_wait_first_from_the_start() -> None:
    async def callback() -> str:
        return "ok"

    async def main() -> list[int]:
        calls = []
        for suspended, stopping in ((True, False), (False, True)):
            wait_first, suspend = WaitFirst(), Event()
            if suspended:
                suspend.set()
            await deliver(callback(), suspend, lambda s=stopping: s, wait_first)
            calls.append(wait_first.calls)
        return calls

    assert _run(main()) == [1, 1]


def test_an_error_of_the_callback_comes_out_either_way() -> None:
    async def fails_at_once() -> None:
        raise ValueError("decode error")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("late error")

    async def main(cb: Any) -> None:
        await deliver(cb(), Event(), lambda: False, WaitFirst())

    with pytest.raises(ValueError, match="decode error"):
        _run(main(fails_at_once))
    with pytest.raises(ValueError, match="late error"):
        _run(main(fails_later))


def test_the_copied_fetch_loop_is_the_installed_faust_one() -> None:
    """If this fails, faust-streaming changed ``_drain_messages``: re-copy it into
    ``fetch_loop.drain_messages`` (or drop the override if it no longer waits per record)."""
    source = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == UPSTREAM_DRAIN_MESSAGES_SHA256
    assert RedeliveringConsumer._drain_messages is not Consumer._drain_messages
