"""A Faust transport that does not lose records: idempotent producer, real flush, and a
consumer that never drops a re-fetched record.

Faust's aiokafka producer turns idempotence on only inside transactions; the worker's
sends (instructions, state, ledger) get it here, under the broker scheme
``kafka-idempotent://``, registered by ``register()`` before the app is built.

Faust flushes the producer before it commits consumer offsets, but its buffer flush (the
queue behind ``send_soon``, which carries every table changelog write) gives up after
0.1 s without a message going out, and does not see a message that its sender task has
already taken off the queue. Under load the offsets of an event could then be committed
before the changelog write of the state it produced reached the broker; a crash at that
moment lost the state change for good (the event is never redelivered). Here ``flush``
also waits until every message handed to ``send_soon`` has been acknowledged by the
broker, and refuses (so the commit does not happen) if the producer stops first.

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

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from faust.transport import drivers
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import ack_lock

from schemas.errors import PublishError

__all__ = [
    "SCHEME",
    "DeliveryTracker",
    "IdempotentProducer",
    "RedeliveringConsumer",
    "Transport",
    "register",
]

log = logging.getLogger(__name__)

SCHEME: Final = "kafka-idempotent"
CHANGELOG_SUFFIX: Final = "-changelog"


class DeliveryTracker:
    """The futures of messages handed over but not yet acknowledged by the broker."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()

    def track(self, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            self._pending.add(fut)
            fut.add_done_callback(self._pending.discard)

    def __len__(self) -> int:
        return len(self._pending)

    def snapshot(self) -> list[asyncio.Future[Any]]:
        return list(self._pending)


class IdempotentProducer(aiokafka_driver.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.undelivered = DeliveryTracker()

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    def send_soon(self, fut: Any) -> None:
        self.undelivered.track(fut)
        super().send_soon(fut)

    async def flush(self) -> None:
        await super().flush()
        while pending := self.undelivered.snapshot():
            result = await self.wait_many(pending)
            if result.stopped:
                raise PublishError(
                    f"producer stopped with {len(self.undelivered)} buffered messages "
                    "(table changelog) not acknowledged; offsets are not committed"
                )
            for fut in pending:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise PublishError(f"a buffered message was not delivered: {fut.exception()!r}")
        await super().flush()  # what the awaited futures' callbacks may have queued


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
    Producer = IdempotentProducer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
