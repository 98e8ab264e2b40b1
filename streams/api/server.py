"""HTTP served by the worker: health, metrics, consent state, request status.

``/healthz`` is open; ``/consent/...`` and ``/requests/...`` serve personal data and need a
bearer token of ``CONSENT_STREAM_HTTP_TOKENS``; ``/metrics`` needs
``CONSENT_STREAM_METRICS_TOKEN`` when one is set (``streams.api.auth``). ``/metrics`` takes
``name[]`` parameters, as prometheus_client's own handler does: only those series are
rendered (the whole page costs ~2-3 ms; the bench samples one counter).

The server runs on a thread and event loop of its own (Faust's ``web_in_thread``), with a
Redis client of its own (``HttpParts``, used on that loop only). On the worker's loop, a
consent check waited behind the agents: a batch of 500 records is planned in one step, and
while a backlog drained, ``GET /consent/...`` took up to 0.3-0.7 s (p50 2 ms;
docs/benchmarks.md). Now it waits for the agents only through the interpreter's lock.
``/healthz`` says 503 when the worker's loop has not turned for ``LOOP_STALLED_S``
(``streams.loop_lag.LoopPulse``): a worker whose loop is stuck is not healthy, although its
HTTP thread still answers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from consumers.store.clients import make_async_redis
from consumers.store.consent_store import AsyncConsentStore
from schemas.errors import AccessDeniedError, StoreUnavailableError, ValidationError
from schemas.policy import Policy
from schemas.records import to_record
from schemas.settings import Settings
from streams.api.auth import TokenCheck, guarded
from streams.loop_lag import LoopPulse
from streams.metrics import StreamMetrics
from streams.request_views import AsyncRequestViews

__all__ = ["LOOP_STALLED_S", "HttpParts", "attach_views", "build_http_parts", "observed"]

LOOP_STALLED_S: Final = 10.0
"""``/healthz`` says 503 when the worker's loop has not turned for this long (the alert
``ConsentWorkerLoopStalled`` fires at 5 s; the group session timeout is 20 s)."""


@dataclass(frozen=True)
class HttpParts:
    """What the HTTP API reads. ``redis``, ``store`` and ``views`` are its own clients,
    used on the HTTP server's loop only (a client is bound to the loop it first ran on)."""

    redis: Any
    store: AsyncConsentStore
    views: AsyncRequestViews
    registry: CollectorRegistry
    metrics: StreamMetrics
    pulse: LoopPulse


def build_http_parts(
    settings: Settings,
    policy: Policy,
    registry: CollectorRegistry,
    metrics: StreamMetrics,
    pulse: LoopPulse,
) -> HttpParts:
    redis = make_async_redis(settings)
    store = AsyncConsentStore(
        redis, policy, settings.subject_keys, settings.redis_prefix, settings.redis_min_replicas
    )
    views = AsyncRequestViews(redis, settings.redis_prefix)
    return HttpParts(redis, store, views, registry, metrics, pulse)


View = Callable[..., Awaitable[Any]]


def observed(metrics: StreamMetrics, route: str, view: View) -> View:
    """``view`` counted by route and status code and timed
    (``consent_http_requests_total``, ``consent_http_request_duration_seconds``); a view
    that raises counts as 500 (aiohttp answers it so)."""

    async def handler(web: Any, request: Any, **kwargs: Any) -> Any:
        started, code = time.perf_counter(), "500"
        try:
            response = await view(web, request, **kwargs)
            code = str(response.status)
            return response
        finally:
            metrics.http_requests.labels(route, code).inc()
            metrics.http_request_duration.labels(route).observe(time.perf_counter() - started)

    handler.__name__ = getattr(view, "__name__", "view")
    return handler


def _error(web: Any, status: int, message: str) -> Any:
    return web.json({"error": message, "status": status}, status=status)


def attach_views(app: faust.App, parts: HttpParts, settings: Settings) -> None:
    callers = TokenCheck(settings.http_tokens)
    scrapers = TokenCheck({"metrics": settings.metrics_token} if settings.metrics_token else {})

    async def healthz(web: Any, request: Any) -> Any:
        held = parts.pulse.held_s()
        if held > LOOP_STALLED_S:
            body = {"status": "stalled", "event_loop_held_s": round(held, 1)}
            return web.json(body, status=503)
        try:
            await parts.redis.ping()
        except (OSError, RedisError) as exc:
            return web.json({"status": "degraded", "consent_store": str(exc)}, status=503)
        return web.json({"status": "ok", "consent_store": "ok"})

    async def metrics(web: Any, request: Any) -> Any:
        names = request.query.getall("name[]", [])
        registry = parts.registry.restricted_registry(names) if names else parts.registry
        body = generate_latest(registry)
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def consent(web: Any, request: Any, subject_id: str) -> Any:
        try:
            view = await parts.store.consent_view(subject_id)
        except ValidationError as exc:  # an id no event can carry: not the defaults
            return _error(web, 400, str(exc))
        except (StoreUnavailableError, AccessDeniedError) as exc:
            return _error(web, 503, str(exc))
        return web.json(view)  # an unseen subject: the defaults the store answers, "seen" false

    async def request_status(web: Any, request: Any, request_id: str) -> Any:
        try:
            status = await parts.views.get(request_id)
        except (StoreUnavailableError, AccessDeniedError) as exc:
            return _error(web, 503, str(exc))
        if status is None:
            return _error(web, 404, f"unknown request {request_id}")
        return web.json(to_record(status))

    routes: dict[str, View] = {
        "/healthz": healthz,
        "/metrics": guarded(scrapers, "/metrics", metrics, open_without_tokens=True),
        "/consent/{subject_id}": guarded(callers, "/consent/{subject_id}", consent),
        "/requests/{request_id}": guarded(callers, "/requests/{request_id}", request_status),
    }
    for route, view in routes.items():
        app.page(route)(observed(parts.metrics, route, view))
