"""An agent's failed batches are counted before Faust restarts the agent
(``consent_batch_failures_total``)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from schemas.errors import PublishError
from streams.app import _failures_counted
from streams.metrics import stream_metrics


def failures(registry: CollectorRegistry, stage: str, reason: str) -> float | None:
    labels = {"stage": stage, "reason": reason}
    return registry.get_sample_value("consent_batch_failures_total", labels)


async def failing(error: BaseException) -> None:
    await asyncio.sleep(0)
    raise error


@pytest.mark.parametrize(
    ("error", "reason"),
    [(PublishError("not acknowledged"), "publish_failed"), (KeyError("x"), "unexpected")],
)
def test_a_failure_is_counted_by_its_reason_and_raised_again(error: Exception, reason: str) -> None:
    registry = CollectorRegistry()
    metrics = stream_metrics(registry)

    with pytest.raises(type(error)):
        asyncio.run(_failures_counted("ledger", metrics, failing(error)))

    assert failures(registry, "ledger", reason) == 1


def test_an_agent_stopped_or_ending_counts_nothing() -> None:
    registry = CollectorRegistry()
    metrics = stream_metrics(registry)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_failures_counted("events", metrics, failing(asyncio.CancelledError())))
    asyncio.run(_failures_counted("events", metrics, asyncio.sleep(0)))

    counted = [
        s for m in registry.collect() if m.name == "consent_batch_failures" for s in m.samples
    ]
    assert counted == []
