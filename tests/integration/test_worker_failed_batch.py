"""A batch that fails is handled again at once, even when no record comes after it.

The worker runs with the ``events.fail_batch`` failpoint (``streams.failpoint``): the first
batch of at least ``MIN_RECORDS`` records fails once, with nothing of it sent, as a batch
the broker did not acknowledge would. The loop is woken, the agent starts again, and the
batch's records are read again (``SourceSequencer.unfinished``). Before, they waited for
the next record of their partition: here none comes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher

from .processes import WorkerFactory, WorkerProcess, consent_changed, new_subject
from .processes import worker_factory as worker_factory
from .worker_fixtures import publisher as publisher
from .worker_fixtures import redis_client as redis_client
from .worker_fixtures import store as store

pytestmark = pytest.mark.integration

FAILPOINT = "events.fail_batch"
MIN_RECORDS = 5
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory(env={"CONSENT_STREAM_FAILPOINT": f"{FAILPOINT}:{MIN_RECORDS}"})


def test_a_failed_batch_is_handled_again_with_no_record_after_it(
    worker: WorkerProcess, publisher: ConsentPublisher, store: ConsentStore
) -> None:
    subjects = [new_subject() for _ in range(60)]
    before = worker.metric("consent_source_records_total", stage="events", outcome="refetched")

    publisher.publish_many(
        [consent_changed(s, "personalized_ads", granted=False) for s in subjects]
    )

    worker.poll(
        lambda: all(not store.is_allowed(s, "personalized_ads") for s in subjects),
        TIMEOUT_S,
        "every withdrawal, those of the failed batch too",
    )
    marker = Path(worker.settings.data_dir) / f"failpoint-{FAILPOINT}.json"
    assert marker.exists(), "no batch of the burst was large enough to fail"
    failed = json.loads(marker.read_text())["records"]
    assert failed >= MIN_RECORDS
    refetched = worker.metric("consent_source_records_total", stage="events", outcome="refetched")
    assert refetched - before >= failed  # read again, not delivered again by the stream
    assert worker.running
    failures = worker.metric(
        "consent_batch_failures_total", stage="events", reason="publish_failed"
    )
    assert failures == 1
    worker.poll(  # counted once the batch's state records are on the broker, after the store
        lambda: (
            worker.metric("consent_events_total", type="consent.changed", outcome="applied")
            >= len(subjects)
        ),
        TIMEOUT_S,
        "every withdrawal counted",
    )
