"""The metrics contract on the running processes: a worker and a simulated partner
(``consent-stream partner --metrics-port``) serve /metrics pages that ``promtool check
metrics`` accepts without a single finding, once labelled series exist; and each page has
exactly the families of its factory (docs/metrics.md lists them, a unit test checks that).

promtool comes from Debian's ``prometheus`` package, installed by ``deploy/local/stack.py
install``: missing, the test fails.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from consumers.partner_metrics import partner_metrics
from producers.publisher import ConsentPublisher
from streams.metrics import stream_metrics

from .processes import (
    REPO_ROOT,
    Metrics,
    WorkerFactory,
    WorkerProcess,
    consent_changed,
    data_shared,
    deletion_requested,
    free_port,
    new_subject,
    poll_until,
    worker_command,
)
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0
PARTNER = "ads"


class PartnerProcess:
    """``consent-stream partner --name ads --metrics-port P`` in the worker's namespace."""

    def __init__(self, worker: WorkerProcess, state_dir: Path) -> None:
        self.port = free_port()
        self.log_path = state_dir / "partner.log"
        command = [worker_command()[0], "partner", "--name", PARTNER]
        command += ["--metrics-port", str(self.port), "--state-dir", str(state_dir)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=worker.config.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def page(self) -> str | None:
        if self.proc.poll() is not None:
            pytest.fail(f"the partner exited ({self.proc.returncode})\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()[-40:]
        return "--- partner log ---\n" + "\n".join(lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory()


@pytest.fixture(scope="module")
def partner(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PartnerProcess]:
    process = PartnerProcess(worker, tmp_path_factory.mktemp("partner-ads"))
    try:
        poll_until(process.page, TIMEOUT_S, "the partner's /metrics", explain=process.log_tail)
        yield process
    finally:
        process.stop()


def promtool_check(page: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: `python deploy/local/stack.py install` installs it")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=page,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def families(page: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(page):
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return {n for n in names if not n.endswith("_created")}


def factory_names(factory: object) -> set[str]:
    registry = CollectorRegistry()
    group = factory(registry)  # type: ignore[operator]
    names = set()
    for f in fields(group):
        (family,) = getattr(group, f.name).describe()
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def publish_traffic(worker: WorkerProcess) -> None:
    """A withdrawal (STOP_PROCESSING to ads), a deletion of ads data (ERASE, a request),
    and an undecodable record (a dead letter): every labelled family gets series."""
    withdrawn, deleted = new_subject(), new_subject()
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        publisher.publish(consent_changed(withdrawn, "personalized_ads", granted=False))
        publisher.publish_many(
            [
                data_shared(deleted, PARTNER, ("pseudonymous_ids",), {"ad_id": "AD-1"}),
                deletion_requested(deleted),
            ]
        )
    producer = Producer(worker.settings.producer_config())
    producer.produce(worker.settings.topics.events, value=b"not avro", key=withdrawn.encode())
    assert producer.flush(30) == 0


def test_worker_and_partner_pages_pass_promtool_check_metrics(
    worker: WorkerProcess, partner: PartnerProcess
) -> None:
    publish_traffic(worker)

    def worker_ready() -> Metrics | None:
        m = worker.metrics()
        done = (
            m.value("consent_acknowledgements_total", partner=PARTNER) >= 2
            and m.value("consent_deadletters_total") >= 1
            and m.value("consent_requests_finished_total") >= 1
        )
        return m if done else None

    def partner_ready() -> str | None:
        page = partner.page()
        handled = "consent_stream_partner_instructions_handled_total"
        if page is None or Metrics(page).value(handled, partner=PARTNER) < 2:
            return None
        return page

    metrics = worker.poll(worker_ready, TIMEOUT_S, "acks, a dead letter and a finished request")
    partner_page = poll_until(
        partner_ready, TIMEOUT_S, "the partner to handle 2 instructions", explain=partner.log_tail
    )
    status, body = worker.http_get("/metrics")
    assert status == 200
    worker_page = body.decode()

    # labelled series exist, so promtool sees label-bearing samples of every kind
    assert metrics.value("consent_instructions_total", partner=PARTNER, action="ERASE") >= 1
    assert metrics.series("consent_instruction_to_ack_seconds_bucket")
    for stage in ("events", "acknowledgements", "ledger"):  # every agent sizes its batches
        taken = metrics.value("consent_batch_records_sum", stage=stage)
        assert taken >= metrics.value("consent_batch_records_count", stage=stage) >= 1
    assert "partner=" in partner_page and 'le="5.0"' in partner_page
    # the loop's lag is sampled every 0.25 s from the start; nothing held it for seconds
    samples = metrics.value("consent_event_loop_lag_seconds_count")
    assert samples >= 4
    assert metrics.value("consent_event_loop_lag_seconds_bucket", le="5.0") == samples
    for name, page in (("worker", worker_page), ("partner", partner_page)):
        result = promtool_check(page)
        findings = (result.stdout + result.stderr).strip()
        assert result.returncode == 0, f"{name}: {findings}"
        assert findings == "", f"promtool findings on the {name} page:\n{findings}"

    assert families(worker_page) == factory_names(stream_metrics)

    # name[] renders only the series asked for (what the bench samples while it measures)
    status, body = worker.http_get("/metrics?name[]=consent_events_total")
    assert status == 200
    assert families(body.decode()) == {"consent_events_total"}
    events = Metrics(body.decode()).value("consent_events_total")
    assert events == Metrics(worker_page).value("consent_events_total") >= 3
    assert families(partner_page) == factory_names(partner_metrics)
