"""HTTP served by the worker: health, metrics, consent state, request status.

``/healthz`` is open; ``/consent/...`` and ``/requests/...`` serve personal data and need a
bearer token of ``CONSENT_STREAM_HTTP_TOKENS``; ``/metrics`` needs
``CONSENT_STREAM_METRICS_TOKEN`` when one is set (``streams.http_auth``). ``/metrics`` takes
``name[]`` parameters, as prometheus_client's own handler does: only those series are
rendered (the whole page costs the event loop ~2-3 ms; the bench samples one counter).
"""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from schemas.errors import StoreUnavailableError
from schemas.records import to_record
from schemas.settings import Settings
from streams.app import WorkerParts
from streams.http_auth import TokenCheck, guarded

__all__ = ["attach_views"]


def _error(web: Any, status: int, message: str) -> Any:
    return web.json({"error": message, "status": status}, status=status)


def attach_views(app: faust.App, parts: WorkerParts, settings: Settings) -> None:
    callers = TokenCheck(settings.http_tokens)
    scrapers = TokenCheck({"metrics": settings.metrics_token} if settings.metrics_token else {})

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
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
