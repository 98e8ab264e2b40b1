"""A worker that recovers a ledger at start handles a lone event published before it
joined its consumer group.

While the tickets changelog is recovered, Faust drops records it fetched from the source
partitions (not active yet, or queued when the flow resumes), and aiokafka's seek to the
committed offsets does not move a partition with nothing committed: the probe that
``wait_ready`` publishes, the only record of its partition, then never reached the
agent (8 of 21 starts with 2,000 tickets before ``RedeliveringConsumer`` sought again
after the rebalance). Each start here is a fresh group with tickets to recover.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .processes import WorkerFactory
from .processes import worker_factory as worker_factory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from benchlib import create_topics
from sweep import held_tickets

pytestmark = pytest.mark.integration

STARTS = 3
TICKETS = 2_000


@pytest.mark.timeout(240)
def test_a_lone_event_is_handled_after_a_start_that_recovers_the_ledger(
    worker_factory: WorkerFactory,
) -> None:
    for _ in range(STARTS):
        worker = worker_factory(start=False)
        changelog = f"{worker.config.app_id}-consent-tickets-changelog"
        create_topics(worker.settings, [changelog], {"cleanup.policy": "compact"})
        written = held_tickets(worker.settings, worker.policy, changelog, TICKETS, 60.0)
        assert written["tickets"] == TICKETS
        worker.start()
        worker.wait_ready(60.0)  # publishes one probe event and waits for it in the store
        assert worker.metric("consent_ledger_tickets") == TICKETS
        worker.stop()
