"""Where the store's Redis is: a URL, or Sentinels (``schemas.redis_settings``), and the
clients built from it (``consumers.store.clients``; nothing connects here)."""

from __future__ import annotations

import pytest
import redis.asyncio.sentinel
import redis.sentinel

from consumers.store.clients import make_async_redis, make_redis
from schemas.errors import ConfigurationError
from schemas.redis_settings import RedisSentinel, parse_addresses
from schemas.settings import ENV_PREFIX, Settings

BASE = {ENV_PREFIX + "DEV_MODE": "1"}
SENTINEL_SECRET = "-".join(("sentinel", "secret", "123"))  # a test value, not a password


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **{ENV_PREFIX + k: v for k, v in env.items()}})


def test_without_sentinels_the_url_is_the_store() -> None:
    s = settings()
    assert s.redis_sentinel is None and s.redis_min_replicas == 0
    client = make_redis(s)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 16379, 0)
    assert kwargs["socket_timeout"] == 2.0


def test_sentinels_service_password_and_replicas_are_read_once() -> None:
    s = settings(
        REDIS_SENTINELS="10.0.0.1:26379, sentinel-2:26380,[::1]:26381",
        REDIS_SENTINEL_SERVICE="store-eu",
        REDIS_SENTINEL_PASSWORD=SENTINEL_SECRET,
        REDIS_MIN_REPLICAS="1",
    )
    assert s.redis_sentinel is not None
    assert s.redis_sentinel.addresses == (
        ("10.0.0.1", 26379),
        ("sentinel-2", 26380),
        ("::1", 26381),
    )
    assert s.redis_sentinel.service == "store-eu" and s.redis_min_replicas == 1
    assert SENTINEL_SECRET not in repr(s)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"REDIS_SENTINELS": "sentinel-1"}, "'sentinel-1' is not host:port"),
        ({"REDIS_SENTINELS": "sentinel-1:0"}, "is not host:port"),
        ({"REDIS_SENTINELS": "s:26379,s:x"}, "'s:x' is not host:port"),
        ({"REDIS_SENTINELS": " , "}, "names no Sentinel"),
        ({"REDIS_SENTINEL_SERVICE": "store-eu"}, "need CONSENT_STREAM_REDIS_SENTINELS"),
        ({"REDIS_SENTINEL_TLS": "true"}, "need CONSENT_STREAM_REDIS_SENTINELS"),
        (
            {"REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_TLS": "sometimes"},
            "REDIS_SENTINEL_TLS: 'sometimes' is neither true nor false",
        ),
        ({"REDIS_MIN_REPLICAS": "-1"}, "must be positive"),
    ],
)
def test_bad_sentinel_settings_are_refused_by_name(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        settings(**env)


def test_with_sentinels_the_clients_ask_them_for_the_primary() -> None:
    s = settings(
        REDIS_URL="redis://:node-password@ignored-host:1/3",
        REDIS_SENTINELS="127.0.0.1:26379",
        REDIS_SENTINEL_SERVICE="store-eu",
        REDIS_SENTINEL_PASSWORD=SENTINEL_SECRET,
    )
    for client, pool_type in (
        (make_redis(s), redis.sentinel.SentinelConnectionPool),
        (make_async_redis(s), redis.asyncio.sentinel.SentinelConnectionPool),
    ):
        pool = client.connection_pool
        assert isinstance(pool, pool_type)
        assert pool.service_name == "store-eu" and pool.is_master
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"]) == (3, "node-password")
        assert "host" not in kwargs and "port" not in kwargs  # the Sentinels say where
        (sentinel,) = pool.sentinel_manager.sentinels
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert (sentinel_kwargs["host"], sentinel_kwargs["port"]) == ("127.0.0.1", 26379)
        assert sentinel_kwargs["password"] == SENTINEL_SECRET


CA = "/etc/consent-stream/redis-ca.pem"


@pytest.mark.parametrize(
    ("url", "tls", "sentinels_over_tls", "nodes_over_tls"),
    [
        (f"rediss://:pw@h:1/0?ssl_ca_certs={CA}", None, True, True),  # as the data nodes
        (f"rediss://:pw@h:1/0?ssl_ca_certs={CA}", "false", False, True),
        (f"redis://:pw@h:1/0?ssl_ca_certs={CA}", "true", True, False),
        ("redis://:pw@h:1/0", None, False, False),
    ],
)
def test_sentinels_are_reached_over_tls_when_said_or_when_the_data_nodes_are(
    url: str, tls: str | None, sentinels_over_tls: bool, nodes_over_tls: bool
) -> None:
    env = {"REDIS_URL": url, "REDIS_SENTINELS": "127.0.0.1:26379"}
    s = settings(**env, **({"REDIS_SENTINEL_TLS": tls} if tls is not None else {}))
    for client, ssl_pool in (
        (make_redis(s), redis.sentinel.SentinelManagedSSLConnection),
        (make_async_redis(s), redis.asyncio.sentinel.SentinelManagedSSLConnection),
    ):
        pool = client.connection_pool
        assert (pool.connection_class is ssl_pool) is nodes_over_tls
        assert (pool.connection_kwargs.get("ssl_ca_certs") == CA) is nodes_over_tls
        (sentinel,) = pool.sentinel_manager.sentinels
        kwargs = sentinel.connection_pool.connection_kwargs
        assert (kwargs.get("ssl_ca_certs") == CA) is sentinels_over_tls
        over_tls = "SSL" in sentinel.connection_pool.connection_class.__name__
        assert over_tls is sentinels_over_tls


def test_addresses_parse_as_given() -> None:
    assert parse_addresses("a:1", "X") == (("a", 1),)
    assert RedisSentinel((("a", 1),)).service == "consent-store"
