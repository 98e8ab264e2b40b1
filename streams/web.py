"""HTTP served by the worker: health, metrics, consent state, request status."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from schemas.errors import StoreUnavailableError
from schemas.records import to_record
from streams.app import WorkerParts

__all__ = ["attach_views"]


def _error(web: Any, status: int, message: str) -> Any:
    return web.json({"error": message, "status": status}, status=status)


def attach_views(app: faust.App, parts: WorkerParts) -> None:
    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        try:
            await parts.redis.ping()
        except (OSError, RedisError) as exc:
            return web.json({"status": "degraded", "consent_store": str(exc)}, status=503)
        return web.json({"status": "ok", "consent_store": "ok"})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        body = generate_latest(parts.registry)
        return web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/consent/{subject_id}")
    async def consent(web: Any, request: Any, subject_id: str) -> Any:
        try:
            view = await parts.store.consent_view(subject_id)
        except StoreUnavailableError as exc:
            return _error(web, 503, str(exc))
        return web.json(view)  # an unseen subject: the defaults the store answers, "seen" false

    @app.page("/requests/{request_id}")
    async def request_status(web: Any, request: Any, request_id: str) -> Any:
        status = await parts.views.get(request_id)
        if status is None:
            return _error(web, 404, f"unknown request {request_id}")
        return web.json(to_record(status))
