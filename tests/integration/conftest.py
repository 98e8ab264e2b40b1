"""Fixtures shared by the integration tests: a real Kafka (KRaft) and Redis on loopback.

The settings come from the environment the application reads
(``CONSENT_STREAM_BOOTSTRAP_SERVERS``, ``CONSENT_STREAM_REDIS_URL``), as exported by
``make test``. When they are unset, the ``stack`` fixture starts the local stack itself
(``deploy/local/stack.py up``), takes the settings from ``stack.py env`` and puts them in
``os.environ`` for the code under test. It leaves the stack running afterwards
(``make stop`` stops it). If Kafka or Redis does not answer, the tests FAIL: they are
never skipped for a missing service.

Fixtures:
    stack               session: StackSettings (bootstrap_servers, redis_url, partitions)
    bootstrap_servers   session: str
    redis_url           session: str, logged in as the stack's Redis ``admin`` user (the
                        processes under test log in with their own role's user:
                        ``schemas.store_login.without_login``)
    unique_topic        factory: unique_topic("prefix", partitions=None, config=None) -> name;
                        creates a uuid-named topic, deleted at the end of the test
    unique_group        factory: unique_group("prefix") -> a uuid consumer group id
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # typed there; admin re-exports it implicitly

from .kafka_auth import admin_config, admin_redis_url

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_PY = REPO_ROOT / "deploy" / "local" / "stack.py"
BOOTSTRAP_ENV = "CONSENT_STREAM_BOOTSTRAP_SERVERS"
REDIS_ENV = "CONSENT_STREAM_REDIS_URL"
PARTITIONS_ENV = "CONSENT_STREAM_PARTITIONS"
STACK_UP_TIMEOUT_S = 600.0  # a cold machine installs packages and jars first
ANSWER_TIMEOUT_S = 30.0
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class StackSettings:
    bootstrap_servers: str
    redis_url: str
    partitions: int


class TopicFactory(Protocol):
    def __call__(
        self,
        name_prefix: str,
        partitions: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str: ...


class GroupFactory(Protocol):
    def __call__(self, name_prefix: str = "test") -> str: ...


def run_stack(*args: str, timeout: float) -> str:
    try:
        result = subprocess.run(
            [sys.executable, str(STACK_PY), *args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"stack.py {' '.join(args)} did not finish within {timeout:.0f} s")
    if result.returncode != 0:
        pytest.fail(
            f"stack.py {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


def parse_exports(text: str) -> dict[str, str]:
    """``export K=V`` lines (shell-quoted) into a dict."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            settings[key] = value
    return settings


def start_local_stack() -> dict[str, str]:
    run_stack("up", timeout=STACK_UP_TIMEOUT_S)
    settings = parse_exports(run_stack("env", timeout=30))
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    from schemas.policy import load_policy

    from .kafka_auth import admin_settings, sync_acls

    sync_acls(admin_settings(), load_policy().partners)  # as `make stack` does
    return settings


def check_kafka(bootstrap_servers: str) -> None:
    admin = AdminClient(admin_config(bootstrap_servers))
    try:
        metadata = admin.list_topics(timeout=ANSWER_TIMEOUT_S)
    except KafkaException as exc:
        pytest.fail(f"Kafka at {bootstrap_servers} does not answer: {exc}")
    if not metadata.brokers:
        pytest.fail(f"Kafka at {bootstrap_servers} answered with no broker")


def check_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=ANSWER_TIMEOUT_S)
    try:
        if not client.ping():
            pytest.fail(f"Redis at {redis_url} did not answer PING")
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {redis_url} does not answer: {exc}")
    finally:
        client.close()


@pytest.fixture(scope="session")
def stack() -> StackSettings:
    bootstrap = os.environ.get(BOOTSTRAP_ENV, "")
    redis_url = os.environ.get(REDIS_ENV, "")
    if not bootstrap or not redis_url:
        settings = start_local_stack()
        bootstrap = bootstrap or settings.get(BOOTSTRAP_ENV, "")
        redis_url = redis_url or settings.get(REDIS_ENV, "")
    if not bootstrap or not redis_url:
        pytest.fail(f"stack.py env did not give {BOOTSTRAP_ENV} and {REDIS_ENV}")
    redis_url = admin_redis_url(redis_url)  # the stack's Redis takes no anonymous login
    check_kafka(bootstrap)
    check_redis(redis_url)
    partitions = int(os.environ.get(PARTITIONS_ENV, "3"))
    return StackSettings(bootstrap, redis_url, partitions)


@pytest.fixture(scope="session")
def bootstrap_servers(stack: StackSettings) -> str:
    return stack.bootstrap_servers


@pytest.fixture(scope="session")
def redis_url(stack: StackSettings) -> str:
    return stack.redis_url


def wait_for_leaders(admin: AdminClient, topic: str, partitions: int) -> None:
    """Block until every partition of a new topic has a leader (ready to produce)."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic=topic, timeout=ANSWER_TIMEOUT_S)
        parts = metadata.topics[topic].partitions if topic in metadata.topics else {}
        if len(parts) == partitions and all(p.leader >= 0 for p in parts.values()):
            return
        time.sleep(0.1)
    pytest.fail(f"topic {topic} has no leader for every partition")


def delete_topics(admin: AdminClient, topics: list[str]) -> None:
    if not topics:
        return
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


@pytest.fixture
def unique_topic(stack: StackSettings) -> Iterator[TopicFactory]:
    admin = AdminClient(admin_config(stack.bootstrap_servers))
    created: list[str] = []

    def create(
        name_prefix: str,
        partitions: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str:
        name = f"{name_prefix}.{uuid.uuid4().hex}"
        if not TOPIC_NAME.match(name) or len(name) > 249:
            raise ValueError(f"invalid topic name prefix: {name_prefix!r}")
        count = partitions if partitions is not None else stack.partitions
        new = NewTopic(name, num_partitions=count, replication_factor=1, config=dict(config or {}))
        for future in admin.create_topics([new], operation_timeout=30).values():
            future.result()
        created.append(name)
        wait_for_leaders(admin, name, count)
        return name

    yield create
    delete_topics(admin, created)


@pytest.fixture
def unique_group() -> GroupFactory:
    def make(name_prefix: str = "test") -> str:
        return f"{name_prefix}-{uuid.uuid4().hex}"

    return make
