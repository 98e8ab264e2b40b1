"""Existing topics that take smaller records than the settings need get their limit
raised, never lowered (``streams.topics.raise_record_limits``). Against a fake admin
client; tests/integration/test_worker_start.py does it on the broker."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from streams.topics import raise_record_limits


def done(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


class Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class Admin:
    """Topic name -> the ``max.message.bytes`` the broker holds; records the alterations."""

    def __init__(self, held: dict[str, int]) -> None:
        self.held = held
        self.altered: list[tuple[str, str, str]] = []

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Any]:
        return {r: done({"max.message.bytes": Entry(str(self.held[r.name]))}) for r in resources}

    def incremental_alter_configs(
        self, resources: list[Any], request_timeout: float
    ) -> dict[Any, Any]:
        for r in resources:
            for entry in r.incremental_configs:
                self.altered.append((r.name, entry.name, entry.value))
        return {r: done(None) for r in resources}


def test_only_the_topics_below_their_wanted_limit_are_raised() -> None:
    admin = Admin({"events": 1_048_588, "state": 2_000_000, "ledger": 1_114_112})
    wanted = {
        "events": {"max.message.bytes": "1114112"},
        "state": {"cleanup.policy": "compact", "max.message.bytes": "1114112"},
        "ledger": {"max.message.bytes": "1114112"},
        "extra": {"cleanup.policy": "compact"},  # no limit wanted: not looked at
    }

    raised = raise_record_limits(admin, wanted, 30.0)

    assert raised == {"events": (1_048_588, 1_114_112)}
    assert admin.altered == [("events", "max.message.bytes", "1114112")]


def test_nothing_is_asked_when_no_topic_wants_a_limit() -> None:
    admin = Admin({})

    assert raise_record_limits(admin, {"state": {"cleanup.policy": "compact"}}, 30.0) == {}
    assert admin.altered == []
