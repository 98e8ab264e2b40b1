"""Module-scoped fixtures around one running worker: import them into a test module with
``from .worker_fixtures import worker as worker`` (and the others it needs); each module
gets its own worker, namespace and clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.settings import Settings

from .processes import WorkerFactory, WorkerProcess

__all__ = ["publisher", "redis_client", "settings", "store", "worker"]


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory()


@pytest.fixture(scope="module")
def settings(worker: WorkerProcess) -> Settings:
    return worker.settings


@pytest.fixture(scope="module")
def publisher(worker: WorkerProcess) -> Iterator[ConsentPublisher]:
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        yield publisher


@pytest.fixture(scope="module")
def redis_client(worker: WorkerProcess) -> Iterator[redis.Redis]:
    client = make_redis(worker.settings)
    yield client
    client.close()


@pytest.fixture(scope="module")
def store(worker: WorkerProcess, redis_client: redis.Redis) -> ConsentStore:
    s = worker.settings
    return ConsentStore(redis_client, worker.policy, s.subject_keys, s.redis_prefix)
