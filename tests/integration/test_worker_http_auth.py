"""The worker's HTTP API refuses personal data to callers without a valid bearer token,
against a running worker's real HTTP server: missing, wrong and right tokens on every
personal-data endpoint, ``/healthz`` open, ``/metrics`` behind its own token when one is
set, and an access log that names the caller, never the token or a subject id."""

from __future__ import annotations

import uuid

import pytest

from schemas.settings import Secret

from .processes import TEST_CALLER, TEST_TOKEN, WorkerFactory, WorkerProcess, consent_changed
from .processes import worker_factory as worker_factory
from .test_worker_http_cli import _publish

pytestmark = pytest.mark.integration

WRONG = Secret(f"wrong-{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def worker(worker_factory: WorkerFactory) -> WorkerProcess:
    # the metrics token is the tests' token, so readiness (which scrapes /metrics) passes
    return worker_factory(env={"CONSENT_STREAM_METRICS_TOKEN": TEST_TOKEN.reveal().decode()})


def test_personal_data_needs_a_valid_token(worker: WorkerProcess) -> None:
    subject = f"auth-{uuid.uuid4().hex[:8]}"
    _publish(worker, consent_changed(subject, "marketing_sms", False))
    worker.poll(lambda: worker.seen(subject), 30, "the subject in the store")
    for path in (f"/consent/{subject}", f"/requests/{uuid.uuid4()}"):
        for token in (None, WRONG):
            status, body = worker.http_get(path, token=token)
            assert status == 401, (path, token, body)
            assert b"bearer token is required" in body
        status, _ = worker.http_get(path)
        assert status in (200, 404), path  # the tests' token: answered (404: unknown request)
    status, _ = worker.http_get(f"/consent/{subject}")
    assert status == 200


def test_health_is_open_and_metrics_have_their_own_token(worker: WorkerProcess) -> None:
    assert worker.http_get("/healthz", token=None)[0] == 200
    assert worker.http_get("/metrics", token=None)[0] == 401
    assert worker.http_get("/metrics", token=WRONG)[0] == 401
    status, body = worker.http_get("/metrics")
    assert status == 200 and b"consent_events_total" in body


def test_the_access_log_names_the_caller_never_the_token_or_the_subject(
    worker: WorkerProcess,
) -> None:
    subject = f"auth-log-{uuid.uuid4().hex[:8]}"
    worker.http_get(f"/consent/{subject}")
    worker.http_get(f"/consent/{subject}", token=WRONG)
    log = worker.config.log_path.read_text(encoding="utf-8", errors="replace")
    assert f"GET /consent/{{subject_id}} 200 by {TEST_CALLER}" in log
    assert "GET /consent/{subject_id} 401 (no valid token)" in log
    assert subject not in log
    assert TEST_TOKEN.reveal().decode() not in log and WRONG.reveal().decode() not in log


def test_a_malformed_request_is_refused_and_logged_without_its_subject(
    worker: WorkerProcess,
) -> None:
    """aiohttp refuses a request line over 8 KB (400) and logs why; the request line,
    which holds the subject id, stays out of the log."""
    subject = f"auth-long-{uuid.uuid4().hex[:8]}"
    status, _ = worker.http_get(f"/consent/{subject}{'x' * 9000}")
    assert status == 400

    def logged() -> str | None:
        log = worker.config.log_path.read_text(encoding="utf-8", errors="replace")
        return log if "refused as malformed (400, LineTooLong" in log else None

    log = worker.poll(logged, 10.0, "the refusal in the worker's log")
    assert subject not in log


def test_a_subject_id_no_event_can_carry_is_a_400_not_the_defaults(
    worker: WorkerProcess,
) -> None:
    for path in ("/consent/a%00b", f"/consent/{'x' * 257}"):
        status, body = worker.http_get(path)
        assert status == 400, (path, body)
        assert b"subject_id" in body
