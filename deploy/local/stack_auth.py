"""Authentication of the local stack: Kafka principals, Redis users, their passwords.

Standard library only (imported by ``stack.py``). The broker's client listener takes
SASL/SCRAM-SHA-512, the KRaft ``StandardAuthorizer`` refuses whatever no ACL allows, and
``admin`` is the only super user. The principals of the local stack are:

    admin               super user: topics, principals, ACLs (``consent-stream acl sync``)
    worker              the stream workers (consent.*, partner.*, their Faust topics)
    publisher           platform services publishing consent.events.v1
    gateway             the HTTP gateway: consent.events.v1, webhook partners' acks
    partner-<name>      one per partner of the policy

Their passwords are generated once into ``<state_dir>/credentials.toml`` (mode 0600, kept
by ``reset``); ``stack.py env`` exports its path as ``CONSENT_STREAM_CREDENTIALS_FILE``
and each ``consent-stream`` command picks its own principal from it. The controller
listener (broker and controller are one process here) takes SASL/PLAIN as ``admin``:
KRaft controllers cannot authenticate with SCRAM, whose credentials live in the metadata
they serve.

The stack's Redis takes no anonymous login. Its users (``STORE_USERS``) are the roles of
``consumers.store.acl`` on every prefix, ``writer`` and ``reader``, and ``admin``; their
passwords are in the same file (``[redis]``: the Redis's address, ``[redis.users]``), and
Redis reads the SHA-256 of each from ``store_acl_file``. Each command logs in with its
role's user (``schemas.store_login``).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ADMIN",
    "MECHANISM",
    "PROTOCOL",
    "STORE_RULES",
    "STORE_USERS",
    "TLS_PROTOCOL",
    "admin_client_config",
    "admin_client_properties",
    "ensure_credentials",
    "principals",
    "read_credentials",
    "read_store_users",
    "scram_format_args",
    "security_properties",
    "store_acl_file",
    "upsert_principals",
]

ADMIN: Final = "admin"
STORE_USERS: Final = ("admin", "writer", "reader")
"""The local stack's Redis users: one per role of ``consumers.store.acl``, and the admin."""
STORE_RULES: Final = {
    "admin": ("~*", "&*", "+@all"),
    "writer": ("~*", "resetchannels", "-@all", "+@read", "+@write", "+@connection",
               "+@scripting", "-@dangerous"),
    "reader": ("~*", "resetchannels", "-@all", "+@read", "+@connection", "-@dangerous"),
}  # fmt: skip
MECHANISM: Final = "SCRAM-SHA-512"
PROTOCOL: Final = "SASL_PLAINTEXT"
TLS_PROTOCOL: Final = "SASL_SSL"  # the second client listener (``stack_tls``)
SCRAM_ITERATIONS: Final = 8192
_NAME: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CredentialsError(Exception):
    """The credentials file is unreadable or malformed (message for the person)."""


def principals(partners: Iterable[str]) -> list[str]:
    """Every principal of the local stack, admin first."""
    return [ADMIN, "worker", "publisher", "gateway", *(f"partner-{p}" for p in partners)]


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from exc


def _names(data: Mapping[str, Any], path: Path, *keys: str) -> dict[str, str]:
    table: Any = data
    for key in keys:
        table = table.get(key, {}) if isinstance(table, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise CredentialsError(f"{path}: [{'.'.join(keys)}] must map names to password strings")
    return {str(k): str(v) for k, v in table.items()}


def read_credentials(path: Path) -> dict[str, str]:
    """principal -> password from ``path`` (``[principals]`` table); {} when absent."""
    return _names(_load(path), path, "principals")


def read_store_users(path: Path) -> dict[str, str]:
    """The consent store's Redis users -> passwords (``[redis.users]``); {} when absent."""
    return _names(_load(path), path, "redis", "users")


def _write_owner_only(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def _generate(current: dict[str, str], names: Iterable[str]) -> list[str]:
    added = [n for n in names if n not in current]
    for name in added:
        if not _NAME.match(name):
            raise CredentialsError(f"principal name {name!r} is not [A-Za-z0-9._-]{{1,64}}")
        current[name] = secrets.token_urlsafe(24)
    return added


def ensure_credentials(
    path: Path, names: Iterable[str], store_address: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """The credentials of ``names``, generating a password for each one missing from the
    file (existing ones are kept); returns (credentials, names added). With
    ``store_address`` (``host:port`` of the stack's Redis), the consent store's users
    (``STORE_USERS``) too, under ``[redis]``. The file is (re)written owner-only."""
    data = _load(path)
    current = _names(data, path, "principals")
    users = _names(data, path, "redis", "users")
    table = data.get("redis", {})
    address = table.get("address") if isinstance(table, dict) else None
    added = _generate(current, names)
    if store_address is not None:
        added += [f"redis {name}" for name in _generate(users, STORE_USERS)]
        address, moved = store_address, address != store_address
    else:
        moved = False
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0
    if added or moved or mode & 0o077:
        lines = [
            "# Kafka principals and Redis users of the local stack (deploy/local/stack.py);",
            "# owner-only. Never commit or copy this file: it holds passwords.",
            "[principals]",
            *(f'"{n}" = "{p}"' for n, p in current.items()),
        ]
        if users:
            lines += ["", "[redis]", f'address = "{address}"', "", "[redis.users]"]
            lines += [f'"{n}" = "{p}"' for n, p in users.items()]
        _write_owner_only(path, "\n".join(lines) + "\n")
    return current, added


def store_acl_file(users: Mapping[str, str]) -> str:
    """The stack's Redis ACL file (``aclfile``): no ``default`` user, and each of
    ``STORE_USERS`` with the SHA-256 of its password and its role's rules (the ``writer``
    and ``reader`` rules of ``consumers.store.acl``, on every prefix; ``admin``: all)."""
    lines = ["user default off resetchannels -@all"]
    for name in STORE_USERS:
        digest = hashlib.sha256(users[name].encode()).hexdigest()
        lines.append(f"user {name} on #{digest} {' '.join(STORE_RULES[name])}")
    return "\n".join(lines) + "\n"


def _jaas(module: str, username: str, password: str, **users: str) -> str:
    extra = "".join(f' user_{u}="{p}"' for u, p in users.items())
    return f'{module} required username="{username}" password="{password}"{extra};'


def security_properties(
    host: str, port: int, controller_port: int, admin_password: str, tls_port: int | None = None
) -> dict[str, str]:
    """The broker's listeners, SASL and authorizer settings (server.properties). With
    ``tls_port``, a second client listener, ``SASL_SSL``, takes the same SCRAM logins over
    TLS (its certificate settings: ``stack_tls.listener_properties``)."""
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    clients = {PROTOCOL: port, **({TLS_PROTOCOL: tls_port} if tls_port is not None else {})}
    client_listeners = ",".join(f"{name}://{host}:{p}" for name, p in clients.items())
    props = {
        "listeners": f"{client_listeners},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": client_listeners,
        "listener.security.protocol.map": ",".join(
            [*(f"{name}:{name}" for name in clients), "CONTROLLER:SASL_PLAINTEXT"]
        ),
        "inter.broker.listener.name": PROTOCOL,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "sasl.mechanism.controller.protocol": "PLAIN",
    }
    for name in clients:
        props[f"listener.name.{name.lower()}.sasl.enabled.mechanisms"] = MECHANISM
        props[f"listener.name.{name.lower()}.{MECHANISM.lower()}.sasl.jaas.config"] = _jaas(
            scram, ADMIN, admin_password
        )
    return {
        **props,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            plain, ADMIN, admin_password, **{ADMIN: admin_password}
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN}",
    }


def scram_format_args(admin_password: str) -> list[str]:
    """``StorageTool format`` arguments that put the admin's SCRAM credential in the
    first metadata, so the broker can be administered from its first second."""
    return ["--add-scram", f"{MECHANISM}=[name={ADMIN},password={admin_password}]"]


def admin_client_config(bootstrap: str, admin_password: str) -> dict[str, Any]:
    """confluent_kafka configuration of the admin principal."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": PROTOCOL,
        "sasl.mechanism": MECHANISM,
        "sasl.username": ADMIN,
        "sasl.password": admin_password,
        "log_level": 4,
    }


def admin_client_properties(admin_password: str) -> dict[str, str]:
    """The same for the Java tools (``--command-config``)."""
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    return {
        "security.protocol": PROTOCOL,
        "sasl.mechanism": MECHANISM,
        "sasl.jaas.config": _jaas(scram, ADMIN, admin_password),
    }


def upsert_principals(mod: Any, client: Any, credentials: Mapping[str, str]) -> None:
    """Set every non-admin principal's SCRAM credential (idempotent: the same password)."""
    info = mod.ScramCredentialInfo(mod.ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts = [
        mod.UserScramCredentialUpsertion(name, info, password.encode())
        for name, password in credentials.items()
        if name != ADMIN
    ]
    if not upserts:
        return
    for future in client.alter_user_scram_credentials(upserts, request_timeout=30).values():
        future.result()
