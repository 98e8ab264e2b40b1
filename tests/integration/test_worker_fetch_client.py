"""The worker with Faust's own fetcher (``CONSENT_STREAM_FETCH_CLIENT=aiokafka``): the
fallback from the librdkafka record reader keeps working. Every other worker test runs
with the default, librdkafka.

One worker for the module, under its own uuid namespace (see ``processes.py``).
"""

from __future__ import annotations

import pytest

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher
from schemas.partner import InstructionAction
from schemas.settings import Settings

from .processes import WorkerFactory, WorkerProcess, consent_changed, new_subject, read_until
from .processes import worker_factory as worker_factory
from .worker_fixtures import publisher as publisher
from .worker_fixtures import redis_client as redis_client
from .worker_fixtures import settings as settings
from .worker_fixtures import store as store

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0
ADS = "personalized_ads"


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory(env={"CONSENT_STREAM_FETCH_CLIENT": "aiokafka"})


def test_with_aiokafka_fetching_events_reach_the_store_and_the_partner_in_order(
    worker: WorkerProcess, publisher: ConsentPublisher, store: ConsentStore, settings: Settings
) -> None:
    subjects = [new_subject() for _ in range(20)]
    withdrawals = [consent_changed(s, ADS, granted=False) for s in subjects]
    for event in withdrawals:
        publisher.publish(event)
    publisher.flush()
    worker.poll(
        lambda: not any(store.is_allowed(s, ADS) for s in subjects),
        TIMEOUT_S,
        "the store to deny ads to every subject",
    )
    wanted = {e.event_id for e in withdrawals}
    records = read_until(
        settings,
        settings.topics.instructions("ads"),
        lambda rs: wanted <= {r.obj.source_event_id for r in rs},
        timeout_s=TIMEOUT_S,
        what="a STOP_PROCESSING instruction per withdrawal",
        explain=worker.describe,
    )
    stops = [r.obj for r in records if r.obj.source_event_id in wanted]
    assert len(stops) == len(wanted)  # one each, none twice
    assert {ins.action for ins in stops} == {InstructionAction.STOP_PROCESSING}
    assert worker.metric("consent_events_total", outcome="applied") >= len(subjects)
