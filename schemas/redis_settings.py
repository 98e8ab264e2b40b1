"""Where the consent store's Redis primary is, and how safe a write must be.

By default ``CONSENT_STREAM_REDIS_URL`` names the one Redis. With Redis Sentinel (a primary,
its replicas, and Sentinels that promote a replica when the primary fails):

- ``CONSENT_STREAM_REDIS_SENTINELS``: ``host:port,host:port`` of the Sentinels; clients ask
  them where the primary of ``CONSENT_STREAM_REDIS_SENTINEL_SERVICE`` (default
  ``consent-store``, Sentinel's ``monitor`` name) is, and ask again after a failover.
  The URL then gives only the database, user and password of the data nodes.
- ``CONSENT_STREAM_REDIS_SENTINEL_PASSWORD``: the Sentinels' own password (``requirepass``
  in sentinel.conf), if they have one.
- ``CONSENT_STREAM_REDIS_SENTINEL_TLS``: ``true`` or ``false``, whether the Sentinels are
  reached over TLS (``tls-port`` in sentinel.conf); unset, they are when the data nodes
  are (a ``rediss://`` URL). They are verified with the URL's ``ssl_*`` options (for
  example ``?ssl_ca_certs=/etc/consent-stream/redis-ca.pem``), like the data nodes.
- ``CONSENT_STREAM_REDIS_MIN_REPLICAS``: the worker's writes count only once this many
  replicas have them (``WAIT``); fewer, and the write is retried, as while Redis is down.
  Replication is asynchronous: without it, writes the primary took but had not passed on
  when it failed are lost with it (``consent-stream rebuild-store`` restores them from
  ``consent.state.v1``). Default 0: no wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from schemas.errors import ConfigurationError
from schemas.secrets import Secret

__all__ = ["DEFAULT_SENTINEL_SERVICE", "RedisSentinel", "parse_addresses", "sentinel_from_env"]

DEFAULT_SENTINEL_SERVICE: Final = "consent-store"


@dataclass(frozen=True, slots=True)
class RedisSentinel:
    """The Sentinels that know the consent store's primary, by its service name."""

    addresses: tuple[tuple[str, int], ...]
    service: str = DEFAULT_SENTINEL_SERVICE
    password: Secret | None = field(default=None, repr=False)
    tls: bool | None = None
    """Whether the Sentinels are reached over TLS; None: as the data nodes are."""


def parse_addresses(text: str, what: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` -> ((host, port), ...); a clear error naming ``what``."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"{what}: {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise ConfigurationError(f"{what} names no Sentinel (host:port,host:port)")
    return tuple(addresses)


def sentinel_from_env(env: Mapping[str, str], prefix: str) -> RedisSentinel | None:
    """The Sentinels of ``{prefix}REDIS_SENTINELS`` (None when unset)."""
    text = env.get(prefix + "REDIS_SENTINELS", "").strip()
    service = env.get(prefix + "REDIS_SENTINEL_SERVICE", "").strip()
    password = env.get(prefix + "REDIS_SENTINEL_PASSWORD", "")
    tls = _flag(env.get(prefix + "REDIS_SENTINEL_TLS", ""), prefix + "REDIS_SENTINEL_TLS")
    if not text:
        if service or password or tls is not None:
            raise ConfigurationError(
                f"{prefix}REDIS_SENTINEL_SERVICE, _PASSWORD and _TLS need {prefix}REDIS_SENTINELS"
            )
        return None
    return RedisSentinel(
        parse_addresses(text, prefix + "REDIS_SENTINELS"),
        service or DEFAULT_SENTINEL_SERVICE,
        Secret(password) if password else None,
        tls,
    )


def _flag(text: str, what: str) -> bool | None:
    """``true``/``false`` (also 1/0, yes/no, on/off); None when empty."""
    word = text.strip().lower()
    if not word:
        return None
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{what}: {text!r} is neither true nor false")
