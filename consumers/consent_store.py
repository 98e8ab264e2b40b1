"""The Redis consent store: what online services check before processing a subject's data.

``ConsentStore`` (``redis.Redis``) and ``AsyncConsentStore`` (``redis.asyncio.Redis``, for
the Faust worker) have the same API. Both build their commands and read their answers
with the plain functions of ``consumers.store_layout`` (key layout, fields, decisions,
the one Lua write); only the I/O differs.

* Reads answer in one round trip (``HMGET``; ``HGETALL`` for the full view).
* ``apply_state`` is versioned and idempotent: a replay never moves a subject backwards,
  and a closed subject (a marker holding only ``v`` and ``closed``) is never re-opened.
* Redis connection errors and timeouts are raised as ``StoreUnavailableError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry as SyncRetry

from consumers.store_layout import (
    APPLY_STATE_LUA,
    APPLY_STATE_SHA,
    ApplyOutcome,
    FieldsRead,
    SubjectKeys,
    allowed_read,
    app_revoked_read,
    apply_args,
    permission_revoked_read,
    view_from_hash,
)
from schemas.errors import StoreUnavailableError
from schemas.policy import Policy
from schemas.settings import Secret, Settings
from schemas.views import ConsentState

__all__ = [
    "DEFAULT_PREFIX",
    "AsyncConsentStore",
    "ConsentStore",
    "make_async_redis",
    "make_redis",
]

DEFAULT_PREFIX: Final = "cs"
_TIMEOUT_S: Final = 2.0
_RETRIES: Final = 1
_UNAVAILABLE: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

T = TypeVar("T")


def make_redis(settings: Settings, timeout_s: float = _TIMEOUT_S) -> redis.Redis:
    """A sync client for ``settings.redis_url``: bounded timeouts, one quick retry.

    The retry only re-sends on a connection error or timeout (a pooled connection that a
    Redis restart broke); every store command is idempotent, so a re-send is safe.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=SyncRetry(_backoff(), _RETRIES),
    )


def make_async_redis(settings: Settings, timeout_s: float = _TIMEOUT_S) -> redis.asyncio.Redis:
    """An asyncio client for ``settings.redis_url``, same timeouts and retry."""
    return redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=AsyncRetry(_backoff(), _RETRIES),
    )


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.2, base=0.02)


@contextmanager
def _store_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailableError(f"consent store: {operation}: {exc}") from exc


def _outcomes(replies: Sequence[Any]) -> list[ApplyOutcome]:
    return [ApplyOutcome(int(reply)) for reply in replies]


class _StoreCore:
    """What both clients share: policy, key derivation and the command specs."""

    def __init__(self, policy: Policy, key_secret: Secret, prefix: str) -> None:
        self.policy = policy
        self.keys = SubjectKeys(key_secret, prefix)

    def key(self, subject_id: str) -> str:
        """The subject's Redis key (a keyed hash of the id)."""
        return self.keys(subject_id)

    def _allowed(self, subject_id: str, purpose: str) -> FieldsRead[bool]:
        return allowed_read(self.policy, self.keys(subject_id), purpose)

    def _permission(self, subject_id: str, permission: str, device_id: str) -> FieldsRead[bool]:
        return permission_revoked_read(self.keys(subject_id), permission, device_id)

    def _app(self, subject_id: str, app_id: str) -> FieldsRead[bool]:
        return app_revoked_read(self.keys(subject_id), app_id)

    def _apply_call(self, state: ConsentState) -> list[str]:
        """KEYS + ARGV of the versioned write, as EVALSHA arguments after ``numkeys``."""
        return [self.keys(state.subject_id), *apply_args(state)]


class ConsentStore(_StoreCore):
    """Sync client of the consent store (online services, CLI, rebuild)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        policy: Policy,
        key_secret: Secret,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(policy, key_secret, prefix)
        self._client = redis_client

    def _read(self, read: FieldsRead[T]) -> T:
        with _store_errors("read"):
            raw = self._client.hmget(read.key, list(read.fields))
        return read.parse(raw)

    def is_allowed(self, subject_id: str, purpose: str) -> bool:
        """One HMGET. Raises ``UnknownPurposeError`` (before any I/O) for an unknown purpose."""
        return self._read(self._allowed(subject_id, purpose))

    def is_permission_revoked(self, subject_id: str, permission: str, device_id: str) -> bool:
        return self._read(self._permission(subject_id, permission, device_id))

    def is_app_revoked(self, subject_id: str, app_id: str) -> bool:
        return self._read(self._app(subject_id, app_id))

    def consent_view(self, subject_id: str) -> dict[str, Any]:
        with _store_errors("view"):
            raw = self._client.hgetall(self.keys(subject_id))
        return view_from_hash(self.policy, raw)

    def apply_state(self, state: ConsentState) -> bool:
        """Replace the subject's hash if ``state`` is newer; True when it was applied."""
        call = self._apply_call(state)
        with _store_errors("apply"):
            try:
                reply = self._client.evalsha(APPLY_STATE_SHA, 1, *call)
            except NoScriptError:
                self._client.script_load(APPLY_STATE_LUA)
                reply = self._client.evalsha(APPLY_STATE_SHA, 1, *call)
        return ApplyOutcome(int(reply)) is ApplyOutcome.APPLIED

    def apply_states(self, states: Sequence[ConsentState]) -> list[ApplyOutcome]:
        """Apply many states in one pipelined round trip, in order; one outcome each."""
        if not states:
            return []
        with _store_errors("apply"), self._client.pipeline(transaction=False) as pipe:
            pipe.script_load(APPLY_STATE_LUA)
            for state in states:
                pipe.evalsha(APPLY_STATE_SHA, 1, *self._apply_call(state))
            replies = pipe.execute()
        return _outcomes(replies[1:])


class AsyncConsentStore(_StoreCore):
    """asyncio client of the consent store (the Faust worker); same API as ``ConsentStore``."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        policy: Policy,
        key_secret: Secret,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(policy, key_secret, prefix)
        self._client = redis_client

    async def _read(self, read: FieldsRead[T]) -> T:
        with _store_errors("read"):
            raw = await self._client.hmget(read.key, list(read.fields))
        return read.parse(raw)

    async def is_allowed(self, subject_id: str, purpose: str) -> bool:
        return await self._read(self._allowed(subject_id, purpose))

    async def is_permission_revoked(self, subject_id: str, permission: str, device_id: str) -> bool:
        return await self._read(self._permission(subject_id, permission, device_id))

    async def is_app_revoked(self, subject_id: str, app_id: str) -> bool:
        return await self._read(self._app(subject_id, app_id))

    async def consent_view(self, subject_id: str) -> dict[str, Any]:
        with _store_errors("view"):
            raw = await self._client.hgetall(self.keys(subject_id))
        return view_from_hash(self.policy, raw)

    async def apply_state(self, state: ConsentState) -> bool:
        call = self._apply_call(state)
        with _store_errors("apply"):
            try:
                reply = await self._client.evalsha(APPLY_STATE_SHA, 1, *call)
            except NoScriptError:
                await self._client.script_load(APPLY_STATE_LUA)
                reply = await self._client.evalsha(APPLY_STATE_SHA, 1, *call)
        return ApplyOutcome(int(reply)) is ApplyOutcome.APPLIED

    async def apply_states(self, states: Sequence[ConsentState]) -> list[ApplyOutcome]:
        if not states:
            return []
        with _store_errors("apply"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.script_load(APPLY_STATE_LUA)
                for state in states:
                    pipe.evalsha(APPLY_STATE_SHA, 1, *self._apply_call(state))
                replies = await pipe.execute()
        return _outcomes(replies[1:])
