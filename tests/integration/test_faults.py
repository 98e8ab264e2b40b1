"""Faults: a Redis outage and a partner outage lose nothing.

* Redis: the worker writes to a redis-server of this test's own (AOF, fsync always),
  killed by its pid mid-stream and restarted; every accepted event ends in the store.
* Partner: no partner runs, the instruction waits on its topic and is flagged overdue;
  the simulated partner starts and acknowledges it, and nothing is pending any more.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import redis

from consumers.store.consent_store import ConsentStore
from producers.publisher import ConsentPublisher

from .processes import (
    REPO_ROOT,
    WorkerFactory,
    consent_changed,
    free_port,
    new_subject,
    now_ms,
    poll_until,
)
from .processes import worker_factory as worker_factory

pytestmark = pytest.mark.integration

CLI = str(REPO_ROOT / ".venv" / "bin" / "consent-stream")


class RedisServer:
    """A redis-server of the test's own, signalled only by the pid it started."""

    def __init__(self, directory: Path) -> None:
        self.port, self.dir = free_port(), directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=(self.dir / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        poll_until(lambda: _pings(client), 20, f"redis-server on {self.port}")

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_a_redis_outage_mid_stream_loses_no_store_write(
    worker_factory: WorkerFactory, own_redis: RedisServer
) -> None:
    worker = worker_factory(env={"CONSENT_STREAM_REDIS_URL": own_redis.url})
    subjects = [new_subject("redis-outage") for _ in range(150)]
    t = now_ms()
    events = [consent_changed(s, "personalized_ads", False, occurred_at=t) for s in subjects]
    events += [consent_changed(s, "research_sharing", True, occurred_at=t + 1) for s in subjects]
    applied = lambda: worker.metric(  # noqa: E731
        "consent_events_total", type="consent.changed", outcome="applied"
    )
    before = applied()
    half = len(events) // 2
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        for ev in events[:half]:
            publisher.publish_async(ev)
        assert publisher.flush(60) == 0
        worker.poll(lambda: applied() - before >= half, 60, "the first half applied")
        own_redis.kill()
        for ev in events[half:]:  # published while Redis is down
            publisher.publish_async(ev)
        assert publisher.flush(60) == 0
    worker.poll(lambda: worker.metric("consent_store_write_retries_total") > 0, 30, "a store retry")
    time.sleep(2)  # the worker keeps retrying its store write meanwhile
    assert worker.running
    assert applied() - before < len(events)  # no event counts as applied without its store write
    # the HTTP API (its own thread and Redis client) says so, and answers again after
    assert worker.http_get(f"/consent/{subjects[0]}", timeout_s=30.0)[0] == 503
    assert worker.http_get("/healthz", token=None, timeout_s=30.0)[0] == 503
    own_redis.start()
    worker.poll(lambda: applied() - before >= len(events), 120, "every event applied")
    code, view = worker.get_json(f"/consent/{subjects[-1]}")
    assert code == 200 and view["purposes"]["personalized_ads"]["allowed"] is False

    assert worker.metric("consent_store_write_retries_total") > 0
    store = ConsentStore(
        redis.Redis.from_url(own_redis.url),
        worker.policy,
        worker.settings.subject_keys,
        worker.settings.redis_prefix,
    )
    wrong = [
        s
        for s in subjects
        if store.is_allowed(s, "personalized_ads") or not store.is_allowed(s, "research_sharing")
    ]
    assert wrong == []


@pytest.fixture(scope="module")
def short_deadline_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (resources.files("schemas") / "policy" / "policy.v1.toml").read_text("utf-8")
    marker = '[partners.ads.deadlines]\nSTOP_PROCESSING = "1h"'
    assert marker in text
    path = Path(tmp_path_factory.mktemp("policy")) / "short-deadline.toml"
    path.write_text(text.replace(marker, marker.replace('"1h"', '"2s"')), "utf-8")
    return path


def test_a_partner_outage_is_visible_and_caught_up(
    worker_factory: WorkerFactory, short_deadline_policy: Path, tmp_path: Path
) -> None:
    worker = worker_factory(env={"CONSENT_STREAM_POLICY": str(short_deadline_policy)})
    subject = new_subject("partner-outage")
    with ConsentPublisher(worker.settings, worker.policy) as publisher:
        publisher.publish(consent_changed(subject, "personalized_ads", False))
    worker.poll(
        lambda: worker.metric("consent_instructions_overdue", partner="ads") >= 1,
        30,
        "the ads instruction flagged overdue (deadline 2 s, sweep every 5 s)",
    )
    assert worker.metric("consent_instructions_pending", partner="ads") >= 1

    env = {**worker.config.env(), "CONSENT_STREAM_POLICY": str(short_deadline_policy)}
    partner = subprocess.Popen(
        [CLI, "partner", "--name", "ads", "--delay-ms", "0", "--state-dir", str(tmp_path)],
        env=env,
        cwd=REPO_ROOT,
        stdout=(tmp_path / "ads.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        worker.poll(
            lambda: (
                worker.metric("consent_acknowledgements_total", partner="ads", status="DONE") >= 1
            ),
            60,
            "the ads acknowledgement",
        )
        worker.poll(
            lambda: worker.metric("consent_instructions_pending", partner="ads") == 0,
            30,
            "nothing pending for ads",
        )
        assert worker.metric("consent_instructions_overdue", partner="ads") == 0
    finally:
        partner.send_signal(signal.SIGTERM)
        partner.wait(20)
    assert partner.returncode == 0
