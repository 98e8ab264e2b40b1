"""Clients of the consent store's Redis, sync and asyncio, from the settings.

Both have bounded timeouts and one quick retry. The retry only re-sends on a connection
error or timeout (a pooled connection that a Redis restart broke); every store command is
idempotent, so a re-send is safe. With Sentinels configured (``schemas.redis_settings``)
the client asks them where the primary is and asks again when it loses it: a primary
that went down, or one demoted to a replica (its ``READONLY`` answer is turned into a
connection error), so a write during a failover fails as while Redis is down and is
retried (``streams.store_retry``).
"""

from __future__ import annotations

from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry as SyncRetry

from schemas.redis_settings import RedisSentinel
from schemas.settings import Settings

__all__ = ["STORE_TIMEOUT_S", "make_async_redis", "make_redis"]

STORE_TIMEOUT_S: Final = 2.0
_RETRIES: Final = 1


def make_redis(settings: Settings, timeout_s: float = STORE_TIMEOUT_S) -> redis.Redis:
    """A sync client of the store's primary."""
    retry = SyncRetry(_backoff(), _RETRIES)
    client: redis.Redis = _client(settings, timeout_s, retry, redis.Redis, redis.sentinel.Sentinel)
    return client


def make_async_redis(settings: Settings, timeout_s: float = STORE_TIMEOUT_S) -> redis.asyncio.Redis:
    """An asyncio client of the store's primary, same timeouts and retry."""
    retry = AsyncRetry(_backoff(), _RETRIES)
    client: redis.asyncio.Redis = _client(
        settings, timeout_s, retry, redis.asyncio.Redis, redis.asyncio.sentinel.Sentinel
    )
    return client


def _client(settings: Settings, timeout_s: float, retry: Any, plain: Any, sentinels: Any) -> Any:
    """A client of the URL's Redis (``plain.from_url``), or of the primary the Sentinels
    name (``sentinels(...).master_for``): sync and asyncio differ only in these classes."""
    options = _timeouts(timeout_s) | {"retry": retry}
    sentinel = settings.redis_sentinel
    if sentinel is None:
        return plain.from_url(settings.redis_url, **options)
    url = settings.redis_url
    known = sentinels(
        sentinel.addresses, sentinel_kwargs=_sentinel_options(sentinel, timeout_s, url)
    )
    return known.master_for(sentinel.service, **options, **_node_options(url))


def _timeouts(timeout_s: float) -> dict[str, Any]:
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}


def _sentinel_options(sentinel: RedisSentinel, timeout_s: float, url: str) -> dict[str, Any]:
    """How a client talks to the Sentinels themselves: their password, and TLS verified
    with the URL's ``ssl_*`` options when they are reached over TLS."""
    options = _timeouts(timeout_s)
    if sentinel.password is not None:
        options["password"] = sentinel.password.reveal().decode()
    if sentinel.tls if sentinel.tls is not None else _tls(url):
        options |= _tls_options(url)
    return options


def _node_options(url: str) -> dict[str, Any]:
    """What of the URL applies to the data nodes Sentinel names: database, user, password,
    TLS (not the host and port)."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    for where in ("host", "port", "path", "connection_class", *_tls_options(url)):
        options.pop(where, None)
    return options | (_tls_options(url) if _tls(url) else {})


def _tls(url: str) -> bool:
    return url.startswith("rediss://")


def _tls_options(url: str) -> dict[str, Any]:
    """``ssl=True`` and the URL's ``ssl_*`` query options (CA, client certificate...)."""
    parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return {"ssl": True} | {k: v for k, v in parsed.items() if k.startswith("ssl_")}


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.2, base=0.02)
