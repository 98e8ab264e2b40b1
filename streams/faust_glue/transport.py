"""A Faust transport whose consumer never drops a re-fetched record (broker scheme
``kafka-redelivering://``, registered by ``register()`` before the app is built).

The worker sends nothing through Faust's producer (``streams.output`` does, idempotent,
and table changelogs go with it, ``streams.faust_glue.tables``), so the producer is
Faust's own; its flush before a commit has nothing of ours to wait for.

Faust's fetch loop drops every record whose offset is below the partition's "read offset"
(meant to skip records already handed to a stream). Around a restart or rebalance that
offset can be left ahead of records that never reached a stream (seek back to the
committed offsets while a batch was in flight, queues cleared): the re-fetched records
were then dropped, and Faust's gap bookkeeping later committed past them, so events were
lost for good (faust-streaming issue 596; seen here as a SIGKILL test losing 2-90 events).
``RedeliveringConsumer`` lowers the read offset for such a record so it is handed over;
a record that did reach a stream before is then processed twice, which every agent here
tolerates (idempotent on event id, instruction id and acknowledgement). Table changelog
records are left to Faust (re-applying an old value there would be wrong until the
rest of the changelog was read again).

Faust also drops, during a rebalance, records it has fetched: those of a partition not
active at that moment (while the changelogs are recovered), and those already in an
agent's queue when the flow is resumed (``FlowControlEvent.resume`` clears every queue),
relying on the seek to the committed offsets to fetch them again. That seek comes before
the last resume, so a record fetched in between is dropped after it; and aiokafka's
``seek_to_committed`` moves only partitions whose committed offset is above 0, so a
partition with nothing committed (a new consumer group) is not moved at all. Such records
reached the agent only once a later record of the partition made the sequencer read the
gap, and a lone record (the demo's or the bench's probe) never did: seen in 8 of 21
worker starts with 2,000 tickets to recover. ``RedeliveringConsumer`` therefore seeks
the source partitions once more after the flow is resumed, and moves a partition with
nothing (or 0) committed to its start (``consumer_auto_offset_reset="earliest"``); what
was delivered in between comes again and is skipped by the sequencer. Can go when Faust
seeks after clearing the queues and aiokafka seeks every partition in
``seek_to_committed`` (``test_transport.py`` shows both defects).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from faust.transport import drivers
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock

from streams.faust_glue.consumer_loop import InLoopConsumerThread
from streams.faust_glue.direct import Chunk
from streams.faust_glue.fetch_loop import drain_messages
from streams.faust_glue.fetched import fetched

__all__ = ["SCHEME", "RedeliveringConsumer", "Transport", "register"]

log = logging.getLogger(__name__)

SCHEME: Final = "kafka-redelivering"
CHANGELOG_SUFFIX: Final = "-changelog"


class RedeliveringConsumer(aiokafka_driver.Consumer):
    rewinds: int = 0
    """How often the read offset was lowered to hand over re-fetched records."""
    reseeks: int = 0
    """How often the source partitions were sought again after a rebalance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reseeking: set[asyncio.Future[None]] = set()
        self._reseek_lock = asyncio.Lock()

    def _new_consumer_thread(self) -> InLoopConsumerThread:
        """aiokafka on the worker's loop, not in a thread (``consumer_loop``)."""
        return InLoopConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop without four tasks per record (``fetch_loop``)."""
        await drain_messages(self, fetcher)

    async def getmany(
        self,
        timeout: float,  # noqa: ASYNC109 - the signature is Faust's
    ) -> AsyncIterator[tuple[Any, Any]]:
        """Faust's, with a direct partition's records as one chunk (``fetched``)."""
        read_offset = self._read_offset
        async for tp, item in fetched(self, timeout):
            offset = item[0].offset if type(item) is Chunk else item.offset
            current = read_offset.get(tp)
            if current is not None and offset < current and not tp.topic.endswith(CHANGELOG_SUFFIX):
                log.info(
                    "%s[%d]: handing over re-fetched records from offset %d (read offset %d)",
                    tp.topic,
                    tp.partition,
                    offset,
                    current,
                )
                read_offset[tp] = offset  # so the fetch loop hands it over
                self.rewinds += 1
            yield tp, item

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Every source partition to its committed offset; with none (or 0), to its start."""
        committed: Mapping[Any, int] = await super().seek_to_committed()
        fresh = {
            tp: 0
            for tp, offset in committed.items()
            if not offset and not tp.topic.endswith(CHANGELOG_SUFFIX)
        }
        if fresh:  # offset 0 below the log start resets to it ("earliest")
            await self.seek_wait(fresh)
        return committed

    def resume_partitions(self, tps: Any) -> None:
        """Faust's, and a fetch call waiting with the partitions asked for before fetches
        the resumed ones at once (after a rebalance's recovery: up to 1 s sooner)."""
        super().resume_partitions(tps)
        thread = self._thread
        if isinstance(thread, InLoopConsumerThread):
            thread.wake_fetch()

    def resume_flow(self) -> None:
        """Faust resumes the flow (and has cleared the agents' queues): once a rebalance is
        over, seek again, so that nothing fetched before the queues were cleared is lost."""
        super().resume_flow()
        if not self.app.in_recovery:
            task = asyncio.ensure_future(self._seek_after_rebalance())
            self._reseeking.add(task)
            task.add_done_callback(self._reseeking.discard)

    async def _seek_after_rebalance(self) -> None:
        async with self._reseek_lock:
            try:
                await self.perform_seek()
                self.reseeks += 1
            except Exception as exc:  # a new rebalance began: it ends with a seek of its own
                log.info("seek after the rebalance skipped: %r", exc)

    def mark_handled(self, tp: Any, start: int, end: int) -> None:
        """Offsets ``start <= offset < end`` of ``tp`` were handled outside the stream (read
        directly, see ``streams.sequencer``): acknowledge them the way ``ack()`` does, so
        the commits can pass them even if the stream never delivers them."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index, acked = self._acked_index[tp], self._acked[tp]
            for offset in range(start, end):
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)


class Transport(aiokafka_driver.Transport):
    Consumer = RedeliveringConsumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
