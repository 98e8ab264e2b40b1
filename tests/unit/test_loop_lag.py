"""The event loop's lag: how late a sleeping task wakes (no Kafka)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import CollectorRegistry

from streams.loop_lag import LoopPulse, watch_loop_lag
from streams.metrics import stream_metrics


def test_a_blocked_loop_is_observed_as_late_as_it_was_held() -> None:
    registry = CollectorRegistry()
    metrics = stream_metrics(registry)

    async def scenario() -> None:
        watcher = asyncio.ensure_future(watch_loop_lag(metrics.loop_lag, interval_s=0.02))
        await asyncio.sleep(0.05)  # a few samples of an idle loop
        time.sleep(0.3)  # the loop is held (a synchronous call)
        await asyncio.sleep(0.05)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    asyncio.run(scenario())

    def count(le: str) -> float:
        value = registry.get_sample_value("consent_event_loop_lag_seconds_bucket", {"le": le})
        assert value is not None
        return value

    samples = count("+Inf")
    assert samples >= 3
    assert count("0.1") == samples - 1  # every sample but the held one within 100 ms
    assert count("0.25") == samples - 1  # the held one: at least 0.3 s - 0.02 s late
    assert count("0.5") == samples


def test_the_pulse_shows_how_long_the_loop_has_not_turned() -> None:
    metrics = stream_metrics(CollectorRegistry())
    pulse = LoopPulse()
    held: list[float] = []

    async def scenario() -> None:
        watcher = asyncio.ensure_future(
            watch_loop_lag(metrics.loop_lag, interval_s=0.02, pulse=pulse)
        )
        await asyncio.sleep(0.1)
        held.append(pulse.held_s())  # turning: noted at most an interval or so ago
        time.sleep(0.3)  # the loop is held
        held.append(pulse.held_s())  # read as /healthz reads it, from elsewhere
        await asyncio.sleep(0.05)
        held.append(pulse.held_s())  # turning again
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    asyncio.run(scenario())

    assert held[0] < 0.1 and held[1] >= 0.3 and held[2] < 0.1
