"""An in-memory stand-in for the few Redis commands the consent store sends (unit tests).

Hashes only: ``HMGET``, ``HGETALL``, ``SCRIPT LOAD``, ``EVALSHA`` (``NOSCRIPT`` until the
script is loaded) of ``APPLY_STATE_LUA`` and
of ``APPLY_STATES_LUA`` (run by ``apply_state_model``, a line-by-line Python model of the
script, and ``apply_states_model``, which splits a batch call the way the script does; the
scripts themselves run against a real Redis in tests/integration/test_consent_store.py)
and non-transactional pipelines. ``round_trips`` counts what would cross the network: a
command, or a pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from consumers.store.layout import (
    APPLY_STATE_LUA,
    APPLY_STATE_SHA,
    APPLY_STATES_SHA,
    CLOSED_FIELD,
    VERSION_FIELD,
)

__all__ = ["AsyncMemoryRedis", "MemoryRedis", "apply_state_model", "apply_states_model"]

Hashes = dict[str, dict[str, str]]


def _version(hashes: Hashes, key: str) -> int | None:
    value = hashes.get(key, {}).get(VERSION_FIELD)
    return int(value) if value is not None else None


def apply_state_model(hashes: Hashes, keys: list[str], argv: list[str]) -> int:
    """What ``APPLY_STATE_LUA`` does, step by step."""
    if len(keys) > 1:
        best, best_v = 0, _version(hashes, keys[0])
        for i in range(1, len(keys)):
            v = _version(hashes, keys[i])
            if v is not None and (best_v is None or v > best_v):
                best, best_v = i, v
        if best > 0:
            hashes[keys[0]] = hashes.pop(keys[best])  # RENAME
        for key in keys[1:]:
            hashes.pop(key, None)  # DEL
    stored = hashes.get(keys[0], {})
    if VERSION_FIELD in stored and int(stored[VERSION_FIELD]) >= int(argv[0]):
        return 0
    if CLOSED_FIELD in stored and argv[1] != "1":
        return -1
    hashes[keys[0]] = dict(zip(argv[2::2], argv[3::2], strict=True))
    return 1


def apply_states_model(hashes: Hashes, keys: list[str], argv: list[str]) -> list[int]:
    """What ``APPLY_STATES_LUA`` does: ``apply_state_model`` for each state of the call."""
    n = int(argv[0])
    counts = [(int(argv[1 + 2 * i]), int(argv[2 + 2 * i])) for i in range(n)]
    k, a, out = 0, 1 + 2 * n, []
    for nk, na in counts:
        out.append(apply_state_model(hashes, keys[k : k + nk], argv[a : a + na]))
        k, a = k + nk, a + na
    assert k == len(keys) and a == len(argv), "the call's counts do not cover its arguments"
    return out


class _Commands:
    def __init__(self, hashes: Hashes, log: list[tuple[Any, ...]], scripts: set[str]) -> None:
        self.hashes, self.log, self.scripts = hashes, log, scripts

    def _hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        self.log.append(("HMGET", key, *fields))
        stored = self.hashes.get(key, {})
        return [stored[f].encode() if f in stored else None for f in fields]

    def _hgetall(self, key: str) -> dict[bytes, bytes]:
        self.log.append(("HGETALL", key))
        return {k.encode(): v.encode() for k, v in self.hashes.get(key, {}).items()}

    def _script_load(self, script: str) -> str:
        self.log.append(("SCRIPT LOAD",))
        sha = APPLY_STATE_SHA if script == APPLY_STATE_LUA else APPLY_STATES_SHA
        self.scripts.add(sha)
        return sha

    def _evalsha(self, sha: str, numkeys: int, *args: Any) -> int | list[int]:
        assert sha in (APPLY_STATE_SHA, APPLY_STATES_SHA)
        if sha not in self.scripts:
            self.log.append(("EVALSHA", "NOSCRIPT"))
            raise NoScriptError("No matching script. Please use EVAL.")
        keys, argv = [str(a) for a in args[:numkeys]], [str(a) for a in args[numkeys:]]
        self.log.append(("EVALSHA", numkeys, *keys))
        if sha == APPLY_STATES_SHA:
            return apply_states_model(self.hashes, keys, argv)
        return apply_state_model(self.hashes, keys, argv)


class _Pipeline(_Commands):
    def __init__(self, owner: _Commands) -> None:
        super().__init__(owner.hashes, owner.log, owner.scripts)
        self.queued: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name in ("hmget", "hgetall", "script_load", "evalsha"):
            return lambda *args: self.queued.append((name, args))
        raise AttributeError(name)

    def run(self) -> list[Any]:
        """Every queued command; then, as redis-py does, the first error is raised."""
        replies: list[Any] = []
        for name, args in self.queued:
            try:
                replies.append(getattr(self, "_" + name)(*args))
            except ResponseError as exc:
                replies.append(exc)
        self.queued.clear()
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if errors:
            raise errors[0]
        return replies


class MemoryRedis(_Commands):
    """The sync client (``redis.Redis``) as the store uses it."""

    def __init__(self, hashes: Hashes | None = None) -> None:
        super().__init__({} if hashes is None else hashes, [], set())
        self.round_trips = 0

    def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        self.round_trips += 1
        return self._hmget(key, fields)

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        self.round_trips += 1
        return self._hgetall(key)

    def script_load(self, script: str) -> str:
        self.round_trips += 1
        return self._script_load(script)

    def evalsha(self, sha: str, numkeys: int, *args: Any) -> int | list[int]:
        self.round_trips += 1
        return self._evalsha(sha, numkeys, *args)

    @contextmanager
    def pipeline(self, transaction: bool = True) -> Iterator[Any]:
        assert transaction is False
        pipe = _Pipeline(self)
        owner = self

        class _Sync:
            def __getattr__(self, name: str) -> Any:
                return getattr(pipe, name)

            def execute(self) -> list[Any]:
                owner.round_trips += 1
                return pipe.run()

        yield _Sync()


class AsyncMemoryRedis:
    """The asyncio client (``redis.asyncio.Redis``) over the same hashes."""

    def __init__(self, hashes: Hashes | None = None) -> None:
        self.sync = MemoryRedis(hashes)

    @property
    def round_trips(self) -> int:
        return self.sync.round_trips

    async def hmget(self, key: str, fields: list[str]) -> list[bytes | None]:
        return self.sync.hmget(key, fields)

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return self.sync.hgetall(key)

    async def script_load(self, script: str) -> str:
        return self.sync.script_load(script)

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> int | list[int]:
        return self.sync.evalsha(sha, numkeys, *args)

    @asynccontextmanager
    async def pipeline(self, transaction: bool = True) -> Any:
        with self.sync.pipeline(transaction) as pipe:

            class _Async:
                def __getattr__(self, name: str) -> Any:
                    return getattr(pipe, name)

                async def execute(self) -> list[Any]:
                    return pipe.execute()  # type: ignore[no-any-return]

            yield _Async()
