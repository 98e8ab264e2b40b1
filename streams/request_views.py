"""Deletion request status in Redis, for the HTTP API and the CLI (no personal data:
the record is the published ``RequestStatus`` evidence, digests only)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NoReturn

from redis.exceptions import RedisError

from schemas.client_errors import redis_error
from schemas.contracts import REQUEST_STATUS
from schemas.records import from_record, to_record
from schemas.views import RequestStatus

__all__ = ["AsyncRequestViews", "RequestViews", "request_key", "status_from_json", "status_to_json"]


def request_key(prefix: str, request_id: str) -> str:
    return f"{prefix}:r:{request_id}"


def status_to_json(status: RequestStatus) -> str:
    return json.dumps(to_record(status), separators=(",", ":"))


def status_from_json(text: str | bytes) -> RequestStatus:
    obj = from_record(REQUEST_STATUS, json.loads(text))
    assert isinstance(obj, RequestStatus)  # noqa: S101 - decoded by its own contract
    return obj


def _raise_store_error(exc: RedisError) -> NoReturn:
    """``StoreUnavailableError`` or ``AccessDeniedError`` for what ``exc`` means; else
    ``exc`` itself."""
    error = redis_error(exc, "request views")
    if error is None:
        raise exc
    raise error from exc


class AsyncRequestViews:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis, self._prefix = redis, prefix

    async def put(self, status: RequestStatus) -> None:
        await self.put_many([status])

    async def put_many(self, statuses: Sequence[RequestStatus]) -> None:
        """Write the views in one pipelined round trip; Redis not answering raises
        ``StoreUnavailableError``, refusing the user ``AccessDeniedError``."""
        if not statuses:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for status in statuses:
                    key = request_key(self._prefix, status.request_id)
                    pipe.set(key, status_to_json(status))
                await pipe.execute()
        except RedisError as exc:
            _raise_store_error(exc)

    async def get(self, request_id: str) -> RequestStatus | None:
        try:
            raw = await self._redis.get(request_key(self._prefix, request_id))
        except RedisError as exc:
            _raise_store_error(exc)
        return None if raw is None else status_from_json(raw)


class RequestViews:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis, self._prefix = redis, prefix

    def get(self, request_id: str) -> RequestStatus | None:
        raw = self._redis.get(request_key(self._prefix, request_id))
        return None if raw is None else status_from_json(raw)
