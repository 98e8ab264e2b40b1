"""The worker's HTTP API does not wait for its agents: with the worker's event loop held
for good (the ``events.mid_instructions`` failpoint blocks it, as a batch stuck in a long
step would), a consent check is still answered at once, and ``/healthz`` turns to 503
"stalled" once the loop has not turned for ``LOOP_STALLED_S``."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from producers.publisher import ConsentPublisher
from streams.api.server import LOOP_STALLED_S

from .processes import WorkerFactory, WorkerProcess, consent_changed, poll_until
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

FAILPOINT = "events.mid_instructions"
ANSWER_BOUND_S = 1.0


@pytest.fixture
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory(env={"CONSENT_STREAM_FAILPOINT": f"{FAILPOINT}:1"})


def test_a_consent_check_is_answered_while_the_workers_loop_is_held(
    worker: WorkerProcess,
) -> None:
    seen = f"http-thread-{uuid.uuid4().hex[:8]}"
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        publisher.publish(consent_changed(seen, "marketing_sms", False))  # no instruction
    worker.poll(lambda: worker.seen(seen), 30, "the first subject in the store")
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        publisher.publish(consent_changed(f"{seen}-b", "personalized_ads", False))  # ads
    marker = worker.config.data_dir / f"failpoint-{FAILPOINT}.json"
    poll_until(marker.exists, 30.0, "the worker's loop to block at the failpoint")
    held_from = time.monotonic()

    started = time.monotonic()
    status, body = worker.http_get(f"/consent/{seen}")
    assert status == 200 and json.loads(body)["seen"] is True
    assert time.monotonic() - started < ANSWER_BOUND_S
    assert worker.http_get("/healthz", token=None)[0] == 200  # held for less than the bound

    def stalled() -> dict[str, object] | None:
        status, body = worker.http_get("/healthz", token=None)
        return json.loads(body) if status == 503 else None

    health = poll_until(stalled, LOOP_STALLED_S + 10.0, "/healthz to say the loop is stalled")
    assert health["status"] == "stalled"
    assert time.monotonic() - held_from >= LOOP_STALLED_S - 1.0
    worker.kill()
