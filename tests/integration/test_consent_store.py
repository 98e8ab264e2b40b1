"""Consent store against the real redis-server (and Kafka for the rebuild)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from consumers.store.clients import make_async_redis, make_redis
from consumers.store.consent_store import AsyncConsentStore, ConsentStore
from consumers.store.layout import APPLY_STATES_SHA, STATES_PER_CALL, ApplyOutcome, state_fields
from consumers.store.rebuild import rebuild_from_topic, run_rebuild_store
from schemas.errors import StoreUnavailableError
from schemas.policy import load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret, Settings, SubjectKeys
from schemas.views import ConsentState, PermissionRevocation, PurposeDecision

from .kafka_auth import admin_settings

pytestmark = pytest.mark.integration

POLICY = load_policy()
SECRET = SubjectKeys.single(Secret("integration-test-key"))
NOTICE = "2023-09-01"
DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens there


def state(
    subject: str,
    version: int,
    *,
    grants: dict[str, bool] | None = None,
    closed_at: int | None = None,
    camera_on: str | None = None,
    app: str | None = None,
) -> ConsentState:
    base = 1_700_000_000_000 + version * 1000
    perms = []
    if camera_on is not None:
        perms.append(PermissionRevocation(base, permission="camera", device_id=camera_on))
    if app is not None:
        perms.append(PermissionRevocation(base + 1, app_id=app))
    return ConsentState(
        subject_id=subject,
        version=version,
        updated_at=base,
        account_closed_at=closed_at,
        purposes=tuple(
            PurposeDecision(p, g, base, NOTICE) for p, g in sorted((grants or {}).items())
        ),
        permissions=tuple(perms),
    )


def subject_id() -> str:
    return f"buyer-{uuid.uuid4().hex}@example.com"


def text_hash(client: redis.Redis, key: str) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in client.hgetall(key).items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def prefix_keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(_text(k) for k in client.scan_iter(match=f"{prefix}:*", count=1000))


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = make_redis(Settings(redis_url=redis_url))
    yield c
    c.close()


@pytest.fixture
def store(client: redis.Redis, prefix: str) -> ConsentStore:
    return ConsentStore(client, POLICY, SECRET, prefix=prefix)


# ---- apply and read -------------------------------------------------------------------


def test_apply_then_read(store: ConsentStore) -> None:
    sid = subject_id()
    grants = {"research_sharing": True, "marketing_sms": False}
    assert store.apply_state(state(sid, 1, grants=grants, camera_on="dev-1", app="wx-login"))
    assert store.is_allowed(sid, "research_sharing") is True  # opt-in, granted
    assert store.is_allowed(sid, "marketing_sms") is False  # opt-out, withdrawn
    assert store.is_allowed(sid, "personalized_ads") is True  # opt-out default
    assert store.is_allowed(sid, "biometric_verification") is False  # opt-in default
    assert store.is_permission_revoked(sid, "camera", "dev-1") is True
    assert store.is_permission_revoked(sid, "camera", "dev-2") is False
    assert store.is_app_revoked(sid, "wx-login") is True
    assert store.is_app_revoked(sid, "other-app") is False
    view = store.consent_view(sid)
    assert view["version"] == 1 and view["closed"] is False
    assert view["purposes"]["research_sharing"]["source"] == "explicit"
    assert view["revoked_apps"] == [{"app_id": "wx-login", "revoked_at": 1_700_000_001_001}]


def test_unknown_subject_has_policy_defaults(store: ConsentStore) -> None:
    sid = subject_id()
    for name, purpose in POLICY.purposes.items():
        assert store.is_allowed(sid, name) is purpose.default_allowed
    assert store.consent_view(sid)["version"] is None


def test_older_version_is_ignored_and_same_version_is_idempotent(
    store: ConsentStore, client: redis.Redis
) -> None:
    sid = subject_id()
    v5 = state(sid, 5, grants={"research_sharing": True})
    assert store.apply_state(v5) is True
    snapshot = text_hash(client, store.key(sid))
    assert store.apply_state(v5) is False  # redelivery
    assert store.apply_state(state(sid, 4, grants={"research_sharing": False})) is False
    assert text_hash(client, store.key(sid)) == snapshot
    assert store.is_allowed(sid, "research_sharing") is True
    assert store.apply_state(state(sid, 6)) is True  # newer replaces the whole hash
    assert text_hash(client, store.key(sid)) == {"v": "6"}
    assert store.is_allowed(sid, "research_sharing") is False


def test_closure_leaves_only_a_marker_without_the_subject_id(
    store: ConsentStore, client: redis.Redis, prefix: str
) -> None:
    sid = subject_id()
    store.apply_state(state(sid, 1, grants={"research_sharing": True}, camera_on="d", app="a"))
    assert store.apply_state(state(sid, 2, closed_at=1_700_000_500_000)) is True
    assert text_hash(client, store.key(sid)) == {"v": "2", "closed": "1700000500000"}
    keys = prefix_keys(client, prefix)
    assert keys == [store.key(sid)]
    assert all(sid not in k and "buyer" not in k for k in keys)
    for name in POLICY.purposes:  # consent-based and basic purposes alike
        assert store.is_allowed(sid, name) is False
    assert store.is_permission_revoked(sid, "microphone", "any-device") is True
    assert store.is_app_revoked(sid, "any-app") is True
    view = store.consent_view(sid)
    assert view["closed"] is True and view["closed_at"] == 1_700_000_500_000


def test_a_newer_open_state_never_reopens_a_closed_subject(
    store: ConsentStore, client: redis.Redis
) -> None:
    sid = subject_id()
    store.apply_state(state(sid, 3, closed_at=1_700_000_500_000))
    assert store.apply_state(state(sid, 9, grants={"research_sharing": True})) is False
    outcomes = store.apply_states([state(sid, 10, grants={"personalized_ads": True})])
    assert outcomes == [ApplyOutcome.REFUSED_CLOSED]
    assert text_hash(client, store.key(sid)) == {"v": "3", "closed": "1700000500000"}
    assert store.is_allowed(sid, "research_sharing") is False
    # a newer *closed* state may update the marker (still no personal data)
    assert store.apply_state(state(sid, 11, closed_at=1_700_000_600_000)) is True
    assert text_hash(client, store.key(sid)) == {"v": "11", "closed": "1700000600000"}


def test_apply_states_pipelines_in_order(store: ConsentStore, client: redis.Redis) -> None:
    a, b = subject_id(), subject_id()
    outcomes = store.apply_states(
        [state(a, 2), state(a, 1), state(b, 1, grants={"marketing_push": False}), state(a, 2)]
    )
    assert outcomes == [
        ApplyOutcome.APPLIED,
        ApplyOutcome.NOT_NEWER,
        ApplyOutcome.APPLIED,
        ApplyOutcome.NOT_NEWER,
    ]
    assert text_hash(client, store.key(a)) == {"v": "2"}
    assert store.is_allowed(b, "marketing_push") is False


@pytest.mark.parametrize("count", [1, STATES_PER_CALL + 1], ids=["one call", "pipelined"])
def test_apply_states_loads_the_script_when_redis_has_lost_it(
    redis_url: str, store: ConsentStore, client: redis.Redis, prefix: str, count: int
) -> None:
    """What a Redis restart does to the script cache (SCRIPT FLUSH), between writes."""
    subjects = [subject_id() for _ in range(count)]
    client.script_flush()
    assert store.apply_states([state(s, 1) for s in subjects]) == [ApplyOutcome.APPLIED] * count
    assert client.script_exists(APPLY_STATES_SHA) == [True]

    async def apply_async() -> list[ApplyOutcome]:
        aclient = make_async_redis(Settings(redis_url=redis_url))
        try:
            astore = AsyncConsentStore(aclient, POLICY, SECRET, prefix=prefix)
            return await astore.apply_states([state(s, 2) for s in subjects])
        finally:
            await aclient.aclose()

    client.script_flush()
    assert asyncio.run(apply_async()) == [ApplyOutcome.APPLIED] * count
    assert [text_hash(client, store.key(s))["v"] for s in subjects] == ["2"] * count


def test_many_fields_in_one_state(store: ConsentStore, client: redis.Redis) -> None:
    sid = subject_id()
    perms = tuple(
        PermissionRevocation(i, permission="camera", device_id=f"dev-{i}") for i in range(3000)
    )
    big = ConsentState(sid, 1, 1, permissions=perms)
    assert store.apply_state(big)
    assert len(text_hash(client, store.key(sid))) == 3001
    assert store.is_permission_revoked(sid, "camera", "dev-2999")


# ---- one round trip -------------------------------------------------------------------


def counting_client(redis_url: str, sent: list[tuple[str, ...]], io: list[str]) -> redis.Redis:
    """A client whose connections record each command, each write and each reply read."""

    class Counting(redis.Connection):
        def send_command(self, *args: Any, **kwargs: Any) -> None:
            sent.append(tuple(str(a) for a in args))
            super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            io.append("write")
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            io.append("read")
            return super().read_response(*args, **kwargs)

    pool = redis.ConnectionPool.from_url(redis_url, connection_class=Counting)
    return redis.Redis(connection_pool=pool)


def test_is_allowed_is_exactly_one_round_trip(redis_url: str, prefix: str) -> None:
    sent: list[tuple[str, ...]] = []
    io: list[str] = []
    client = counting_client(redis_url, sent, io)
    store = ConsentStore(client, POLICY, SECRET, prefix=prefix)
    sid = subject_id()
    store.apply_state(state(sid, 1, grants={"research_sharing": True}, closed_at=None))
    client.ping()  # connection and handshake are done
    checks = [("research_sharing", True), ("personalized_ads", True), ("payment", True)]
    for purpose, expected in checks:
        sent.clear()
        io.clear()
        assert store.is_allowed(sid, purpose) is expected
        assert sent == [("HMGET", store.key(sid), f"p:{purpose}", "closed")]
        assert io == ["write", "read"]
    client.close()


def test_monitor_sees_one_command_per_check(store: ConsentStore, client: redis.Redis) -> None:
    """The server's view (MONITOR): one HMGET on the subject's key per check, nothing else."""
    sid = subject_id()
    store.apply_state(state(sid, 1))
    key, marker = store.key(sid), f"end-{uuid.uuid4().hex}"
    with client.monitor() as monitor:  # type: ignore[no-untyped-call]
        store.is_allowed(sid, "marketing_sms")
        store.is_permission_revoked(sid, "camera", "d1")
        client.echo(marker)
        seen = []
        while True:
            command = monitor.next_command()["command"]
            if marker in command:
                break
            if key in command:
                seen.append(command.split()[0].upper())
    assert seen == ["HMGET", "HMGET"]


# ---- async parity ---------------------------------------------------------------------


def test_async_store_matches_sync_store(redis_url: str, store: ConsentStore, prefix: str) -> None:
    subjects = [subject_id() for _ in range(3)]
    states = [
        state(subjects[0], 4, grants={"research_sharing": True}, camera_on="d1", app="a1"),
        state(subjects[1], 2, closed_at=1_700_000_700_000),
        state(subjects[2], 1, grants={"personalized_ads": False}),
    ]
    checks = [(s, p) for s in subjects for p in sorted(POLICY.purposes)]

    async def run() -> tuple[list[bool], list[ApplyOutcome], list[bool], list[Any]]:
        aclient = make_async_redis(Settings(redis_url=redis_url))
        astore = AsyncConsentStore(aclient, POLICY, SECRET, prefix=prefix)
        try:
            assert astore.key(subjects[0]) == store.key(subjects[0])
            first = [await astore.apply_state(st) for st in states]
            again = await astore.apply_states([*states, state(subjects[1], 3)])
            allowed = [await astore.is_allowed(s, p) for s, p in checks]
            extra = [
                await astore.is_permission_revoked(subjects[0], "camera", "d1"),
                await astore.is_app_revoked(subjects[0], "a1"),
                await astore.consent_view(subjects[0]),
                await astore.consent_view(subjects[1]),
            ]
            return first, again, allowed, extra
        finally:
            await aclient.aclose()

    first, again, allowed, extra = asyncio.run(run())
    assert first == [True, True, True]
    assert again == [ApplyOutcome.NOT_NEWER] * 3 + [ApplyOutcome.REFUSED_CLOSED]
    assert allowed == [store.is_allowed(s, p) for s, p in checks]
    assert extra == [
        store.is_permission_revoked(subjects[0], "camera", "d1"),
        store.is_app_revoked(subjects[0], "a1"),
        store.consent_view(subjects[0]),
        store.consent_view(subjects[1]),
    ]
    assert extra[0] is True and extra[3]["closed"] is True


def test_async_store_unavailable() -> None:
    async def run() -> None:
        aclient = make_async_redis(Settings(redis_url=DOWN_URL), timeout_s=1)
        astore = AsyncConsentStore(aclient, POLICY, SECRET)
        try:
            await astore.is_allowed("s", "marketing_sms")
        finally:
            await aclient.aclose()

    with pytest.raises(StoreUnavailableError):
        asyncio.run(run())


def test_sync_store_unavailable() -> None:
    down = make_redis(Settings(redis_url=DOWN_URL), timeout_s=1)
    store = ConsentStore(down, POLICY, SECRET)
    with pytest.raises(StoreUnavailableError) as info:
        store.apply_state(state("s", 1))
    assert info.value.retriable


# ---- rebuild from the compacted topic -------------------------------------------------


def history(
    rng: random.Random, subjects: int
) -> tuple[list[ConsentState], dict[str, ConsentState]]:
    """States of many subjects, several versions each, shuffled per subject."""
    purposes = sorted(POLICY.purposes)
    records: list[ConsentState] = []
    latest: dict[str, ConsentState] = {}
    for n in range(subjects):
        sid = subject_id()
        versions = []
        for v in range(1, rng.randint(1, 4) + 1):
            grants = {p: rng.random() < 0.5 for p in rng.sample(purposes, 3)}
            closed = 1_700_000_900_000 if n % 7 == 0 and v >= 2 else None
            versions.append(state(sid, v, grants=grants, closed_at=closed, camera_on=f"d{v}"))
        latest[sid] = versions[-1]
        rng.shuffle(versions)
        records += versions
    return records, latest


def produce(bootstrap: str, topic: str, serde: AvroSerde, values: list[tuple[str, Any]]) -> None:
    producer = Producer(admin_settings(bootstrap_servers=bootstrap).producer_config())
    for key, value in values:
        data = value if isinstance(value, bytes | None) else serde.encode(value, topic)
        producer.produce(topic, key=key.encode(), value=data)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("registry", [None, "mock://rebuild"], ids=["single-object", "confluent"])
def test_rebuild_from_topic_restores_latest_state_and_is_idempotent(
    registry: str | None,
    bootstrap_servers: str,
    redis_url: str,
    unique_topic: Any,
    store: ConsentStore,
    client: redis.Redis,
    prefix: str,
) -> None:
    settings = admin_settings(
        bootstrap_servers=bootstrap_servers, redis_url=redis_url, schema_registry_url=registry
    )
    serde = AvroSerde(settings.schema_registry())
    topic = unique_topic("consent-state-test", config={"cleanup.policy": "compact"})
    records, latest = history(random.Random(20230901), subjects=60)
    closed_sid = subject_id()  # closed, then a later open state that must not re-open it
    extra = [
        (closed_sid, state(closed_sid, 2, closed_at=1_700_000_950_000)),
        (closed_sid, state(closed_sid, 3, grants={"research_sharing": True})),
        ("garbage", b"\x00\x00\x00\x00\x07not avro"),
        ("tombstone", None),
    ]
    produce(bootstrap_servers, topic, serde, [(st.subject_id, st) for st in records] + extra)

    report = rebuild_from_topic(settings, store, topic, timeout_s=60, batch_size=50, serde=serde)

    assert report.complete
    assert report.read == len(records) + len(extra)
    assert (report.undecodable, report.tombstones, report.refused_closed) == (1, 1, 1)
    assert report.applied + report.skipped + report.refused_closed == len(records) + 2
    for sid, st in latest.items():
        assert text_hash(client, store.key(sid)) == state_fields(st)
    assert text_hash(client, store.key(closed_sid)) == {"v": "2", "closed": "1700000950000"}
    keys = prefix_keys(client, prefix)
    assert len(keys) == len(latest) + 1
    snapshot = {k: text_hash(client, k) for k in keys}

    again = rebuild_from_topic(settings, store, topic, timeout_s=60, serde=serde)
    assert again.complete and again.applied == 0
    assert again.skipped + again.refused_closed == len(records) + 2
    assert {k: text_hash(client, k) for k in prefix_keys(client, prefix)} == snapshot


def test_run_rebuild_store_prints_counts(
    bootstrap_servers: str,
    redis_url: str,
    unique_topic: Any,
    client: redis.Redis,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = admin_settings(
        bootstrap_servers=bootstrap_servers, redis_url=redis_url, redis_prefix=prefix
    )
    topic = unique_topic("consent-state-cli", partitions=1)
    sid = subject_id()
    states = [state(sid, 2, grants={"research_sharing": True}), state(sid, 1)]
    produce(bootstrap_servers, topic, AvroSerde(), [(sid, st) for st in states])
    code = run_rebuild_store(settings, POLICY, topic=topic, timeout_s=60)
    out = capsys.readouterr().out
    assert code == 0
    assert "rebuild-store complete: 2 read, 1 applied, 1 skipped (not newer)" in out
    store = ConsentStore(client, POLICY, settings.subject_keys, prefix=prefix)  # as the worker
    assert store.is_allowed(sid, "research_sharing") is True


# ---- subject key rotation -------------------------------------------------------------

NEW_KEYS = SubjectKeys("k2", Secret("integration-new-key-0123"), {"k1": SECRET.current})


def test_rotation_finds_moves_and_never_goes_back(client: redis.Redis, prefix: str) -> None:
    """APPLY_STATE_LUA on the real server with two slots (tests/unit/test_store_rotation.py
    checks the same against the in-memory model)."""
    old_store = ConsentStore(client, POLICY, SECRET, prefix=prefix)
    new_store = ConsentStore(client, POLICY, NEW_KEYS, prefix=prefix)
    sid, closed_sid = subject_id(), subject_id()
    assert old_store.apply_state(state(sid, 3, grants={"research_sharing": True}))
    assert old_store.apply_state(state(closed_sid, 2, closed_at=1_700_000_000_000))
    old_key, new_key = old_store.key(sid), new_store.key(sid)
    assert new_store.is_allowed(sid, "research_sharing") is True  # found under k1
    assert new_store.consent_view(sid)["version"] == 3
    assert new_store.apply_states([state(sid, 3, grants={"research_sharing": True})]) == [
        ApplyOutcome.NOT_NEWER
    ]
    assert client.exists(old_key) == 0 and text_hash(client, new_key)["v"] == "3"  # moved
    assert new_store.apply_state(state(sid, 2)) is False  # never backwards
    assert new_store.apply_state(state(sid, 4, grants={"research_sharing": False}))
    assert new_store.is_allowed(sid, "research_sharing") is False
    assert new_store.apply_states([state(closed_sid, 5)]) == [ApplyOutcome.REFUSED_CLOSED]
    assert new_store.consent_view(closed_sid)["closed"] is True
    assert prefix_keys(client, prefix) == sorted([new_key, new_store.key(closed_sid)])
