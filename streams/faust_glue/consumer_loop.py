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

With a fetch configuration (``fetch_with_librdkafka``, the worker's default), the records
themselves are fetched by librdkafka (``streams.faust_glue.record_reader``); aiokafka keeps
the group, the offsets and the positions.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import ConsumerStoppedError
from confluent_kafka import Consumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode.utils.futures import maybe_async

from schemas.errors import MembershipError
from streams.faust_glue.fetch_thread import FetchThread
from streams.faust_glue.record_reader import (
    RecordReader,
    assigned_states,
    faust_messages,
    positions_only,
)

__all__ = ["InLoopConsumerThread", "fetch_config_of", "fetch_with_librdkafka", "watch_membership"]

log = logging.getLogger(__name__)

_FETCH_CONFIGS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def fetch_with_librdkafka(app: Any, config: Mapping[str, Any]) -> None:
    """The worker of ``app`` fetches records with a librdkafka consumer of ``config``
    (``Settings.fetch_config``) instead of aiokafka's fetcher."""
    _FETCH_CONFIGS[app] = dict(config)


def fetch_config_of(app: Any) -> dict[str, Any] | None:
    """The librdkafka fetch configuration of ``app``'s worker; None: aiokafka fetches."""
    return _FETCH_CONFIGS.get(app)


def watch_membership(consumer: Any, app: Any) -> None:
    """The worker stops when aiokafka's group coordination ends with an error.

    aiokafka 0.14 logs "Unexpected error in coordinator routine" and leaves the consumer in
    no group: nothing is assigned, nothing processed, while the process runs on and
    ``/healthz`` answers. Seen when a second worker joined with the same group instance id
    (Faust's assignor refused the first one's assignment). The app crashes instead, which
    stops the worker with exit code 1, and its supervisor restarts it. Can go when
    aiokafka ends the consumer on such an error (and its heartbeats carry the group
    instance id, so that Kafka fences a duplicate: 0.14 sends Heartbeat v1)."""
    task = consumer._coordinator._coordination_task

    def ended(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None or app.should_stop:
            return
        error = MembershipError(f"the worker's group membership ended: {task.exception()!r}")
        log.critical("%s; the worker stops", error)
        crashing = asyncio.ensure_future(app.crash(error))
        _CRASHING.add(crashing)
        crashing.add_done_callback(_CRASHING.discard)

    task.add_done_callback(ended)


_CRASHING: set[asyncio.Future[Any]] = set()


class InLoopConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer "thread", run on the loop it is created on."""

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        loop = kwargs.pop("loop")
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)
        self._reader: RecordReader | None = None

    async def start(self) -> None:
        """Start the aiokafka consumer as a child service, no thread, no method queue;
        with a fetch configuration, the librdkafka reader too."""
        self._thread_started.set()
        await self._default_start()
        if self._consumer is not None and not self.app.client_only:
            watch_membership(self._consumer, self.app)
        config = fetch_config_of(self.consumer.app)
        if config is not None and not self.app.client_only:
            positions_only(self._ensure_consumer()._fetcher)
            self._reader = RecordReader(FetchThread(lambda: Consumer(config)), self.thread_loop)
            faust_consumer: Any = self.consumer  # its driver's _to_message, replaced
            faust_consumer._to_message = faust_messages(self.app)
            self._reader.start()

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 - the signature is Faust's
        max_records: int | None = None,
    ) -> Any:
        reader = self._reader
        if reader is None:
            return await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        if not self.consumer.flow_active:
            return {}
        if consumer._closed:
            raise ConsumerStoppedError()
        subscriptions = consumer._subscription
        if subscriptions.reassignment_in_progress:
            await subscriptions.wait_for_assignment()
        if active_partitions is None:
            active_partitions = self.assignment()
        return await reader.fetched(
            assigned_states(consumer), active_partitions, timeout or 0.0, max_records
        )

    def wake_fetch(self) -> None:
        """A fetch call waiting for records looks at the partitions asked for again."""
        if self._reader is not None:
            self._reader.wake()

    async def stop(self) -> None:
        """What the thread runs when it ends (``ServiceThread._shutdown_thread``: the
        aiokafka consumer, children, futures, exit stacks), on this loop."""
        if self._started.is_set() and not self._stopped.is_set():
            self._stopped.set()
            if self._reader is not None:
                self._reader.stop()
            await self._shutdown_thread()

    async def call_thread(self, fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def cast_thread(self, fun: Any, *args: Any, **kwargs: Any) -> None:
        await maybe_async(fun(*args, **kwargs))
