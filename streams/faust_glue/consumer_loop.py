"""aiokafka's consumer on the worker's own event loop, not in a thread of its own.

faust-streaming 0.15 runs the aiokafka consumer in a ``ServiceThread`` with a second event
loop, and every call into it (each ``getmany`` of the fetch loop, commits, seeks) crosses
threads through a method queue: two self-pipe wake-ups and two hand-overs of the GIL per
call. While an agent works on a batch the consumer thread waits for the GIL to send its
next fetch and to hand the records over, so records reach the agent late, and the waits
grow with the agent's load. Here the same ``AIOKafkaConsumerThread`` runs as an ordinary
service on the worker's loop: ``call_thread`` is a plain await, aiokafka's fetch, heartbeat
and commit tasks are tasks of that loop. At 1,000 and 3,600 events/s this lowered the
bench's publish -> store p99 in interleaved A/B rounds (docs/benchmarks.md).

The loop must then never block for long: aiokafka's heartbeats run on it. The agents only
await (Kafka deliveries, Redis), and a batch of at most a few hundred records takes tens of
milliseconds, far below the group's session timeout; the ledger's index rebuild after a
rebalance (~35 s for 1,000,000 tickets) yields to the loop every 2,000 tickets
(``LedgerProcessor.rebuild_index``).

Can go when faust-streaming offers a consumer without the thread (or its thread stops
costing the hand-overs): then drop ``RedeliveringConsumer._new_consumer_thread``.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver
from mode.utils.futures import maybe_async

__all__ = ["InLoopConsumerThread"]


class InLoopConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer "thread", run on the loop it is created on."""

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        loop = kwargs.pop("loop")
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        """Start the aiokafka consumer as a child service, no thread, no method queue."""
        self._thread_started.set()
        await self._default_start()

    async def stop(self) -> None:
        """What the thread runs when it ends (``ServiceThread._shutdown_thread``: the
        aiokafka consumer, children, futures, exit stacks), on this loop."""
        if self._started.is_set() and not self._stopped.is_set():
            self._stopped.set()
            await self._shutdown_thread()

    async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Any, *args: Any, **kwargs: Any) -> None:
        await maybe_async(fun(*args, **kwargs))
