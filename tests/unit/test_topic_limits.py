"""Existing topics that hold less than the settings ask get it raised, never lowered
(``streams.topics.raise_topic_floors``): ``max.message.bytes`` below what the records need,
``min.insync.replicas`` below the settings' (at most the topic's own replicas). Against a
fake admin client; tests/integration/test_worker_start.py does it on the broker."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from schemas.errors import ConfigurationError
from schemas.settings import ENV_PREFIX, Settings
from streams.topics import raise_topic_floors


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class Admin:
    """Topic name -> the configs the broker holds; records the alterations."""

    def __init__(self, held: dict[str, dict[str, int]]) -> None:
        self.held = held
        self.described: list[str] = []
        self.altered: list[tuple[str, str, str]] = []

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Any]:
        self.described += [r.name for r in resources]
        return {
            r: done({k: Entry(str(v)) for k, v in self.held[r.name].items()}) for r in resources
        }

    def incremental_alter_configs(
        self, resources: list[Any], request_timeout: float
    ) -> dict[Any, Any]:
        for r in resources:
            for entry in r.incremental_configs:
                self.altered.append((r.name, entry.name, entry.value))
        return {r: done(None) for r in resources}


def held(limit: int, insync: int = 1) -> dict[str, int]:
    return {"max.message.bytes": limit, "min.insync.replicas": insync}


def test_only_the_topics_below_their_wanted_limit_are_raised() -> None:
    admin = Admin({"events": held(1_048_588), "state": held(2_000_000), "ledger": held(1_114_112)})
    wanted = {
        "events": {"max.message.bytes": "1114112"},
        "state": {"cleanup.policy": "compact", "max.message.bytes": "1114112"},
        "ledger": {"max.message.bytes": "1114112"},
        "extra": {"cleanup.policy": "compact"},  # nothing to raise: not looked at
    }

    raised = raise_topic_floors(admin, wanted, 30.0)

    assert raised == {("events", "max.message.bytes"): (1_048_588, 1_114_112)}
    assert admin.altered == [("events", "max.message.bytes", "1114112")]
    assert "extra" not in admin.described


def test_min_insync_replicas_is_raised_up_to_each_topics_own_replicas() -> None:
    admin = Admin(
        {
            "events": held(2_000_000, insync=1),  # 3 replicas: raised to 2
            "state": held(2_000_000, insync=3),  # more than asked: kept
            "old": held(2_000_000, insync=1),  # created with 1 replica: stays 1
        }
    )
    wanted = {
        name: {"max.message.bytes": "1114112", "min.insync.replicas": "2"}
        for name in ("events", "state", "old")
    }

    raised = raise_topic_floors(admin, wanted, 30.0, {"events": 3, "state": 3, "old": 1})

    assert raised == {("events", "min.insync.replicas"): (1, 2)}
    assert admin.altered == [("events", "min.insync.replicas", "2")]


def from_env(env: dict[str, str]) -> Settings:
    return Settings.from_env(
        {ENV_PREFIX + "DEV_MODE": "1", **{ENV_PREFIX + k: v for k, v in env.items()}}
    )


def test_nothing_is_asked_when_no_topic_wants_a_floor() -> None:
    admin = Admin({})

    assert raise_topic_floors(admin, {"state": {"cleanup.policy": "compact"}}, 30.0) == {}
    assert admin.altered == [] and admin.described == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, 1), ({"REPLICATION_FACTOR": "2"}, 1), ({"REPLICATION_FACTOR": "3"}, 2),
     ({"REPLICATION_FACTOR": "5"}, 2),
     ({"REPLICATION_FACTOR": "5", "MIN_INSYNC_REPLICAS": "3"}, 3),
     ({"REPLICATION_FACTOR": "3", "MIN_INSYNC_REPLICAS": "1"}, 1)],
)  # fmt: skip
def test_min_insync_replicas_follows_the_replication_factor_unless_set(
    env: dict[str, str], expected: int
) -> None:
    assert from_env(env).insync_replicas == expected


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"MIN_INSYNC_REPLICAS": "2"}, "is more than the replication factor"),
        ({"MIN_INSYNC_REPLICAS": "0"}, "MIN_INSYNC_REPLICAS must be positive"),
        ({"MIN_INSYNC_REPLICAS": "two"}, "must be an integer"),
    ],
)
def test_an_impossible_min_insync_replicas_is_refused(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        from_env(env)
