"""The worker's source records go into their agent's queue as Faust fetched them.

For every fetched record, faust-streaming 0.15's conductor (``ConductorHandler``, compiled)
waits for its producer's buffer, counts a reference per channel, decodes key and value
through the topic's schema and wraps them in an ``Event``; the agent's stream then
tracks the event and acknowledges it layer by layer (``Stream.ack`` -> ``Event.ack`` ->
``Message.ack`` -> ``Consumer.ack``, with sensors at each). The worker's agents read raw
bytes in batches (``streams.faust_glue.batches``) and acknowledge a batch once its
effects are on the broker, so none of that is theirs: for their topics, the handler
built here puts the fetched message itself into the agent's channel queue, under the
same flow control (``FlowControlEvent.acquire``: nothing is delivered while a rebalance
holds the flow) and back-pressure (``Consumer.on_buffer_full`` / ``on_buffer_drop`` at
the queue's pressure marks, a full queue waited on) as Faust's handler, and the batch
acknowledges it with ``Consumer.ack``. The queue is the channel's own, so Faust still
clears it when the flow resumes and still ends the agent by throwing into it. The fetch
loop hands a partition's fetched records over as one ``Chunk`` (one item in the queue,
``streams.faust_glue.fetched``), so the queue's pressure marks count chunks there.

A topic read by more than one channel (an agent with ``concurrency`` above 1, or two
agents) keeps Faust's handler: a message would be acknowledged by the first batch that
took it. Faust's producer buffer is not waited for: the worker sends nothing through
Faust's producer (``streams.output``). Can go when Faust's conductor hands a message to a
raw-bytes channel without building an event for it.
"""

from __future__ import annotations

from collections.abc import Collection, MutableSet
from typing import Any

__all__ = ["Chunk", "DirectHandler", "deliver_directly"]


class Chunk(list[Any]):
    """Fetched messages of one partition, in offset order, handed over as one item
    (``streams.faust_glue.fetched``): ``tp`` routes it as a message's would."""

    __slots__ = ("tp",)

    def __init__(self, tp: Any, messages: Collection[Any] = ()) -> None:
        super().__init__(messages)
        self.tp = tp


class DirectHandler:
    """Puts a message, or a ``Chunk`` of them, into the queue of the partition's one
    channel, under Faust's flow control and back-pressure."""

    def __init__(self, app: Any, tp: Any, channels: MutableSet[Any]) -> None:
        self._consumer, self._tp, self._channels = app.consumer, tp, channels
        self._acquire_flow_control = app.flow_control.acquire
        self._on_topic_buffer_full = app.sensors.on_topic_buffer_full

    def _on_pressure_high(self) -> None:
        self._on_topic_buffer_full(self._tp)
        self._consumer.on_buffer_full(self._tp)

    def _on_pressure_drop(self) -> None:
        self._consumer.on_buffer_drop(self._tp)

    async def __call__(self, item: Any) -> None:
        await self._acquire_flow_control()
        for channel in self._channels:  # one (see deliver_directly)
            queue = channel.queue
            if queue.full():
                self._on_topic_buffer_full(self._tp)
                await queue.put(item)
            else:
                queue.put_nowait_enhanced(
                    item,
                    on_pressure_high=self._on_pressure_high,
                    on_pressure_drop=self._on_pressure_drop,
                )


def deliver_directly(app: Any, topics: Collection[str]) -> None:
    """Hand the records of ``topics`` to their agents' queues as messages: in place of
    the conductor's handler (``Conductor._build_handler``, Faust's compiled
    ``ConductorHandler``) for a partition of them read by one channel. Called before the
    worker starts (the handlers are built when partitions are assigned)."""
    conductor = app.topics
    faust_handler = conductor._build_handler
    direct = frozenset(topics)

    def build_handler(tp: Any, channels: MutableSet[Any]) -> Any:
        if tp.topic in direct and len(channels) == 1:
            return DirectHandler(app, tp, channels)
        return faust_handler(tp, channels)

    conductor._build_handler = build_handler
