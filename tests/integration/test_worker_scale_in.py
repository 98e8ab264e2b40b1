"""Scale-in of named workers: a named worker (a static member) stopped for good keeps its
partitions for the group session timeout; ``consent-stream remove-worker NAME`` takes it
out of the group at once, so the withdrawals on its partitions take effect in seconds."""

from __future__ import annotations

import time
import uuid

import pytest

from producers.publisher import ConsentPublisher

from .processes import WorkerFactory, WorkerProcess, consent_changed, new_subject
from .processes import worker_factory as worker_factory
from .test_cli_errors import cli
from .test_worker_crash import ADS, shared_out

pytestmark = pytest.mark.integration

SESSION_S = 30
TAKE_OVER_BOUND_S = 12.0
"""Well under the 30 s session the removed worker would otherwise hold its partitions."""


def _withdrawn(worker: WorkerProcess, subjects: list[str]) -> bool:
    views = [worker.get_json(f"/consent/{s}") for s in subjects]
    return all(
        code == 200 and v["seen"] and v["purposes"][ADS]["allowed"] is False for code, v in views
    )


def test_a_removed_worker_hands_its_partitions_over_without_waiting_out_its_session(
    worker_factory: WorkerFactory,
) -> None:
    session = {"CONSENT_STREAM_GROUP_SESSION_TIMEOUT_S": str(SESSION_S)}
    first = worker_factory(env={**session, "CONSENT_STREAM_GROUP_INSTANCE_ID": "w-1"})
    name = f"w-{uuid.uuid4().hex[:8]}"
    second = worker_factory(like=first, env={"CONSENT_STREAM_GROUP_INSTANCE_ID": name})
    shared_out(first, second)
    assert second.stop() == 0  # a scale-in: stopped for good, still a member
    subjects = [new_subject("scale-in") for _ in range(12)]  # on every partition
    with ConsentPublisher(first.settings, first.policy) as publisher:
        publisher.publish_many([consent_changed(s, ADS, False) for s in subjects])

    started = time.monotonic()
    result = cli(
        "remove-worker",
        name,
        "absent-worker",
        TOPIC_NAMESPACE=first.settings.topic_namespace,
        APP_ID=first.config.app_id,
    )

    assert result.returncode == 1, result.stderr  # one of the two was not in the group
    assert result.stdout.splitlines() == [
        f"{name}: removed: its partitions go to the others now (group {first.config.app_id})",
        f"absent-worker: not in it (group {first.config.app_id})",
    ]
    first.poll(
        lambda: _withdrawn(first, subjects), TAKE_OVER_BOUND_S, "every withdrawal", interval_s=0.1
    )
    assert time.monotonic() - started < TAKE_OVER_BOUND_S
