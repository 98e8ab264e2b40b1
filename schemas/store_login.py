"""The consent store's Redis login from a development credentials file (the local stack's).

A deployment puts its Redis user in ``CONSENT_STREAM_REDIS_URL``
(``redis://consent-writer:<password>@host:port/0``; the users and their rules:
``consumers.store.acl``). The local stack's Redis has the same roles as users named after
them (``writer``, ``reader``, and ``admin`` for the tests and tools), and their passwords in
the credentials file that also holds the Kafka principals' (``[redis]``: the Redis they
belong to, ``[redis.users]``). Each command then logs in with the role it needs: the
worker (and ``rebuild-store``, ``replay``...) as ``writer``, ``check``, ``status`` and
``report`` as ``reader``, the admin principal as ``admin`` (``Settings.as_principal``).

A URL that names a user already, or another Redis than the file's (a test's Sentinels), is
left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

from schemas.errors import ConfigurationError
from schemas.secrets import Secret

__all__ = [
    "STORE_ROLES",
    "StoreLogin",
    "store_login",
    "store_role_of",
    "with_login",
    "without_login",
]

STORE_ROLES: Final = ("admin", "writer", "reader")
_ROLE_OF_PRINCIPAL: Final = {"admin": "admin", "worker": "writer"}


@dataclass(frozen=True)
class StoreLogin:
    """The users of one Redis (``address``: ``host:port``) and their passwords."""

    address: str
    users: Mapping[str, Secret] = field(repr=False)


def store_login(data: Mapping[str, Any], what: str) -> StoreLogin | None:
    """The ``[redis]`` table of a parsed credentials file; None when it has none."""
    table = data.get("redis")
    if table is None:
        return None
    users = table.get("users") if isinstance(table, dict) else None
    address = table.get("address") if isinstance(table, dict) else None
    if (
        not isinstance(address, str)
        or not isinstance(users, dict)
        or not all(isinstance(v, str) for v in users.values())
    ):
        raise ConfigurationError(
            f'{what}: [redis] needs address = "host:port" and a [redis.users] table of '
            "name = password"
        )
    return StoreLogin(address, {str(k): Secret(v) for k, v in users.items()})


def store_role_of(principal: str) -> str:
    """The store role a Kafka principal's commands need: the worker writes, the admin
    administers, every other one only reads."""
    return _ROLE_OF_PRINCIPAL.get(principal, "reader")


def with_login(url: str, login: StoreLogin, role: str) -> str:
    """``url`` logged in as ``role``'s user, when it names ``login``'s Redis and no user."""
    parts = urlsplit(url)
    if parts.username or parts.password or parts.hostname is None:
        return url
    if f"{parts.hostname}:{parts.port or 6379}" != login.address:
        return url
    password = login.users.get(role)
    if password is None:
        raise ConfigurationError(
            f"no Redis user {role!r} in the credentials file (it has: "
            f"{', '.join(sorted(login.users))})"
        )
    userinfo = f"{quote(role, safe='')}:{quote(password.reveal().decode(), safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def without_login(url: str) -> str:
    """``url`` without its user and password: a process given it logs in as its own role
    (``with_login``), not as the one who handed the URL on."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
