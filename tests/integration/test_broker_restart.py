"""A broker crash mid-stream: SIGKILL of the Kafka process (by the pid the local stack
started, ``stack.py kill-kafka``), events published while it is down, the broker started
again (``stack.py up``). Every event the publisher got acknowledged has its effects: the
consent store and a STOP_PROCESSING instruction on the ads partner's topic; the worker
rides through the outage without a restart of its own.

The broker is shared by the whole test session: this module restarts it (and once the whole
stack) and waits until it answers again before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher, DeliveryReceipt
from schemas.errors import PublishError
from schemas.events import ConsentEvent
from schemas.settings import Settings

from .conftest import run_stack
from .processes import (
    WorkerFactory,
    WorkerProcess,
    consent_changed,
    new_subject,
    poll_until,
    read_until,
)
from .processes import worker_factory as worker_factory
from .worker_fixtures import redis_client as redis_client
from .worker_fixtures import settings as settings
from .worker_fixtures import store as store
from .worker_fixtures import worker as worker

pytestmark = pytest.mark.integration

ADS = "personalized_ads"
BEFORE, DURING = 40, 40
RECOVERY_TIMEOUT_S = 180.0


def withdrawals(count: int) -> list[ConsentEvent]:
    return [consent_changed(new_subject("broker"), ADS, granted=False) for _ in range(count)]


@pytest.fixture
def restarted_broker() -> Iterator[None]:
    """Makes sure the broker is up again after the test, whatever happened."""
    yield
    run_stack("up", timeout=300)


def test_a_broker_crash_loses_no_accepted_event(
    worker: WorkerProcess,
    store: ConsentStore,
    settings: Settings,
    restarted_broker: None,
) -> None:
    before, during = withdrawals(BEFORE), withdrawals(DURING)
    receipts: list[DeliveryReceipt] = []
    errors: list[PublishError] = []

    def delivered(receipt: DeliveryReceipt | None, error: PublishError | None) -> None:
        if receipt is not None:
            receipts.append(receipt)
        if error is not None:
            errors.append(error)

    with ConsentPublisher(settings, worker.policy) as publisher:
        for e in before:
            publisher.publish(e)
        worker.poll(
            lambda: all(not store.is_allowed(e.subject_id, ADS) for e in before),
            60.0,
            "the events before the crash to be applied",
        )

        run_stack("kill-kafka", timeout=60)
        for e in during:
            publisher.publish_async(e, delivered)
        publisher.poll(2.0)  # nothing can be acknowledged while the broker is down
        assert receipts == []
        down_at = time.monotonic()
        run_stack("up", timeout=300)
        assert publisher.flush(120.0) == 0
    outage_s = time.monotonic() - down_at

    assert errors == []
    assert len(receipts) == DURING  # every event published during the outage was accepted
    everything = before + during
    poll_until(
        lambda: all(not store.is_allowed(e.subject_id, ADS) for e in everything),
        RECOVERY_TIMEOUT_S,
        f"every withdrawal applied after a {outage_s:.0f} s broker outage",
        interval_s=0.5,
        explain=worker.describe,
    )
    wanted = {e.event_id for e in everything}
    read_until(
        settings,
        settings.topics.instructions("ads"),
        lambda rs: wanted <= {r.obj.source_event_id for r in rs},
        timeout_s=RECOVERY_TIMEOUT_S,
        what=f"a STOP_PROCESSING instruction for each of the {len(wanted)} withdrawals",
        explain=worker.describe,
    )
    assert worker.running, worker.describe()
    # an event is counted when its batch is settled: after its last wave (the subjects'
    # states) and after every batch in flight before it, so the instructions of later
    # batches can be on the topic first; the count must still come, without a new record
    worker.poll(
        lambda: (
            worker.metric("consent_events_total", type="consent.changed", outcome="applied")
            >= len(everything)
        ),
        RECOVERY_TIMEOUT_S,
        f"all {len(everything)} withdrawals counted as applied",
        interval_s=0.5,
    )


def test_a_new_worker_right_after_a_broker_restart_gets_its_partitions(
    worker_factory: WorkerFactory, restarted_broker: None
) -> None:
    """Its new topics (its own and Faust's changelogs) appear in a freshly restarted
    broker's metadata with a delay: the worker created them and subscribed at once, joined
    its group with no partition ("not found in cluster metadata") and sat idle until its
    next metadata refresh, five minutes later. It now waits for every partition's leader."""
    run_stack("down", timeout=120)  # a clean stop and start (a SIGKILL did not show it)
    run_stack("up", timeout=300)
    started = time.monotonic()
    fresh = worker_factory()  # started and ready: its probe event went through the store
    assert time.monotonic() - started < 60.0, fresh.describe()
