"""Each command logs in to the local stack's Redis with its role's user, from the
credentials file; the stack's ACL file gives those users the rules of
``consumers.store.acl``, hashed passwords only, and no anonymous login."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from deploy_modules import deploy_module

from consumers.store.acl import ROLE_RULES
from schemas.errors import ConfigurationError
from schemas.redis_settings import RedisSentinel
from schemas.secrets import Secret
from schemas.settings import Settings
from schemas.store_login import StoreLogin, store_role_of, with_login, without_login

REPO = Path(__file__).resolve().parents[2]
LOGIN = StoreLogin("127.0.0.1:16379", {"writer": Secret("w:p/w@1"), "reader": Secret("r-pw")})


def _stack_auth() -> Any:
    return deploy_module("stack_auth")


def test_a_url_of_the_files_redis_logs_in_as_the_role() -> None:
    url = with_login("redis://127.0.0.1:16379/0", LOGIN, "writer")
    assert url == "redis://writer:w%3Ap%2Fw%401@127.0.0.1:16379/0"  # the password quoted
    assert with_login("redis://127.0.0.1:16379/0", LOGIN, "reader").startswith("redis://reader:")


@pytest.mark.parametrize(
    "url",
    ["redis://someone:pw@127.0.0.1:16379/0", "redis://127.0.0.1:26379/0", "rediss://h:1/0"],
)
def test_a_url_with_a_user_or_of_another_redis_is_left_alone(url: str) -> None:
    assert with_login(url, LOGIN, "writer") == url


def test_a_url_handed_on_loses_its_login_and_the_next_process_logs_in_as_its_own_role() -> None:
    url = with_login("rediss://127.0.0.1:16379/0?ssl_ca_certs=/ca.pem", LOGIN, "writer")
    assert without_login(url) == "rediss://127.0.0.1:16379/0?ssl_ca_certs=/ca.pem"
    reader = with_login(without_login(url), LOGIN, "reader")
    assert reader.startswith("rediss://reader:r-pw@127.0.0.1:16379/0")
    assert without_login("redis://127.0.0.1:16379/0") == "redis://127.0.0.1:16379/0"


def test_a_role_the_file_lacks_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="no Redis user 'admin'"):
        with_login("redis://127.0.0.1:16379/0", LOGIN, "admin")


def test_the_worker_writes_the_admin_administers_every_other_principal_reads() -> None:
    assert [store_role_of(p) for p in ("worker", "admin", "publisher", "partner-ads")] == [
        "writer",
        "admin",
        "reader",
        "reader",
    ]


def test_each_command_logs_in_with_its_role_from_the_stacks_credentials_file(
    tmp_path: Path,
) -> None:
    auth = _stack_auth()
    path = tmp_path / "credentials.toml"
    auth.ensure_credentials(path, ["admin", "worker", "publisher"], "127.0.0.1:16379")
    users = auth.read_store_users(path)
    env = {"CONSENT_STREAM_DEV_MODE": "1", "CONSENT_STREAM_CREDENTIALS_FILE": str(path)}
    base = Settings.from_env(env)
    assert base.redis_url == "redis://127.0.0.1:16379/0"  # no login until a principal
    for principal, role, store_role in [
        ("worker", "writer", None),
        ("admin", "admin", None),
        ("publisher", "reader", None),
        ("worker", "reader", "reader"),  # `check`, `status`, `report`
    ]:
        url = base.as_principal(principal, store_role).redis_url
        assert url == f"redis://{role}:{users[role]}@127.0.0.1:16379/0"
        assert users[role] not in repr(base.as_principal(principal, store_role))
    sentinel = RedisSentinel((("127.0.0.1", 26379),))
    with_sentinels = replace(base, redis_sentinel=sentinel)
    assert with_sentinels.as_principal("worker").redis_url == base.redis_url


def test_the_stack_keeps_its_redis_users_and_follows_its_address(tmp_path: Path) -> None:
    auth = _stack_auth()
    path = tmp_path / "credentials.toml"
    first, added = auth.ensure_credentials(path, ["admin"], "127.0.0.1:16379")
    assert added == ["admin", "redis admin", "redis writer", "redis reader"]
    users = auth.read_store_users(path)
    auth.ensure_credentials(path, ["admin", "worker"])  # a principal added: users kept
    assert auth.read_store_users(path) == users
    auth.ensure_credentials(path, ["admin"], "127.0.0.1:26379")  # other ports (CI's)
    data = Settings.from_env(
        {"CONSENT_STREAM_DEV_MODE": "1", "CONSENT_STREAM_CREDENTIALS_FILE": str(path)}
    ).store_login
    assert data is not None and data.address == "127.0.0.1:26379"
    assert auth.read_store_users(path) == users and auth.read_credentials(path) == {
        "admin": first["admin"],
        "worker": auth.read_credentials(path)["worker"],
    }


def test_the_stacks_acl_file_has_no_anonymous_user_and_no_password_in_clear() -> None:
    auth = _stack_auth()
    users = {"admin": "a-pw-1", "writer": "w-pw-1", "reader": "r-pw-1"}
    lines = auth.store_acl_file(users).splitlines()
    assert lines[0] == "user default off resetchannels -@all"
    for line, name in zip(lines[1:], ("admin", "writer", "reader"), strict=True):
        digest = hashlib.sha256(users[name].encode()).hexdigest()
        assert line.startswith(f"user {name} on #{digest} ")
        assert users[name] not in line
    for role in ("writer", "reader"):  # the rules of consumers.store.acl, on every prefix
        assert auth.STORE_RULES[role][:2] == ("~*", "resetchannels")
        assert auth.STORE_RULES[role][2:] == ROLE_RULES[role]
