"""The Redis consent store: what online services check before processing a subject's data.

``ConsentStore`` (``redis.Redis``) and ``AsyncConsentStore`` (``redis.asyncio.Redis``, for
the Faust worker) have the same API. Both build their commands and read their answers
with the plain functions of ``consumers.store.layout`` (key layout, fields, decisions,
the one Lua write); only the I/O differs.

* Reads answer in one round trip (``HMGET``; ``HGETALL`` for the full view); while a
  subject key is rotated, one pipelined round trip over the subject's slots under every
  accepted key, the newest slot winning.
* ``apply_state`` is versioned and idempotent: a replay never moves a subject backwards,
  and a closed subject (a marker holding only ``v`` and ``closed``) is never re-opened.
* Redis connection errors and timeouts are raised as ``StoreUnavailableError``; a login or
  command Redis refuses (the ACL user of ``CONSENT_STREAM_REDIS_URL``, ``consumers.store.acl``)
  as ``AccessDeniedError`` (``schemas.client_errors.redis_error``).
* With ``min_replicas`` (``CONSENT_STREAM_REDIS_MIN_REPLICAS``), ``apply_states`` sends
  ``WAIT`` in the same round trip and raises ``StoreReplicasMissingError`` when fewer replicas
  have the writes within ``REPLICA_WAIT_MS`` (the worker then writes them again: they are
  idempotent), so a write that counts survives a failover to a replica.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from consumers.store.layout import (
    APPLY_STATE_LUA,
    APPLY_STATE_SHA,
    APPLY_STATES_LUA,
    APPLY_STATES_SHA,
    STATES_PER_CALL,
    VERSION_FIELD,
    ApplyOutcome,
    FieldsRead,
    SubjectSlots,
    allowed_read,
    app_revoked_read,
    apply_args,
    apply_states_call,
    newest_hash,
    newest_reply,
    permission_revoked_read,
    view_from_hash,
)
from schemas.client_errors import redis_error
from schemas.errors import StoreReplicasMissingError
from schemas.policy import Policy
from schemas.subject_keys import SubjectKeys
from schemas.validation import validate_subject_id
from schemas.views import ConsentState

__all__ = ["DEFAULT_PREFIX", "REPLICA_WAIT_MS", "AsyncConsentStore", "ConsentStore"]

DEFAULT_PREFIX: Final = "cs"
REPLICA_WAIT_MS: Final = 1000
"""How long ``WAIT`` waits for the replicas (below the clients' 2 s socket timeout)."""

T = TypeVar("T")


@contextmanager
def _store_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        error = redis_error(exc, f"consent store: {operation}")
        if error is None:
            raise
        raise error from exc


def _outcomes(replies: Sequence[Any]) -> list[ApplyOutcome]:
    """One outcome per state, from the answers of ``_apply_calls`` (lists of integers)."""
    return [ApplyOutcome(int(r)) for reply in replies for r in reply]


class _StoreCore:
    """What both clients share: policy, key derivation and the command specs."""

    def __init__(self, policy: Policy, keys: SubjectKeys, prefix: str, min_replicas: int) -> None:
        self.policy = policy
        self.keys = SubjectSlots(keys, prefix)
        self.min_replicas = min_replicas

    def key(self, subject_id: str) -> str:
        """The subject's Redis key under the current subject key (a keyed hash of the id)."""
        return self.keys.current(subject_id)

    def _read_key(self, subject_id: str) -> str:
        """``key``, for a read: an id no event can carry raises ``ValidationError`` (before
        any I/O) instead of reading the policy's defaults."""
        validate_subject_id(subject_id)
        return self.key(subject_id)

    def _view_slots(self, subject_id: str) -> list[str]:
        key = self._read_key(subject_id)
        return self.keys(subject_id) if self.keys.rotating else [key]

    def _allowed(self, subject_id: str, purpose: str) -> FieldsRead[bool]:
        return allowed_read(self.policy, self._read_key(subject_id), purpose)

    def _permission(self, subject_id: str, permission: str, device_id: str) -> FieldsRead[bool]:
        return permission_revoked_read(self._read_key(subject_id), permission, device_id)

    def _app(self, subject_id: str, app_id: str) -> FieldsRead[bool]:
        return app_revoked_read(self._read_key(subject_id), app_id)

    def _other_slots(self, subject_id: str) -> list[str]:
        """The subject's slots under the other accepted keys ([] unless rotating)."""
        return self.keys(subject_id)[1:] if self.keys.rotating else []

    def _apply_call(self, state: ConsentState) -> tuple[int, list[str]]:
        """numkeys, then KEYS + ARGV of the versioned write, as EVALSHA arguments."""
        slots = self.keys(state.subject_id)
        return len(slots), [*slots, *apply_args(state)]

    def _apply_calls(self, states: Sequence[ConsentState]) -> list[tuple[int, list[str]]]:
        """EVALSHA arguments of ``APPLY_STATES_LUA``: ``STATES_PER_CALL`` states a call."""
        return [
            apply_states_call(
                [
                    (self.keys(st.subject_id), apply_args(st))
                    for st in states[i : i + STATES_PER_CALL]
                ]
            )
            for i in range(0, len(states), STATES_PER_CALL)
        ]

    def _settled(self, replies: Sequence[Any]) -> list[ApplyOutcome]:
        """The outcomes of ``_evalsha_all``'s replies, once ``min_replicas`` have them."""
        if not self.min_replicas:
            return _outcomes(replies)
        *writes, acked = replies
        if int(acked) < self.min_replicas:
            raise StoreReplicasMissingError(
                f"consent store: apply: {acked} of the {self.min_replicas} replicas wanted "
                f"had the writes after {REPLICA_WAIT_MS} ms"
            )
        return _outcomes(writes)


class ConsentStore(_StoreCore):
    """Sync client of the consent store (online services, CLI, rebuild)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        policy: Policy,
        keys: SubjectKeys,
        prefix: str = DEFAULT_PREFIX,
        min_replicas: int = 0,
    ) -> None:
        super().__init__(policy, keys, prefix, min_replicas)
        self._client = redis_client

    def _read(self, subject_id: str, read: FieldsRead[T]) -> T:
        others = self._other_slots(subject_id)
        with _store_errors("read"):
            if not others:
                return read.parse(self._client.hmget(read.key, list(read.fields)))
            fields = [*read.fields, VERSION_FIELD]
            with self._client.pipeline(transaction=False) as pipe:
                for key in (read.key, *others):
                    pipe.hmget(key, fields)
                replies = pipe.execute()
        return read.parse(newest_reply(replies))

    def is_allowed(self, subject_id: str, purpose: str) -> bool:
        """One HMGET. Raises (before any I/O) ``UnknownPurposeError`` for an unknown purpose,
        ``ValidationError`` for a subject id no event can carry."""
        return self._read(subject_id, self._allowed(subject_id, purpose))

    def is_permission_revoked(self, subject_id: str, permission: str, device_id: str) -> bool:
        return self._read(subject_id, self._permission(subject_id, permission, device_id))

    def is_app_revoked(self, subject_id: str, app_id: str) -> bool:
        return self._read(subject_id, self._app(subject_id, app_id))

    def consent_view(self, subject_id: str) -> dict[str, Any]:
        slots = self._view_slots(subject_id)
        raw: Mapping[Any, Any]
        with _store_errors("view"):
            if len(slots) == 1:
                raw = self._client.hgetall(slots[0])
            else:
                with self._client.pipeline(transaction=False) as pipe:
                    for key in slots:
                        pipe.hgetall(key)
                    raw = newest_hash(pipe.execute())
        return view_from_hash(self.policy, raw)

    def apply_state(self, state: ConsentState) -> bool:
        """Replace the subject's hash if ``state`` is newer; True when it was applied."""
        numkeys, call = self._apply_call(state)
        with _store_errors("apply"):
            try:
                reply = self._client.evalsha(APPLY_STATE_SHA, numkeys, *call)
            except NoScriptError:
                self._client.script_load(APPLY_STATE_LUA)
                reply = self._client.evalsha(APPLY_STATE_SHA, numkeys, *call)
        return ApplyOutcome(int(reply)) is ApplyOutcome.APPLIED

    def apply_states(self, states: Sequence[ConsentState]) -> list[ApplyOutcome]:
        """Apply many states in one round trip (pipelined past ``STATES_PER_CALL``), in
        order; one outcome each. The script is loaded only when Redis does not have it:
        sending it with every batch cost the worker 30-50 us of CPU per batch."""
        if not states:
            return []
        calls = self._apply_calls(states)
        with _store_errors("apply"):
            try:
                replies = self._evalsha_all(calls)
            except NoScriptError:  # a restarted Redis, or its scripts flushed
                self._client.script_load(APPLY_STATES_LUA)
                replies = self._evalsha_all(calls)
        return self._settled(replies)

    def _evalsha_all(self, calls: Sequence[tuple[int, list[str]]]) -> list[Any]:
        if len(calls) == 1 and not self.min_replicas:
            numkeys, call = calls[0]
            return [self._client.evalsha(APPLY_STATES_SHA, numkeys, *call)]
        with self._client.pipeline(transaction=False) as pipe:
            for numkeys, call in calls:
                pipe.evalsha(APPLY_STATES_SHA, numkeys, *call)
            if self.min_replicas:
                pipe.wait(self.min_replicas, REPLICA_WAIT_MS)
            replies: list[Any] = pipe.execute()
        return replies


class AsyncConsentStore(_StoreCore):
    """asyncio client of the consent store (the Faust worker); same API as ``ConsentStore``."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        policy: Policy,
        keys: SubjectKeys,
        prefix: str = DEFAULT_PREFIX,
        min_replicas: int = 0,
    ) -> None:
        super().__init__(policy, keys, prefix, min_replicas)
        self._client = redis_client

    async def _read(self, subject_id: str, read: FieldsRead[T]) -> T:
        others = self._other_slots(subject_id)
        with _store_errors("read"):
            if not others:
                return read.parse(await self._client.hmget(read.key, list(read.fields)))
            fields = [*read.fields, VERSION_FIELD]
            async with self._client.pipeline(transaction=False) as pipe:
                for key in (read.key, *others):
                    pipe.hmget(key, fields)
                replies = await pipe.execute()
        return read.parse(newest_reply(replies))

    async def is_allowed(self, subject_id: str, purpose: str) -> bool:
        return await self._read(subject_id, self._allowed(subject_id, purpose))

    async def is_permission_revoked(self, subject_id: str, permission: str, device_id: str) -> bool:
        return await self._read(subject_id, self._permission(subject_id, permission, device_id))

    async def is_app_revoked(self, subject_id: str, app_id: str) -> bool:
        return await self._read(subject_id, self._app(subject_id, app_id))

    async def consent_view(self, subject_id: str) -> dict[str, Any]:
        slots = self._view_slots(subject_id)
        raw: Mapping[Any, Any]
        with _store_errors("view"):
            if len(slots) == 1:
                raw = await self._client.hgetall(slots[0])
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in slots:
                        pipe.hgetall(key)
                    raw = newest_hash(await pipe.execute())
        return view_from_hash(self.policy, raw)

    async def apply_state(self, state: ConsentState) -> bool:
        numkeys, call = self._apply_call(state)
        with _store_errors("apply"):
            try:
                reply = await self._client.evalsha(APPLY_STATE_SHA, numkeys, *call)
            except NoScriptError:
                await self._client.script_load(APPLY_STATE_LUA)
                reply = await self._client.evalsha(APPLY_STATE_SHA, numkeys, *call)
        return ApplyOutcome(int(reply)) is ApplyOutcome.APPLIED

    async def apply_states(self, states: Sequence[ConsentState]) -> list[ApplyOutcome]:
        if not states:
            return []
        calls = self._apply_calls(states)
        with _store_errors("apply"):
            try:
                replies = await self._evalsha_all(calls)
            except NoScriptError:  # a restarted Redis, or its scripts flushed
                await self._client.script_load(APPLY_STATES_LUA)
                replies = await self._evalsha_all(calls)
        return self._settled(replies)

    async def _evalsha_all(self, calls: Sequence[tuple[int, list[str]]]) -> list[Any]:
        if len(calls) == 1 and not self.min_replicas:
            numkeys, call = calls[0]
            return [await self._client.evalsha(APPLY_STATES_SHA, numkeys, *call)]
        async with self._client.pipeline(transaction=False) as pipe:
            for numkeys, call in calls:
                pipe.evalsha(APPLY_STATES_SHA, numkeys, *call)
            if self.min_replicas:
                pipe.wait(self.min_replicas, REPLICA_WAIT_MS)
            replies: list[Any] = await pipe.execute()
        return replies
