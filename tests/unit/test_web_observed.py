"""The worker's HTTP API counts and times every answer by route template and status code
(``streams.api.server.observed``), a view that raises as 500 (no Kafka, no server)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.api.server import observed
from streams.metrics import stream_metrics

ROUTE = "/consent/{subject_id}"


def test_answers_are_counted_by_route_and_code_and_timed() -> None:
    registry = CollectorRegistry()
    metrics = stream_metrics(registry)

    async def view(web: Any, request: Any, subject_id: str) -> Any:
        await asyncio.sleep(0.01)
        return SimpleNamespace(status=200 if subject_id == "known" else 401)

    handler = observed(metrics, ROUTE, view)
    for subject in ("known", "known", "other"):
        asyncio.run(handler(None, None, subject_id=subject))

    def count(code: str) -> float | None:
        return registry.get_sample_value(
            "consent_http_requests_total", {"route": ROUTE, "code": code}
        )

    assert (count("200"), count("401")) == (2.0, 1.0)
    labels = {"route": ROUTE}
    assert registry.get_sample_value("consent_http_request_duration_seconds_count", labels) == 3
    total = registry.get_sample_value("consent_http_request_duration_seconds_sum", labels)
    assert total is not None and total >= 0.03
    assert handler.__name__ == "view"


def test_a_view_that_raises_counts_as_500_and_still_raises() -> None:
    registry = CollectorRegistry()

    async def view(web: Any, request: Any) -> Any:
        raise ConnectionError("redis went away")

    with pytest.raises(ConnectionError):
        asyncio.run(observed(stream_metrics(registry), "/requests/{request_id}", view)(None, None))

    labels = {"route": "/requests/{request_id}", "code": "500"}
    assert registry.get_sample_value("consent_http_requests_total", labels) == 1.0
