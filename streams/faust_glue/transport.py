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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from faust.transport import drivers
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock

__all__ = ["SCHEME", "RedeliveringConsumer", "Transport", "register"]

log = logging.getLogger(__name__)

SCHEME: Final = "kafka-redelivering"
CHANGELOG_SUFFIX: Final = "-changelog"


class RedeliveringConsumer(aiokafka_driver.Consumer):
    rewinds: int = 0
    """How often the read offset was lowered to hand over re-fetched records."""

    async def getmany(
        self,
        timeout: float,  # noqa: ASYNC109 - the signature is Faust's
    ) -> AsyncIterator[tuple[Any, Any]]:
        read_offset = self._read_offset
        async for tp, message in super().getmany(timeout):
            current = read_offset.get(tp)
            if (
                current is not None
                and message.offset < current
                and not tp.topic.endswith(CHANGELOG_SUFFIX)
            ):
                log.info(
                    "%s[%d]: handing over re-fetched records from offset %d (read offset %d)",
                    tp.topic,
                    tp.partition,
                    message.offset,
                    current,
                )
                read_offset[tp] = message.offset  # so the fetch loop hands it over
                self.rewinds += 1
            yield tp, message

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
