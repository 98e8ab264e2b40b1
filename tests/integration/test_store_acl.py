"""The consent store's Redis ACL users (``consumers.store.acl``) on the stack's Redis: a
worker and ``rebuild-store`` do all their work as a ``writer`` of their prefix, and Redis
logs no denial for it; ``check``, ``status`` and the client library read as a ``reader``,
which can write nothing and read no other prefix; a worker given a reader's URL fails
its batches with a clear reason instead of writing."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from consumers.store.acl import Role, setuser_args
from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.policy import load_policy
from schemas.secrets import Secret

from .processes import WorkerFactory, WorkerProcess, consent_changed, new_subject
from .processes import worker_factory as worker_factory
from .test_cli_errors import cli, one_line

pytestmark = pytest.mark.integration

ADS = "personalized_ads"
TIMEOUT_S = 30.0
POLICY = load_policy()


@dataclass(frozen=True)
class StoreUsers:
    prefix: str
    urls: dict[Role, str]
    names: dict[Role, str]

    def env(self, role: Role) -> dict[str, str]:
        return {"REDIS_URL": self.urls[role], "REDIS_PREFIX": self.prefix}


def _user_url(redis_url: str, user: str, password: str) -> str:
    scheme, rest = redis_url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.rsplit('@', 1)[-1]}"


@pytest.fixture(scope="module")
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def users(admin: redis.Redis, redis_url: str) -> Iterator[StoreUsers]:
    prefix = f"acl{uuid.uuid4().hex[:8]}"
    urls: dict[Role, str] = {}
    names: dict[Role, str] = {}
    for role in ("writer", "reader"):
        name, password = f"{prefix}-{role}", secrets.token_urlsafe(24)
        admin.execute_command("ACL", "SETUSER", *setuser_args(name, Secret(password), prefix, role))
        urls[role], names[role] = _user_url(redis_url, name, password), name
    yield StoreUsers(prefix, urls, names)
    admin.execute_command("ACL", "DELUSER", *names.values())
    keys = list(admin.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        admin.delete(*keys)


def denials(admin: redis.Redis, user: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = admin.acl_log(count=1000)
    return [e for e in entries if e.get("username") == user]


@pytest.fixture(scope="module")
def writer_worker(worker_factory: WorkerFactory, users: StoreUsers) -> WorkerProcess:
    env = {f"CONSENT_STREAM_{k}": v for k, v in users.env("writer").items()}
    return worker_factory(env=env)


def wait_denied(worker: WorkerProcess, users: StoreUsers, subject: str) -> None:
    """Until the store, read as the reader, denies ads to ``subject``."""
    reader = redis.Redis.from_url(users.urls["reader"])
    store = ConsentStore(reader, POLICY, worker.settings.subject_keys, users.prefix)
    try:
        worker.poll(lambda: not store.is_allowed(subject, ADS), TIMEOUT_S, "the denial")
    finally:
        reader.close()


@pytest.fixture(scope="module")
def withdrawn(writer_worker: WorkerProcess, users: StoreUsers) -> str:
    """A subject the writer worker stored as having withdrawn ads."""
    subject = new_subject("acl")
    with ConsentPublisher(writer_worker.settings, writer_worker.policy) as publisher:
        publisher.publish(consent_changed(subject, ADS, granted=False))
    wait_denied(writer_worker, users, subject)
    return subject


def test_a_worker_with_the_writer_rules_stores_and_answers_without_a_denial(
    writer_worker: WorkerProcess, withdrawn: str, users: StoreUsers, admin: redis.Redis
) -> None:
    code, view = writer_worker.get_json(f"/consent/{withdrawn}")  # its HTTP API's own client
    assert code == 200 and view["purposes"][ADS]["allowed"] is False, view
    assert writer_worker.http_status("/healthz") == 200
    assert denials(admin, users.names["writer"]) == []


def test_rebuild_store_runs_as_a_writer(
    writer_worker: WorkerProcess, withdrawn: str, users: StoreUsers, admin: redis.Redis
) -> None:
    for key in admin.scan_iter(match=f"{users.prefix}:*", count=1000):
        admin.delete(key)  # the store lost: rebuilt from consent.state.v1
    namespace = writer_worker.settings.topic_namespace
    result = cli("rebuild-store", TOPIC_NAMESPACE=namespace, **users.env("writer"))
    assert result.returncode == 0, result.stderr
    check = cli("check", withdrawn, ADS, **users.env("reader"))
    assert check.returncode == 1, check.stderr + check.stdout  # 1: may not be processed
    assert denials(admin, users.names["writer"]) == []


def test_the_reader_reads_its_prefix_only_and_writes_nothing(
    withdrawn: str, users: StoreUsers
) -> None:
    assert cli("check", withdrawn, ADS, **users.env("reader")).returncode == 1
    assert cli("check", new_subject("acl"), ADS, **users.env("reader")).returncode == 0
    reader = redis.Redis.from_url(users.urls["reader"])
    writer = redis.Redis.from_url(users.urls["writer"])
    try:
        for attempt in (
            lambda: reader.hset(f"{users.prefix}:x", "a", "1"),
            lambda: reader.delete(f"{users.prefix}:x"),
            lambda: reader.script_load("return 1"),  # a script could write
            lambda: reader.get("another-prefix:x"),
            lambda: writer.set("another-prefix:x", "1"),
            lambda: writer.keys(f"{users.prefix}:*"),
            lambda: writer.flushdb(),
            lambda: writer.config_get("*"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        reader.close()
        writer.close()


def test_a_wrong_password_is_access_denied_not_an_outage(users: StoreUsers) -> None:
    wrong = users.urls["reader"].replace("@", "x@", 1)  # one more character of password
    result = cli("check", new_subject("acl"), ADS, REDIS_URL=wrong, REDIS_PREFIX=users.prefix)
    assert result.returncode == 4, result.stderr  # not 6 (unavailable): retrying cannot help
    message = one_line(result, "store_access_denied")
    assert "invalid username-password pair" in message
    password = wrong.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in result.stderr + result.stdout


def test_a_worker_that_may_only_read_fails_its_batches_and_loses_nothing(
    worker_factory: WorkerFactory, users: StoreUsers
) -> None:
    env = {f"CONSENT_STREAM_{k}": v for k, v in users.env("reader").items()}
    reading = worker_factory(env=env, start=False)
    reading.start()
    reading.poll(lambda: reading.http_status("/healthz") == 200, 60.0, "GET /healthz")
    subject = new_subject("acl")
    with ConsentPublisher(reading.settings, reading.policy) as publisher:
        publisher.publish(consent_changed(subject, ADS, granted=False))
    failures = "consent_batch_failures_total"
    reading.poll(
        lambda: reading.metric(failures, stage="events", reason="store_access_denied") > 0,
        TIMEOUT_S,
        "a batch failed for the store's refusal",
    )
    assert "no permissions to run the 'evalsha' command" in reading.log_tail(400)
    assert reading.stop() is not None

    writer_env = {f"CONSENT_STREAM_{k}": v for k, v in users.env("writer").items()}
    writing = worker_factory(like=reading, env=writer_env)  # the same group, a writer
    wait_denied(writing, users, subject)
