"""The consent store behind Redis Sentinel: a failover loses no write that counted.

A primary, two replicas and a Sentinel (``redis_sentinel.SentinelRedis``); the store's
clients find the primary through the Sentinel (``CONSENT_STREAM_REDIS_SENTINELS``) and
its writes count once a replica has them (``CONSENT_STREAM_REDIS_MIN_REPLICAS=1``, a
``WAIT`` in the write's round trip). The primary is SIGKILLed by its pid: the writes
during the failover fail as while Redis is down and are retried, then go to the promoted
replica (the Sentinel picks the one with most of the primary's writes), which has every
write that counted before. The same with TLS everywhere (clients to the Sentinel and the
data nodes, replication, and the Sentinel to the data nodes), with the store's Redis users
on every node (``redis_sentinel.NodeUsers``), and with both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from consumers.store.clients import make_redis
from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.errors import AccessDeniedError, StoreReplicasMissingError, StoreUnavailableError
from schemas.policy import load_policy
from schemas.settings import ENV_PREFIX, Settings
from schemas.views import ConsentState, PurposeDecision

from .processes import WorkerFactory, consent_changed, new_subject
from .processes import worker_factory as worker_factory
from .redis_sentinel import HOST, NodeUsers, SentinelRedis, TlsFiles

pytestmark = pytest.mark.integration

POLICY = load_policy()
PURPOSE = "personalized_ads"  # opt-out: allowed until withdrawn
FAILOVER_TIMEOUT_S = 60.0


def started(ha: SentinelRedis) -> Iterator[SentinelRedis]:
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()


@pytest.fixture(params=["plain", "tls", "users", "tls+users"])
def redis_ha(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelRedis]:
    tls = TlsFiles.issue(tmp_path) if "tls" in request.param else None
    users = NodeUsers() if "users" in request.param else None
    yield from started(SentinelRedis(tmp_path, tls, users))


@pytest.fixture
def tls_redis_ha(tmp_path: Path) -> Iterator[SentinelRedis]:
    yield from started(SentinelRedis(tmp_path, TlsFiles.issue(tmp_path)))


def through_sentinel(settings: Settings, ha: SentinelRedis) -> ConsentStore:
    s = replace(settings, redis_url=ha.url, redis_sentinel=ha.sentinel, redis_min_replicas=1)
    return ConsentStore(make_redis(s), POLICY, s.subject_keys, s.redis_prefix, 1)


@pytest.fixture
def users_ha(tmp_path: Path) -> Iterator[SentinelRedis]:
    yield from started(SentinelRedis(tmp_path, users=NodeUsers()))


def sentinel_password(ha: SentinelRedis) -> dict[str, str]:
    """``CONSENT_STREAM_REDIS_SENTINEL_PASSWORD``, when the Sentinel asks for one."""
    if ha.sentinel.password is None:
        return {}
    return {ENV_PREFIX + "REDIS_SENTINEL_PASSWORD": ha.sentinel.password.reveal().decode()}


def withdrawn(subject: str) -> ConsentState:
    now = int(time.time() * 1000)
    decision = PurposeDecision(PURPOSE, False, now, "2023-09-01")
    return ConsentState(subject_id=subject, version=1, updated_at=now, purposes=(decision,))


def applied_by_then(store: ConsentStore, states: Sequence[ConsentState]) -> int:
    """Write ``states`` until the store takes them (as the worker does); the failures."""
    failures = 0
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while True:
        try:
            store.apply_states(states)
            return failures
        except StoreUnavailableError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_writes_that_counted_are_on_the_promoted_replica(redis_ha: SentinelRedis) -> None:
    store = through_sentinel(Settings(redis_prefix=redis_ha.prefix), redis_ha)
    before = [withdrawn(f"before-{i}") for i in range(200)]
    after = [withdrawn(f"after-{i}") for i in range(200)]
    assert applied_by_then(store, before) == 0

    redis_ha.kill_primary()
    failures = applied_by_then(store, after)

    assert failures > 0  # the failover was in the way
    assert redis_ha.current_primary() in {(HOST, port) for port in redis_ha.replicas}
    for state in before + after:
        assert store.consent_view(state.subject_id)["seen"] is True, state.subject_id
        assert store.is_allowed(state.subject_id, PURPOSE) is False


def test_with_users_nobody_logs_in_anonymously_and_the_failover_is_refused_nothing(
    users_ha: SentinelRedis,
) -> None:
    store = through_sentinel(Settings(redis_prefix=users_ha.prefix), users_ha)
    assert applied_by_then(store, [withdrawn("before")]) == 0
    users_ha.kill_primary()
    assert applied_by_then(store, [withdrawn("after")]) > 0
    assert users_ha.current_primary() in {(HOST, port) for port in users_ha.replicas}
    for port in users_ha.replicas:  # writer, replica and sentinel did all within their rules
        assert users_ha.denied(port) == [], port
        anonymous = redis.Redis(host=HOST, port=port)
        with anonymous, pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.get(f"{users_ha.prefix}:x")
    no_password = redis.Redis(host=HOST, port=users_ha.sentinel_port)
    with no_password, pytest.raises(redis.exceptions.AuthenticationError):
        no_password.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "consent-store")
    other_prefix = through_sentinel(Settings(redis_prefix="another"), users_ha)
    with pytest.raises(AccessDeniedError):
        other_prefix.apply_states([withdrawn("elsewhere")])


def test_sentinels_on_tls_are_not_reached_without_it(tls_redis_ha: SentinelRedis) -> None:
    plain = replace(tls_redis_ha.sentinel, tls=False)  # CONSENT_STREAM_REDIS_SENTINEL_TLS=false
    s = replace(Settings(), redis_url=tls_redis_ha.url, redis_sentinel=plain)
    store = ConsentStore(make_redis(s), POLICY, s.subject_keys, s.redis_prefix)

    with pytest.raises(StoreUnavailableError):
        store.apply_states([withdrawn("never")])


def test_a_write_no_replica_has_is_retried_not_counted(redis_ha: SentinelRedis) -> None:
    store = through_sentinel(Settings(redis_prefix=redis_ha.prefix), redis_ha)
    redis_ha.stop_replicas()

    with pytest.raises(StoreReplicasMissingError, match="0 of the 1 replicas"):
        store.apply_states([withdrawn("alone")])


@pytest.mark.timeout(240)
def test_a_worker_goes_on_through_a_failover_and_loses_no_withdrawal(
    redis_ha: SentinelRedis, worker_factory: WorkerFactory
) -> None:
    worker = worker_factory(
        env={
            ENV_PREFIX + "REDIS_URL": redis_ha.url,
            ENV_PREFIX + "REDIS_SENTINELS": f"{HOST}:{redis_ha.sentinel_port}",
            ENV_PREFIX + "REDIS_MIN_REPLICAS": "1",
            ENV_PREFIX + "REDIS_PREFIX": redis_ha.prefix,
            **sentinel_password(redis_ha),
        }
    )
    subjects = [new_subject() for _ in range(300)]
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        for n in range(0, len(subjects), 10):  # 100 events/s for 3 s
            chunk = subjects[n : n + 10]
            publisher.publish_many([consent_changed(s, PURPOSE, False) for s in chunk])
            if n == 100:
                redis_ha.kill_primary()
            time.sleep(0.1)

    store = through_sentinel(replace(worker.settings, redis_prefix=redis_ha.prefix), redis_ha)

    def all_withdrawn() -> bool:
        try:
            return all(store.is_allowed(s, PURPOSE) is False for s in subjects)
        except StoreUnavailableError:  # still failing over
            return False

    worker.poll(all_withdrawn, FAILOVER_TIMEOUT_S, "every withdrawal in the store")
    assert redis_ha.current_primary() in {(HOST, port) for port in redis_ha.replicas}
    code, view = worker.get_json(f"/consent/{subjects[-1]}")  # the HTTP API's own client
    assert code == 200 and view["purposes"][PURPOSE]["allowed"] is False
    assert worker.metric("consent_store_write_retries_total") > 0
    assert worker.running
