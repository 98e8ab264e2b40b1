"""The worker's HTTP API and the CLI's read commands, against a running worker.

GET /healthz, /metrics, /consent/{subject} (an unseen subject: the policy's defaults,
``"seen": false``), /requests/{id} (404 with a JSON body for unknown ids), and
``consent-stream check | status | report | replay`` as subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from producers.publisher import ConsentPublisher
from schemas.partner import InstructionAction, PartnerInstruction

from .processes import (
    REPO_ROOT,
    WorkerFactory,
    WorkerProcess,
    consent_changed,
    data_shared,
    deletion_requested,
    new_subject,
    now_ms,
    read_all,
)
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

CLI = str(REPO_ROOT / ".venv" / "bin" / "consent-stream")


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> Iterator[WorkerProcess]:
    yield worker_factory()


def _cli(worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=worker.config.env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _publish(worker: WorkerProcess, *events: object) -> None:
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        for ev in events:
            publisher.publish(ev)  # type: ignore[arg-type]


def _closed_request(worker: WorkerProcess) -> tuple[str, str]:
    """A closed account whose payment partner holds data; returns (subject, request id)."""
    subject, request_id = new_subject("closed"), str(uuid.uuid4())
    t = now_ms()
    _publish(
        worker,
        data_shared(
            subject,
            "payment",
            ("payment_records",),
            {"order_no": "SO-77"},
            transaction_completed_at=t - 1000,
            occurred_at=t - 500,
        ),
        deletion_requested(subject, request_id=request_id, occurred_at=t),
    )
    worker.poll(lambda: worker.http_status(f"/requests/{request_id}") == 200, 30, "request view")
    return subject, request_id


def test_healthz_and_metrics(worker: WorkerProcess) -> None:
    status, body = worker.get_json("/healthz")
    assert status == 200 and body == {"status": "ok", "consent_store": "ok"}
    assert worker.metric("consent_events_total", type="consent.changed", outcome="applied") >= 1


def test_consent_view_of_a_subject(worker: WorkerProcess) -> None:
    subject = new_subject()
    _publish(worker, consent_changed(subject, "marketing_sms", False))
    worker.poll(lambda: worker.seen(subject), 30, "consent view")
    status, view = worker.get_json(f"/consent/{subject}")
    assert status == 200 and view["seen"] is True
    assert view["purposes"]["marketing_sms"]["allowed"] is False
    assert view["purposes"]["personalized_recommendation"]["allowed"] is True  # opt-out default
    assert view["purposes"]["research_sharing"]["allowed"] is False  # opt-in default
    _same_answers_as_check(worker, subject, view)


def test_an_unseen_subject_gets_the_defaults_check_answers(worker: WorkerProcess) -> None:
    """One question, one answer: the HTTP view and ``check`` agree on an unseen subject."""
    subject = new_subject("never-seen")
    status, view = worker.get_json(f"/consent/{subject}")
    assert status == 200 and view["seen"] is False and view["version"] is None
    assert all(p["default"] for p in view["purposes"].values())
    _same_answers_as_check(worker, subject, view)


def _same_answers_as_check(worker: WorkerProcess, subject: str, view: dict[str, Any]) -> None:
    for purpose, answer in view["purposes"].items():
        check = _cli(worker, "check", subject, purpose)
        expected = (0, "allowed") if answer["allowed"] else (1, "denied")
        assert (check.returncode, check.stdout.strip()) == expected, purpose


def test_request_view_and_404_for_unknown(worker: WorkerProcess) -> None:
    _, request_id = _closed_request(worker)
    status, body = worker.get_json(f"/requests/{request_id}")
    assert status == 200
    assert body["request_id"] == request_id
    assert body["status"] in ("RECEIVED", "IN_PROGRESS")
    assert [p["partner"] for p in body["partners"]] == ["payment"]
    assert body["partners"][0]["action"] == "RESTRICT"
    status, body = worker.get_json(f"/requests/{uuid.uuid4()}")
    assert status == 404 and "unknown request" in body["error"]


def test_cli_check_exit_codes(worker: WorkerProcess) -> None:
    subject = new_subject()
    _publish(worker, consent_changed(subject, "personalized_ads", False))
    worker.poll(lambda: worker.seen(subject), 30, "store entry")
    denied = _cli(worker, "check", subject, "personalized_ads")
    assert (denied.returncode, denied.stdout.strip()) == (1, "denied")
    allowed = _cli(worker, "check", subject, "marketing_push")
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "allowed")
    unknown = _cli(worker, "check", subject, "mind_reading")
    assert unknown.returncode == 2 and "unknown purpose" in unknown.stderr


def test_cli_status_and_report_hold_no_personal_data(worker: WorkerProcess) -> None:
    subject, request_id = _closed_request(worker)
    status = _cli(worker, "status", request_id)
    assert status.returncode == 0 and request_id in status.stdout
    text = _cli(worker, "report", request_id)
    assert text.returncode == 0
    assert "payment" in text.stdout and "RESTRICT" in text.stdout
    as_json = _cli(worker, "report", request_id, "--json")
    doc = json.loads(as_json.stdout)
    assert doc["request_id"] == request_id and doc["contains_personal_data"] is False
    for output in (status.stdout, text.stdout, as_json.stdout):
        assert subject not in output and "SO-77" not in output
    missing = _cli(worker, "status", str(uuid.uuid4()))
    assert missing.returncode == 1 and "unknown request" in missing.stderr


def _replayed(worker: WorkerProcess, subjects: set[str]) -> list[PartnerInstruction]:
    records = read_all(worker.settings, worker.settings.topics.instructions("ads"))
    return [
        r.obj
        for r in records
        if isinstance(r.obj, PartnerInstruction)
        and r.obj.source_event_id
        and r.obj.ack_key == r.obj.instruction_id
        and r.headers.get("ce_source") == b"consent-stream"
        and r.obj.purposes == ("personalized_ads",)
        and r.obj.subject_ref in subjects
    ]


def test_cli_replay_sends_current_state_to_a_partner_idempotently(worker: WorkerProcess) -> None:
    from streams.pseudonyms import Pseudonyms

    withdrawn = [new_subject("replay") for _ in range(2)]
    _publish(worker, *(consent_changed(s, "personalized_ads", False) for s in withdrawn))
    for s in withdrawn:
        worker.poll(lambda s=s: worker.seen(s), 30, "store entry")
    refs = {Pseudonyms(worker.settings.subject_keys).subject_ref("ads", s) for s in withdrawn}
    before = {i.instruction_id for i in _replayed(worker, refs)}
    first = _cli(worker, "replay", "--partner", "ads")
    assert first.returncode == 0, first.stderr
    after_first = {i.instruction_id for i in _replayed(worker, refs)} - before
    stops = [i for i in _replayed(worker, refs) if i.instruction_id in after_first]
    assert {i.subject_ref for i in stops} == refs
    assert {i.action for i in stops} == {InstructionAction.STOP_PROCESSING}
    second = _cli(worker, "replay", "--partner", "ads")
    assert second.returncode == 0, second.stderr
    after_second = {i.instruction_id for i in _replayed(worker, refs)} - before
    assert after_second == after_first  # same ids: a de-duplicating partner acts once
    unknown = _cli(worker, "replay", "--partner", "nobody")
    assert unknown.returncode == 2
