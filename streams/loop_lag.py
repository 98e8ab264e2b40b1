"""How late the worker's event loop runs: a task that sleeps a fixed interval and observes
how much later than asked it woke up (``consent_event_loop_lag_seconds``).

Everything of the worker but its HTTP API (which has a thread and loop of its own,
``streams.api.server``) shares that one loop: the agents, Faust's fetch loop, aiokafka's
heartbeats. A loop held longer than the group session timeout
(``CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S``) sends no heartbeat in time, and the group
takes the worker's partitions away; shorter holds delay every record by as much. The
histogram shows both, and how low the session timeout can safely be set. Each wake-up
is also noted in a ``LoopPulse``, which ``/healthz`` reads from the HTTP thread: a loop
that stopped turning makes the worker unhealthy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from prometheus_client import Histogram

__all__ = ["SAMPLE_INTERVAL_S", "LoopPulse", "watch_loop_lag"]

SAMPLE_INTERVAL_S: Final = 0.25


class LoopPulse:
    """When the watched loop last woke the watcher; read from any thread."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def held_s(self) -> float:
        """Seconds since the loop last turned (about ``SAMPLE_INTERVAL_S`` when it runs)."""
        return time.monotonic() - self.last


async def watch_loop_lag(
    lag: Histogram, interval_s: float = SAMPLE_INTERVAL_S, pulse: LoopPulse | None = None
) -> None:
    """Observe, every ``interval_s``, how late the loop woke this task (and note the
    wake-up in ``pulse``); runs until cancelled (the worker's stop)."""
    loop = asyncio.get_running_loop()
    if pulse is not None:
        pulse.last = time.monotonic()  # the watch starts: what came before is not a hold
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lag.observe(max(0.0, loop.time() - due))
        if pulse is not None:
            pulse.last = time.monotonic()
