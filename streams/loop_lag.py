"""How late the worker's event loop runs: a task that sleeps a fixed interval and observes
how much later than asked it woke up (``consent_event_loop_lag_seconds``).

Everything of the worker shares that one loop: the agents, Faust's fetch loop, aiokafka's
heartbeats, the HTTP server. A loop held longer than the group session timeout
(``CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S``) sends no heartbeat in time, and the group
takes the worker's partitions away; shorter holds delay every record by as much. The
histogram shows both, and how low the session timeout can safely be set.
"""

from __future__ import annotations

import asyncio
from typing import Final

from prometheus_client import Histogram

__all__ = ["SAMPLE_INTERVAL_S", "watch_loop_lag"]

SAMPLE_INTERVAL_S: Final = 0.25


async def watch_loop_lag(lag: Histogram, interval_s: float = SAMPLE_INTERVAL_S) -> None:
    """Observe, every ``interval_s``, how late the loop woke this task; runs until
    cancelled (the worker's stop)."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lag.observe(max(0.0, loop.time() - due))
