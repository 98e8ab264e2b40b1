"""Kafka security settings: protocol, SASL mechanism, the principal and its password.

A deployment names its principal (``CONSENT_STREAM_SASL_USERNAME`` and
``CONSENT_STREAM_SASL_PASSWORD``). A development set-up (the local stack) instead points
``CONSENT_STREAM_CREDENTIALS_FILE`` at a file holding every principal's password, and
each command authenticates as its own principal (``Settings.as_principal``).
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from schemas.errors import ConfigurationError
from schemas.secrets import Secret
from schemas.store_login import store_login

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_ENV",
    "SECURITY_PROTOCOLS",
    "env_choice",
    "kafka_security",
    "read_credentials",
    "security_env",
]

ENV_PREFIX: Final = "CONSENT_STREAM_"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
SASL_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
SECURITY_ENV: Final = tuple(
    ENV_PREFIX + name
    for name in (
        "SECURITY_PROTOCOL",
        "SASL_MECHANISM",
        "SASL_USERNAME",
        "SASL_PASSWORD",
        "SSL_CA_LOCATION",
        "CREDENTIALS_FILE",
    )
)
"""The settings of this module: what a child process needs to reach a secured broker."""


def security_env(env: Mapping[str, str]) -> dict[str, str]:
    """The Kafka security settings of ``env`` (for a child process's environment)."""
    return {name: env[name] for name in SECURITY_ENV if name in env}


def read_credentials(path: str) -> dict[str, Secret]:
    """principal -> password of a credentials file (TOML ``[principals]``, owner-only, as
    the local stack writes it); a clear error when unreadable, malformed or readable by
    others."""
    return _principals(_credentials_data(path), _what(path))


def _what(path: str) -> str:
    return f"{ENV_PREFIX}CREDENTIALS_FILE ({path})"


def _credentials_data(path: str) -> dict[str, Any]:
    what = _what(path)
    try:
        mode = stat.S_IMODE(Path(path).stat().st_mode)
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigurationError(f"{what}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{what}: not TOML: {exc}") from None
    if mode & 0o077:
        raise ConfigurationError(f"{what}: readable by others (mode {mode:o}); chmod 600 it")
    return data


def _principals(data: Mapping[str, Any], what: str) -> dict[str, Secret]:
    table = data.get("principals")
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ConfigurationError(f"{what}: needs a [principals] table of name = password")
    return {str(name): Secret(password) for name, password in table.items()}


def env_choice(
    env: Mapping[str, str],
    name: str,
    allowed: tuple[str, ...],
    default: str,
    case: Callable[[str], str] = str.upper,
) -> str:
    """``CONSENT_STREAM_<name>``, one of ``allowed`` (compared after ``case``), else
    ``default``; a clear error for anything else."""
    raw = env.get(ENV_PREFIX + name, "").strip()
    value = case(raw) or default
    if value not in allowed:
        raise ConfigurationError(
            f"{ENV_PREFIX}{name} must be one of {', '.join(allowed)}, not {raw!r}"
        )
    return value


def _sasl_login(env: Mapping[str, str]) -> tuple[str | None, Secret | None]:
    user = env.get(ENV_PREFIX + "SASL_USERNAME", "").strip() or None
    password = env.get(ENV_PREFIX + "SASL_PASSWORD", "")
    if (user is None) != (not password):
        raise ConfigurationError(
            f"{ENV_PREFIX}SASL_USERNAME and {ENV_PREFIX}SASL_PASSWORD go together"
        )
    return user, Secret(password) if password else None


def _ca_location(env: Mapping[str, str]) -> str | None:
    """``CONSENT_STREAM_SSL_CA_LOCATION``: a readable PEM file of CA certificates, or a
    directory of them (OpenSSL's hashed layout); None when unset (the system's CAs)."""
    raw = env.get(ENV_PREFIX + "SSL_CA_LOCATION", "").strip()
    if not raw:
        return None
    path = Path(raw)
    readable = path.is_dir() or (path.is_file() and _opens(path))
    if not readable:
        why = "not readable" if path.exists() else "no such file or directory"
        raise ConfigurationError(
            f"{ENV_PREFIX}SSL_CA_LOCATION={raw!r}: {why} (the CA certificates, PEM, that "
            "issued the brokers' TLS certificates)"
        )
    return raw


def _opens(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def _from_file(path: str | None) -> dict[str, Any]:
    """The credentials file's Kafka principals and consent store login (Settings fields)."""
    if path is None:
        return {"credentials": {}, "credentials_file": None, "store_login": None}
    data = _credentials_data(path)
    return {
        "credentials": _principals(data, _what(path)),
        "credentials_file": path,
        "store_login": store_login(data, _what(path)),
    }


def kafka_security(env: Mapping[str, str]) -> dict[str, Any]:
    """The Kafka security settings of ``env`` (Settings fields)."""
    user, password = _sasl_login(env)
    # an explicit principal wins: the credentials file is for development set-ups
    path = None if user else env.get(ENV_PREFIX + "CREDENTIALS_FILE", "").strip() or None
    protocol_default = "SASL_PLAINTEXT" if user or path else "PLAINTEXT"
    return {
        "security_protocol": env_choice(
            env, "SECURITY_PROTOCOL", SECURITY_PROTOCOLS, protocol_default
        ),
        "sasl_mechanism": env_choice(env, "SASL_MECHANISM", SASL_MECHANISMS, "SCRAM-SHA-512"),
        "sasl_username": user,
        "sasl_password": password,
        "ssl_ca_location": _ca_location(env),
        **_from_file(path),
    }
