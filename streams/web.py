"""HTTP served by the worker: health, metrics, consent state, request status.

``/healthz`` is open; ``/consent/...`` and ``/requests/...`` serve personal data and need a
bearer token of ``CONSENT_STREAM_HTTP_TOKENS``; ``/metrics`` needs
``CONSENT_STREAM_METRICS_TOKEN`` when one is set (``streams.http_auth``). ``/metrics`` takes
``name[]`` parameters, as prometheus_client's own handler does: only those series are
rendered (the whole page costs ~2-3 ms; the bench samples one counter).

The server runs on a thread and event loop of its own (Faust's ``web_in_thread``), with a
Redis client of its own (``HttpParts``, used on that loop only). On the worker's loop, a
consent check waited behind the agents: a batch of 500 records is planned in one step, and
while a backlog drained, ``GET /consent/...`` took up to 0.43-0.77 s (p50 2 ms;
docs/benchmarks.md). Now it waits for the agents only through the interpreter's lock.
``/healthz`` says 503 when the worker's loop has not turned for ``LOOP_STALLED_S``
(``streams.loop_lag.LoopPulse``): a worker whose loop is stuck is not healthy, although its
HTTP thread still answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import faust
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from consumers.consent_store import AsyncConsentStore
from consumers.store_clients import make_async_redis
from schemas.errors import StoreUnavailableError
from schemas.policy import Policy
from schemas.records import to_record
from schemas.settings import Settings
from streams.http_auth import TokenCheck, guarded
from streams.loop_lag import LoopPulse
from streams.request_views import AsyncRequestViews

__all__ = ["LOOP_STALLED_S", "HttpParts", "attach_views", "build_http_parts"]

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
    pulse: LoopPulse


def build_http_parts(
    settings: Settings, policy: Policy, registry: CollectorRegistry, pulse: LoopPulse
) -> HttpParts:
    redis = make_async_redis(settings)
    store = AsyncConsentStore(
        redis, policy, settings.subject_keys, settings.redis_prefix, settings.redis_min_replicas
    )
    views = AsyncRequestViews(redis, settings.redis_prefix)
    return HttpParts(redis, store, views, registry, pulse)


def _error(web: Any, status: int, message: str) -> Any:
    return web.json({"error": message, "status": status}, status=status)


def attach_views(app: faust.App, parts: HttpParts, settings: Settings) -> None:
    callers = TokenCheck(settings.http_tokens)
    scrapers = TokenCheck({"metrics": settings.metrics_token} if settings.metrics_token else {})

    @app.page("/healthz")
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
        except StoreUnavailableError as exc:
            return _error(web, 503, str(exc))
        return web.json(view)  # an unseen subject: the defaults the store answers, "seen" false

    async def request_status(web: Any, request: Any, request_id: str) -> Any:
        status = await parts.views.get(request_id)
        if status is None:
            return _error(web, 404, f"unknown request {request_id}")
        return web.json(to_record(status))

    app.page("/metrics")(guarded(scrapers, "/metrics", metrics, open_without_tokens=True))
    app.page("/consent/{subject_id}")(guarded(callers, "/consent/{subject_id}", consent))
    app.page("/requests/{request_id}")(guarded(callers, "/requests/{request_id}", request_status))
