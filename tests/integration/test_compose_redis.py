"""The compose Redis's users on a real redis-server: ``deploy/docker/redis-users.sh start``
writes the ACL file and starts Redis with it (here through a stand-in for the redis
image's entrypoint that runs the local ``redis-server`` on a free loopback port). Then
a worker with compose's Redis URL (``writer``) stores a withdrawal with no denial in
Redis's ACL log, ``check`` reads it as ``reader``, the anonymous login and the reader's
writes are refused, and the script's healthcheck passes, and fails with a wrong
password."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from streams.demo.processes import free_port

from .processes import REPO_ROOT, WorkerFactory, consent_changed, new_subject, poll_until
from .processes import worker_factory as worker_factory
from .test_cli_errors import cli

pytestmark = pytest.mark.integration

SCRIPT = REPO_ROOT / "deploy" / "docker" / "redis-users.sh"
ADS = "personalized_ads"
# the redis image's entrypoint, standing in: the local redis-server, on loopback only
_ENTRYPOINT = """#!/bin/sh
shift  # redis-server
exec "$REDIS_BINARY" "$@" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --save ''
"""


@dataclass
class ComposeRedis:
    port: int
    prefix: str
    passwords: dict[str, str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]

    def url(self, role: str, password: str | None = None) -> str:
        secret = self.passwords[role] if password is None else password
        return f"redis://{role}:{secret}@127.0.0.1:{self.port}/0"

    def healthcheck(self, **env: str) -> subprocess.CompletedProcess[str]:
        full = {**self.env, **env}
        return subprocess.run(
            ["sh", str(SCRIPT), "healthcheck"], env=full, capture_output=True, text=True, timeout=30
        )


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            client.ping()
    except redis.exceptions.AuthenticationError:
        return True  # up, and wants a login
    except redis.exceptions.RedisError:
        return False
    return True


@pytest.fixture(scope="module")
def compose_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeRedis]:
    binary, sh = shutil.which("redis-server"), shutil.which("sh")
    if binary is None or sh is None:
        pytest.fail("redis-server and sh are needed (make stack installs redis-server)")
    base = tmp_path_factory.mktemp("compose-redis")
    (base / "bin").mkdir()
    entrypoint = base / "bin" / "docker-entrypoint.sh"
    entrypoint.write_text(_ENTRYPOINT)
    entrypoint.chmod(0o755)
    port, prefix = free_port(), f"cmp{uuid.uuid4().hex[:8]}"
    passwords = {role: secrets.token_urlsafe(32) for role in ("admin", "writer", "reader")}
    env = {
        "PATH": f"{base / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "REDIS_ACL_FILE": str(base / "run" / "redis-users.acl"),
        "REDIS_KEY_PREFIX": prefix,
        "REDIS_BINARY": binary,
        "REDIS_PORT": str(port),
        "REDIS_DIR": str(base),
        **{f"REDIS_PASSWORD_{role.upper()}": pw for role, pw in passwords.items()},
    }
    log = (base / "redis.log").open("ab")
    proc = subprocess.Popen(
        [sh, str(SCRIPT), "start", "--appendonly", "yes"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    server = ComposeRedis(port, prefix, passwords, env, proc)
    try:
        poll_until(lambda: proc.poll() is not None or _answers(port), 20, "redis-server")
        assert proc.poll() is None, (base / "redis.log").read_text()
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the pid it started (exec: redis-server itself)
            proc.wait(10)


def denied(admin: redis.Redis) -> list[tuple[str, str]]:
    """(user, command) of each denial in Redis's ACL log, oldest first."""
    entries = admin.acl_log(count=1000)
    return [(str(e["username"]), str(e["object"])) for e in reversed(entries)]


def test_anonymous_logins_are_refused_and_the_healthcheck_needs_the_readers_password(
    compose_redis: ComposeRedis,
) -> None:
    anonymous = redis.Redis(port=compose_redis.port)
    with anonymous, pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.get(f"{compose_redis.prefix}:x")
    done = compose_redis.healthcheck()
    assert done.returncode == 0, done.stderr
    done = compose_redis.healthcheck(REDIS_PASSWORD_READER=secrets.token_urlsafe(32))
    assert done.returncode == 1 and "PING as reader" in done.stderr


def test_a_worker_with_composes_url_stores_as_writer_and_the_reader_checks(
    worker_factory: WorkerFactory, compose_redis: ComposeRedis
) -> None:
    env = {
        "CONSENT_STREAM_REDIS_URL": compose_redis.url("writer"),
        "CONSENT_STREAM_REDIS_PREFIX": compose_redis.prefix,
    }
    with redis.Redis.from_url(compose_redis.url("admin")) as admin:
        admin.acl_log_reset()  # the other test's refused logins
    worker = worker_factory(env=env)
    subject = new_subject("compose")
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        publisher.publish(consent_changed(subject, ADS, granted=False))
    reader = redis.Redis.from_url(compose_redis.url("reader"))
    admin = redis.Redis.from_url(compose_redis.url("admin"))
    try:
        store = ConsentStore(
            reader, worker.policy, worker.settings.subject_keys, compose_redis.prefix
        )
        worker.poll(lambda: not store.is_allowed(subject, ADS), 30.0, "the withdrawal stored")
        assert denied(admin) == []  # the worker did all its work within the writer's rules
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.hset(f"{compose_redis.prefix}:x", "a", "1")
        writer = redis.Redis.from_url(compose_redis.url("writer"))
        with writer, pytest.raises(redis.exceptions.NoPermissionError):
            writer.flushdb()
        assert denied(admin) == [("reader", "hset"), ("writer", "flushdb")]
    finally:
        reader.close()
        admin.close()
    check = cli(
        "check",
        subject,
        ADS,
        REDIS_URL=compose_redis.url("reader"),
        REDIS_PREFIX=compose_redis.prefix,
    )
    assert check.returncode == 1, check.stderr + check.stdout  # 1: may not be processed
