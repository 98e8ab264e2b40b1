"""An agent's stream as self-sizing batches, acknowledged after the batch's effects.

``stream.take_events(n, within)`` (faust-streaming 0.15) yields when ``n`` events are
buffered or a timer fires, so at low rates every event waits for the timer, and it
acknowledges the whole buffer when the consumer of the generator resumes it. Here a batch
is whatever the agent's channel holds when the agent is ready for more: one record at a
low rate, up to ``max_records`` on a backlog, with no added wait. The queue holds the
fetched messages themselves, one by one or a partition's fetch as one chunk
(``streams.faust_glue.direct``), or Faust events, tracked the way Faust's stream iterator
tracks them; acknowledgement is explicit (``ack``), after the batch's effects, so the
consumer's commits never pass a record whose effects are not on the broker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from faust.types import EventT, Message

from schemas.cloudevents import header_map
from streams.faust_glue.direct import Chunk
from streams.inbound import Inbound

__all__ = ["EventBatches", "Interrupted", "inbound"]


def inbound(item: Any) -> Inbound:
    """A batch's record as plain data: a message handed over directly
    (``streams.faust_glue.direct``) or a Faust event (raw bytes either way)."""
    msg = item if isinstance(item, Message) else item.message
    return Inbound(
        msg.key,
        msg.value or b"",
        header_map(msg.headers),
        msg.topic,
        msg.partition,
        msg.offset,
    )


def _add(items: list[Any], item: Any) -> None:
    if type(item) is Chunk:
        items.extend(item)
    else:
        items.append(item)


class Interrupted(Exception):
    """Thrown into the channel by ``EventBatches.interrupt``."""


class EventBatches:
    """Reads an agent's stream in batches (``async for events in batches``), then
    ``ack(events)``. Ends when the worker stops (Faust throws ``StopAsyncIteration`` into
    the channel, as its own stream iterator expects)."""

    def __init__(
        self, stream: Any, max_records: int, taken: Callable[[int], object] | None = None
    ) -> None:
        """``taken`` is called with the size of every batch (a histogram's ``observe``)."""
        self._stream, self._max, self._taken = stream, max_records, taken
        self._app = stream.app
        self._queue = stream.channel.queue
        self._started = False
        self._rest: list[Any] = []
        """A chunk's records past the last batch's limit: the next batch starts with them."""

    def __aiter__(self) -> EventBatches:
        return self

    async def __anext__(self) -> list[Any]:
        """The next non-empty batch of events (waits for the first one)."""
        if not self._started:
            await self._stream.maybe_start()
            self._started = True
        queue, limit = self._queue, self._max
        while True:
            items, self._rest = self._rest, []
            try:
                if not items:
                    _add(items, await queue.get())
                while len(items) < limit and not queue.empty():
                    _add(items, queue.get_nowait())
            except Interrupted:
                if not items:
                    return []
            if len(items) > limit:
                self._rest = items[limit:]
                del items[limit:]
            events = [item for item in items if self._admit(item)]
            if events:
                if self._taken is not None:
                    self._taken(len(events))
                return events

    def interrupt(self) -> None:
        """Wake the wait for the next batch, now or, if none is waiting, the next one: it
        returns the records it has taken, if any, else an empty batch (mode's
        ``ThrowableQueue.throw``, how Faust notifies a stream's reader of an error)."""
        self._queue._throw(Interrupted())

    def _admit(self, item: Any) -> bool:
        """Faust's checks for a channel value: a current-generation record while the flow
        is active (else it is read again after the rebalance); an event is tracked as
        unacked (a message handed over directly is acknowledged to the consumer)."""
        if isinstance(item, Message):
            message = item
        elif isinstance(item, EventT):
            message = item.message
        else:
            return False
        app = self._app
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            return False
        if message is item:
            return True
        if message.topic in app.topics.acking_topics and not message.tracked:
            message.tracked = True
            app.consumer._unacked_messages.add(message)
            self._stream._on_message_in(message.tp, message.offset, message)
        return True

    async def ack(self, records: Sequence[Any]) -> None:
        """The records' effects are acknowledged by the broker: their offsets may be
        committed."""
        ack_event, ack_message = self._stream.ack, self._app.consumer.ack
        for record in records:
            if isinstance(record, Message):
                ack_message(record)
            else:
                await ack_event(record)
