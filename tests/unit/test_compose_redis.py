"""The compose Redis's users (deploy/docker/redis-users.sh), without Docker: the ACL file
the script writes has the rules of ``consumers.store.acl`` on the workers' prefix and only
hashes of the passwords; it refuses placeholders and unsafe passwords before starting
anything; the workers log in as ``writer`` with their own password and no other service
gets a Redis password. The script runs under ``sh`` with stub ``docker-entrypoint.sh``
and ``redis-cli`` (tests/integration/test_compose_redis.py starts a real redis-server
with it)."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sre_contract import REPO_ROOT
from test_compose import (
    consent_services,
    env_example,
    env_of,
    mounts,
    raw_services,
    references,
    secret_var,
    services,
    settings_of,
)

from consumers.store.acl import ROLE_RULES, Role, setuser_args
from schemas.secrets import Secret

SCRIPT = REPO_ROOT / "deploy" / "docker" / "redis-users.sh"
IN_IMAGE = "/opt/consent-stream/redis-users.sh"
ROLES = ("ADMIN", "WRITER", "READER")

_ENTRYPOINT = """#!/bin/sh
printf '%s\\n' "$@" >"$STUB_ARGS"
"""
_REDIS_CLI = """#!/bin/sh
printf '%s\\n' "$@" >"$STUB_ARGS"
printf '%s' "$REDISCLI_AUTH" >"$STUB_AUTH"
echo "${STUB_ANSWER-PONG}"
"""


@dataclass
class Run:
    done: subprocess.CompletedProcess[str]
    args: list[str]  # what the stub was called with; [] if it was not
    acl: str | None  # the ACL file written, if any
    acl_mode: int | None
    acl_path: Path  # REDIS_ACL_FILE, as the test set it
    auth: str | None = None  # REDISCLI_AUTH as redis-cli got it


def run_script(tmp_path: Path, mode: str, env: dict[str, str], *extra: str) -> Run:
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    base = Path(os.path.realpath(tmp_path)) / secrets.token_hex(4)
    stubs = base / "bin"
    stubs.mkdir(parents=True)
    for name, text in (("docker-entrypoint.sh", _ENTRYPOINT), ("redis-cli", _REDIS_CLI)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    acl, args, auth = base / "run" / "users.acl", base / "args", base / "auth"
    full_env = {
        "PATH": f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "REDIS_ACL_FILE": str(acl),
        "STUB_ARGS": str(args),
        "STUB_AUTH": str(auth),
        **env,
    }
    done = subprocess.run(
        [sh, str(SCRIPT), mode, *extra], env=full_env, capture_output=True, text=True, timeout=30
    )
    return Run(
        done,
        args.read_text().splitlines() if args.exists() else [],
        acl.read_text() if acl.exists() else None,
        acl.stat().st_mode & 0o777 if acl.exists() else None,
        acl,
        auth.read_text() if auth.exists() else None,
    )


def passwords() -> dict[str, str]:
    return {f"REDIS_PASSWORD_{role}": secrets.token_urlsafe(32) for role in ROLES}


def expected_line(user: str, password: str, prefix: str, role: Role) -> str:
    """The ACL file's line for a store role: ``setuser_args`` with the password hashed."""
    args = setuser_args(user, Secret(password), prefix, role)
    assert args[1:4] == ["reset", "on", f">{password}"]
    digest = hashlib.sha256(password.encode()).hexdigest()
    return " ".join(["user", user, "on", f"#{digest}", *args[4:]])


def test_the_acl_file_has_the_store_roles_on_the_prefix_and_only_hashes(tmp_path: Path) -> None:
    env = {**passwords(), "REDIS_KEY_PREFIX": "cs"}
    run = run_script(tmp_path, "start", env, "--appendonly", "yes")
    assert run.done.returncode == 0, run.done.stderr
    assert run.acl is not None and run.acl_mode == 0o600
    admin = hashlib.sha256(env["REDIS_PASSWORD_ADMIN"].encode()).hexdigest()
    assert run.acl.splitlines() == [
        "user default off resetchannels -@all",
        f"user admin on #{admin} ~* &* +@all",
        expected_line("writer", env["REDIS_PASSWORD_WRITER"], "cs", "writer"),
        expected_line("reader", env["REDIS_PASSWORD_READER"], "cs", "reader"),
    ]
    assert set(ROLE_RULES) == {"writer", "reader"}  # a new role needs its line
    for role in ROLES:
        assert env[f"REDIS_PASSWORD_{role}"] not in run.acl
    assert run.args == ["redis-server", "--appendonly", "yes", "--aclfile", str(run.acl_path)]
    assert [p.name for p in run.acl_path.parent.iterdir()] == ["users.acl"]  # no .new left
    assert "prefix cs" in run.done.stdout
    assert not any(env[f"REDIS_PASSWORD_{role}"] in run.done.stdout for role in ROLES)


def test_placeholders_and_unsafe_passwords_start_nothing(tmp_path: Path) -> None:
    example = {k: v for k, v in env_example().items() if k.startswith("REDIS_PASSWORD_")}
    assert set(example) == {f"REDIS_PASSWORD_{role}" for role in ROLES}
    run = run_script(tmp_path, "start", example)
    assert run.done.returncode == 1 and run.args == [] and run.acl is None
    assert "placeholder" in run.done.stderr and "token_urlsafe" in run.done.stderr
    for bad in ("short-1234", "with space in the password", "quote'in-the-password", ""):
        run = run_script(tmp_path, "start", {**passwords(), "REDIS_PASSWORD_READER": bad})
        assert run.done.returncode == 1 and run.args == [] and run.acl is None, bad
        assert "REDIS_PASSWORD_READER" in run.done.stderr, bad
    missing = passwords()
    del missing["REDIS_PASSWORD_ADMIN"]
    run = run_script(tmp_path, "start", missing)
    assert run.done.returncode == 1 and "REDIS_PASSWORD_ADMIN is empty" in run.done.stderr
    for prefix in ("cs:*", "a b", "*"):
        run = run_script(tmp_path, "start", {**passwords(), "REDIS_KEY_PREFIX": prefix})
        assert run.done.returncode == 1 and run.acl is None, prefix
        assert "REDIS_KEY_PREFIX" in run.done.stderr


def test_the_healthcheck_pings_as_reader_with_the_password_out_of_the_arguments(
    tmp_path: Path,
) -> None:
    env = passwords()
    run = run_script(tmp_path, "healthcheck", env)
    assert run.done.returncode == 0, run.done.stderr
    assert run.args == ["-h", "127.0.0.1", "-p", "6379", "--user", "reader", "ping"]
    assert run.auth == env["REDIS_PASSWORD_READER"]
    run = run_script(tmp_path, "healthcheck", {**env, "STUB_ANSWER": "NOAUTH Authentication"})
    assert run.done.returncode == 1 and "PING as reader: NOAUTH" in run.done.stderr
    run = run_script(tmp_path, "healthcheck", {})
    assert run.done.returncode == 1 and run.args == []
    assert run_script(tmp_path, "stop", env).done.returncode == 1


def test_compose_starts_redis_through_the_script_with_the_workers_prefix() -> None:
    redis = services()["redis"]
    assert mounts(redis)["./deploy/docker/redis-users.sh"] == IN_IMAGE
    assert mounts(redis)["redis-data"] == "/data"
    assert redis["command"][:3] == ["sh", IN_IMAGE, "start"]
    assert redis["healthcheck"]["test"] == ["CMD", "sh", IN_IMAGE, "healthcheck"]
    env = env_of(redis)
    workers = consent_services("worker")
    assert len(workers) >= 2
    for name in workers:
        assert settings_of(services()[name]).redis_prefix == env["REDIS_KEY_PREFIX"]
    for role in ROLES:
        var = f"REDIS_PASSWORD_{role}"
        assert secret_var(env_of(raw_services()["redis"])[var]) == var
        assert env[var] == env_example()[var]
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(SCRIPT)], check=True)


def test_the_workers_log_in_as_writer_and_no_other_service_gets_a_redis_password() -> None:
    workers = consent_services("worker")
    for name in workers:
        url = urlsplit(settings_of(services()[name]).redis_url)
        assert (url.scheme, url.hostname, url.port, url.path) == ("redis", "redis", 6379, "/0")
        assert url.username == "writer", name
        assert url.password == env_example()["REDIS_PASSWORD_WRITER"], name
    for name, service in raw_services().items():
        used = {var for var, _ in references(service) if var.startswith("REDIS_PASSWORD_")}
        if name == "redis":
            assert used == {f"REDIS_PASSWORD_{role}" for role in ROLES}
        elif name in workers:
            assert used == {"REDIS_PASSWORD_WRITER"}, name
        else:
            assert used == set(), name
