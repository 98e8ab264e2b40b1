"""The tests' own Kafka principal and the ACLs of the workers they start.

The local stack is secured (SASL/SCRAM-SHA-512, ACLs, ``admin`` the only super user). The
tests' own clients (creating uuid topics, reading every output) authenticate as ``admin``;
the processes under test (workers, partners, the CLI) as their own principals, from the
credentials file of ``stack.py env``, with the ACLs of their namespace synced first.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from schemas.settings import Settings
from streams.acl_sync import run_acl_sync

__all__ = ["admin_config", "admin_settings", "sync_acls"]


def admin_settings(**overrides: Any) -> Settings:
    """The environment's settings as the admin principal, with ``overrides``."""
    return replace(Settings.from_env().as_principal("admin"), **overrides)


def admin_config(bootstrap_servers: str, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration of the admin principal (for raw clients)."""
    return {**admin_settings(bootstrap_servers=bootstrap_servers).admin_config(), **extra}


def sync_acls(settings: Settings, partners: Iterable[str]) -> str:
    """The ACLs of ``settings``' namespace and app id (as ``consent-stream acl sync``)."""
    from schemas.policy import load_policy

    out = io.StringIO()
    run_acl_sync(settings, load_policy(settings.policy_path), out, partners=sorted(partners))
    return out.getvalue()
