"""(g) The ledger sweep with a long history: events latency with 1,000,000 open tickets.

Every ticket is a deletion request whose payment partner answered RESTRICTED for a
3-year retention (the policy's transaction records): open work the ledger keeps for
years. They are written straight into a fresh worker's tickets changelog (the records
the ledger itself writes, in the partition the ledger uses), then the worker starts,
recovers them and indexes them; the step reports that start-up, the worker's memory,
and the latency of events at fixed rates while the periodic sweep runs over the index.
Compare with (d) at the same rates on a worker without tickets.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import Any

from benchlib import (
    create_topics,
    delete_groups,
    delete_redis_prefix,
    delete_topics,
    free_port,
    new_namespace,
    produce_one,
)
from histograms import LOOP_LAG, between, loop_lag_within_s, reading
from latency import Planned, run_latency_steps
from report import JUST_STARTED
from workerproc import WorkerProcess, rss_kib

from producers.publisher import make_producer
from schemas.events import DeletionScope
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.policy import Policy
from schemas.settings import Settings
from streams.acl.sync import remove_namespace_acls
from streams.fanout import RequestOpening
from streams.ledger.codec import ledger_partition, ticket_to_json
from streams.ledger.tickets import apply_ack, mark_dispatched, open_ticket
from streams.pseudonyms import instruction_id

__all__ = ["held_tickets", "sweep_runs_between", "sweep_step"]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
TEMPLATE_KEY = "00000000-0000-4000-8000-000000000000"


def held_ticket(policy: Policy, now: int) -> bytes:
    """A request ticket whose payment RESTRICT was answered RESTRICTED for 3 years."""
    iid = instruction_id(TEMPLATE_KEY, "payment", "RESTRICT")
    until = now + 3 * 365 * DAY_MS
    ins = PartnerInstruction(
        instruction_id=iid,
        source_event_id=TEMPLATE_KEY,
        request_id=TEMPLATE_KEY,
        partner="payment",
        action=InstructionAction.RESTRICT,
        purposes=(),
        categories=("payment_records",),
        partner_refs=MappingProxyType({"payment_account_ref": "PA-1"}),
        subject_ref="0" * 64,
        subject_id=None,
        app_id=None,
        issued_at=now,
        due_by=now + policy.deadline_ms("payment", InstructionAction.RESTRICT),
        retain_until=until,
        ack_key=TEMPLATE_KEY,
    )
    opening = RequestOpening(
        TEMPLATE_KEY, "d" * 64, DeletionScope.ACCOUNT, (), now, now, now + 15 * DAY_MS, now
    )
    ticket = mark_dispatched(open_ticket(None, TEMPLATE_KEY, opening, [(ins, "r")], now), now)
    ack = PartnerAcknowledgement(iid, "payment", AcknowledgementStatus.RESTRICTED, now, until)
    held, _ = apply_ack(ticket, ack, "payment", now)
    assert held is not None and not held.settled  # noqa: S101 - a retention hold
    encoded: bytes = ticket_to_json(held)
    return encoded


def held_tickets(
    settings: Settings, policy: Policy, changelog: str, count: int, timeout_s: float
) -> dict[str, Any]:
    """Write ``count`` held tickets into ``changelog``, each in its ledger partition."""
    template = held_ticket(policy, int(time.time() * 1000))
    producer: Any = make_producer(settings)
    started = time.monotonic()
    for _ in range(count):
        key = str(uuid.uuid4())
        value = template.replace(TEMPLATE_KEY.encode(), key.encode())
        partition = ledger_partition(key, settings.partitions)
        produce_one(producer, changelog, (key.encode(), value, []), partition=partition)
        producer.poll(0)
    left = producer.flush(timeout_s)
    return {
        "tickets": count - left,
        "ticket_bytes": len(template),
        "write_s": round(time.monotonic() - started, 1),
    }


SWEEP_METRIC = "consent_ledger_sweep_seconds"


def sweep_runs_between(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """How often the sweep ran between two readings of its histogram, its mean time on the
    event loop, and the smallest bucket bound every run fitted in (ms; None: longer than
    all)."""
    runs = between(before, after)
    if not runs["count"]:
        return {"sweep_runs": 0}
    longest = runs["longest_within_s"]
    return {
        "sweep_runs": runs["count"],
        "sweep_mean_ms": round(runs["mean_s"] * 1000, 3),
        "sweep_longest_within_ms": None if longest is None else longest * 1000,
    }


def sweep_step(
    settings: Settings,
    policy: Policy,
    work: Path,
    count: int,
    rates: tuple[float, ...],
    duration_s: float,
    ready_s: float,
) -> dict[str, Any]:
    namespace = new_namespace()
    worker = WorkerProcess(settings, namespace, free_port(), work / namespace)
    changelog = f"{worker.app_id}-consent-tickets-changelog"
    try:
        create_topics(settings, [changelog], {"cleanup.policy": "compact"})
        written = held_tickets(settings, policy, changelog, count, ready_s)
        worker.start()
        started = time.monotonic()
        worker.wait_ready(policy, ready_s)
        ready = time.monotonic() - started
        lag_ready = reading(worker, LOOP_LAG)  # the recovery and indexing of the tickets
        held = worker.metric("consent_ledger_tickets")
        rss = rss_kib(worker.pid)
        plan = [
            Planned(f"{rates[0]:.0f}/s {JUST_STARTED}", rates[0], duration_s, noop=False),
            *(Planned(f"{rate:.0f}/s", rate, duration_s, noop=False) for rate in rates),
        ]
        before = reading(worker, SWEEP_METRIC)
        steps = run_latency_steps(worker, policy, plan, 120.0, (50.0, 3.0))
        return {
            **sweep_runs_between(before, reading(worker, SWEEP_METRIC)),
            "loop_lag_start_within_s": loop_lag_within_s({}, lag_ready),
            "loop_lag_steps_within_s": loop_lag_within_s(lag_ready, reading(worker, LOOP_LAG)),
            **written,
            "worker_ready_s": round(ready, 1),
            "tickets_indexed": held,
            "worker_rss_mib": round(rss / 1024, 1),
            "latency": steps,
            "complete": held >= count,
        }
    finally:
        worker.stop()
        delete_topics(settings, [f"{namespace}.", f"{worker.app_id}-"])
        delete_groups(settings, [worker.app_id])
        remove_namespace_acls(worker.settings, sorted(policy.partners))
        delete_redis_prefix(settings.redis_url, namespace)
