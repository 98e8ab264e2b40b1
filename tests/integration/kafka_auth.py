"""The tests' own Kafka principal and the ACLs of the workers they start.

The local stack is secured (SASL/SCRAM-SHA-512, ACLs, ``admin`` the only super user). The
tests' own clients (creating uuid topics, reading every output) authenticate as ``admin``;
the processes under test (workers, partners, the CLI) as their own principals, from the
credentials file of ``stack.py env``, with the ACLs of their namespace synced first.

``principal_credentials`` makes sure a principal the running stack may predate (one added
to ``deploy/local/stack_auth.principals`` after the stack's last ``up``) can log in: its
SCRAM credential upserted as admin, as ``stack.py up`` does. ``webhook_policy`` writes the
packaged policy with some partners delivered by webhook (the gateway may write their acks).
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from schemas.kafka_security import read_credentials
from schemas.policy import load_policy
from schemas.settings import Settings
from streams.acl.sync import run_acl_sync

__all__ = [
    "admin_config",
    "admin_redis_url",
    "admin_settings",
    "as_principal",
    "principal_credentials",
    "sync_acls",
    "webhook_policy",
]

STACK_AUTH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack_auth.py"


def admin_settings(**overrides: Any) -> Settings:
    """The environment's settings as the admin principal, with ``overrides``."""
    return replace(Settings.from_env().as_principal("admin"), **overrides)


def admin_redis_url(redis_url: str) -> str:
    """``redis_url`` logged in as the stack's Redis ``admin`` (``schemas.store_login``);
    unchanged without a credentials file or for another Redis."""
    return replace(Settings.from_env(), redis_url=redis_url).as_principal("admin").redis_url


def admin_config(bootstrap_servers: str, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration of the admin principal (for raw clients)."""
    return {**admin_settings(bootstrap_servers=bootstrap_servers).admin_config(), **extra}


def sync_acls(settings: Settings, partners: Iterable[str]) -> str:
    """The ACLs of ``settings``' namespace and app id (as ``consent-stream acl sync``)."""
    out = io.StringIO()
    run_acl_sync(settings, load_policy(settings.policy_path), out, partners=sorted(partners))
    return out.getvalue()


def _stack_auth() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_stack_auth_for_tests", STACK_AUTH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def principal_credentials(name: str, tmp_dir: Path) -> Path:
    """A credentials file holding ``name``'s password, whose SCRAM credential the broker has.

    The environment's file when it lists ``name`` (a stack started with it); otherwise a
    copy in ``tmp_dir`` (0600) with a password generated for ``name``. Either way the
    password is upserted as admin (``stack_auth.upsert_principals``, as ``stack.py up``
    does: the same password again changes nothing), and this returns once the broker
    lists the credential (logins work from then on)."""
    from confluent_kafka import admin as mod

    env_file = Settings.from_env().credentials_file
    assert env_file, "CONSENT_STREAM_CREDENTIALS_FILE is not set (make env)"
    path = Path(env_file)
    auth = _stack_auth()
    if name not in read_credentials(str(path)):
        copy = tmp_dir / "credentials.toml"
        shutil.copyfile(path, copy)
        copy.chmod(0o600)
        path = copy
    credentials, _ = auth.ensure_credentials(path, [name])
    client = mod.AdminClient(admin_settings().admin_config())
    auth.upsert_principals(mod, client, {name: credentials[name]})
    deadline = time.monotonic() + 30
    while True:
        (future,) = client.describe_user_scram_credentials([name], request_timeout=10).values()
        try:
            if future.result().scram_credential_infos:
                return path
        except mod.KafkaException:
            pass  # not known yet
        assert time.monotonic() < deadline, f"the broker does not list {name}'s credential"
        time.sleep(0.2)


def as_principal(settings: Settings, name: str, credentials_file: Path) -> Settings:
    """``settings`` logged in as ``name`` from ``credentials_file``."""
    with_file = replace(
        settings,
        credentials=read_credentials(str(credentials_file)),
        credentials_file=str(credentials_file),
    )
    return with_file.as_principal(name)


def webhook_policy(path: Path, partners: Iterable[str], url: str) -> Path:
    """The packaged policy with ``partners`` delivered by webhook to ``url``, at ``path``."""
    text = (resources.files("schemas") / "policy" / "policy.v1.toml").read_text("utf-8")
    for partner in partners:
        header = f"[partners.{partner}]\n"
        assert header in text, partner
        text = text.replace(header, f'{header}delivery = "webhook"\nwebhook_url = "{url}"\n', 1)
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    assert {p for p in partners if policy.partners[p].webhook} == set(partners)
    return path
