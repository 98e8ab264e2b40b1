"""Faust's fetch loop without four asyncio tasks per record.

faust-streaming 0.15's ``Consumer._drain_messages`` hands each fetched record to the
topic conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``:
``mode``'s ``wait_first`` wraps the callback, the suspend wait and the service's stopped
and crashed waits in four tasks and an ``asyncio.wait`` for every record, 35.7 us of CPU
per record on this machine against 0.14 us for awaiting the callback (about 9 % of the
worker's CPU in the demo, a quarter of its event loop in a backlog drain), although the
callback almost never has to wait: it decodes the record and puts it into an agent's
queue.

``drain_messages`` is that loop with two changes: ``deliver`` runs the callback to its
first suspension point directly, and only if it has to wait (flow control, a full queue,
the producer's buffer) finishes it under ``wait_first`` exactly as before; when the flow
is suspended or the consumer stopping, ``wait_first`` is used from the start. And a
``Chunk`` (a direct partition's records, ``streams.faust_glue.fetched``) is handed over
in one call, after the read-offset and gap bookkeeping the loop makes record by record
(``_fresh``). Can go when
faust-streaming's ``_drain_messages`` no longer calls ``wait_first`` per record
(``tests/unit/test_fetch_loop.py`` compares this copy with the installed one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING

from streams.faust_glue.direct import Chunk

__all__ = ["deliver", "drain_messages"]

WaitFirst = Callable[..., Awaitable[Any]]


class _Resumed:
    """Awaitable that finishes a coroutine already run to its first suspension point
    (``yielded``: what it yielded there), as ``await coro`` would have."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation or a throw: into the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def deliver(
    coro: Coroutine[Any, Any, Any],
    suspend_flow: Any,
    stopping: Callable[[], bool],
    wait_first: WaitFirst,
) -> None:
    """``await wait_first(coro, suspend_flow.wait())``, without its tasks when ``coro``
    completes without waiting (and the flow is not suspended, nothing is stopping)."""
    if suspend_flow.is_set() or stopping():
        await wait_first(coro, suspend_flow.wait())
        return
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    await wait_first(_Resumed(coro, yielded), suspend_flow.wait())


async def _fresh(consumer: Any, tp: Any, chunk: Chunk, read_offset: int | None) -> Chunk:
    """The chunk's records the loop would hand over one by one (at or past the read
    offset), and the gaps it would note between them (a topic whose acks are enabled)."""
    fresh = Chunk(tp)
    acks_enabled = consumer.app.topics.acks_enabled_for(tp.topic)
    for message in chunk:
        offset = message.offset
        if read_offset is None or offset >= read_offset:
            if acks_enabled and read_offset and offset - read_offset > 1:
                await consumer._add_gap(tp, read_offset + 1, offset)
            fresh.append(message)
            read_offset = offset
    return fresh


async def drain_messages(consumer: Any, fetcher: Any) -> None:  # pragma: no cover - Faust's
    """``faust.transport.consumer.Consumer._drain_messages`` (faust-streaming 0.15.3) with
    ``deliver`` in place of the per-record ``wait_first``, chunks handed over whole and
    asyncio's ``sleep(0)`` for mode's; otherwise unchanged."""
    self = consumer
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    def stopping() -> bool:
        return bool(self._stopped.is_set() or self._crashed.is_set())

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = cast(AsyncIterator[Any], getmany(timeout=1.0))

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop (asyncio's sleep(0): one yield; mode's
            # Service.sleep(0) is a wait_for on a new task, 11 us against 2 us)
            await sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    if type(message) is Chunk:  # a direct partition's records, in one call
                        chunk = await _fresh(self, tp, message, get_read_offset(tp))
                        if chunk:
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await deliver(
                                callback(chunk), self.suspend_flow, stopping, self.wait_first
                            )
                            set_read_offset(tp, chunk[-1].offset)
                        continue
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await deliver(
                            callback(message), self.suspend_flow, stopping, self.wait_first
                        )
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
