"""One ``consent-stream worker`` subprocess under a uuid namespace, stopped by its pid.

The namespace isolates it on the shared stack: topics ``<ns>.consent.events.v1``..., the
Faust app id (and so its consumer group and changelog topics), the Redis key prefix.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from benchlib import group_lag
from childproc import REPO_ROOT, ChildProcess, child_env
from prometheus_client.parser import text_string_to_metric_families

from producers.publisher import ConsentPublisher
from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from schemas.policy import Policy, load_policy
from schemas.settings import Secret, Settings
from schemas.store_login import without_login
from streams.acl.sync import run_acl_sync
from streams.demo.processes import http_get

__all__ = ["Samples", "WorkerProcess", "parse_metrics", "rss_kib"]

Samples = list[tuple[str, dict[str, str], float]]
BENCH_TOKEN = Secret(f"bench-{uuid.uuid4().hex}")  # the bench workers' HTTP bearer token


def parse_metrics(text: str) -> Samples:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _command() -> list[str]:
    beside = Path(sys.executable).parent / "consent-stream"
    script = beside if beside.exists() else REPO_ROOT / ".venv" / "bin" / "consent-stream"
    return [str(script), "--log-level", "WARNING", "worker"]


@dataclass
class WorkerProcess:
    base: Settings
    namespace: str
    http_port: int
    work_dir: Path

    def __post_init__(self) -> None:
        self.settings = replace(
            self.base,
            http_port=self.http_port,
            data_dir=str(self.work_dir / "data"),
            topic_namespace=self.namespace,
            app_id=self.app_id,
            redis_prefix=self.namespace,
        )
        self.log_path = self.work_dir / "worker.log"
        self.process = ChildProcess(_command(), self._env(), self.log_path)

    @property
    def app_id(self) -> str:
        return f"consent-stream-{self.namespace}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _env(self) -> dict[str, str]:
        s = self.settings
        return child_env(
            {
                "CONSENT_STREAM_BOOTSTRAP_SERVERS": s.bootstrap_servers,
                "CONSENT_STREAM_REDIS_URL": without_login(s.redis_url),  # as `writer`
                "CONSENT_STREAM_PARTITIONS": str(s.partitions),
                "CONSENT_STREAM_TOPIC_NAMESPACE": s.topic_namespace,
                "CONSENT_STREAM_APP_ID": s.app_id,
                "CONSENT_STREAM_REDIS_PREFIX": s.redis_prefix,
                "CONSENT_STREAM_HTTP_PORT": str(s.http_port),
                "CONSENT_STREAM_DATA_DIR": s.data_dir,
                "CONSENT_STREAM_DEV_MODE": "1",  # the bench's Settings use the development key
                "CONSENT_STREAM_HTTP_TOKENS": f"bench={BENCH_TOKEN.reveal().decode()}",
            }
        )

    def start(self) -> None:
        """Start the worker (as the ``worker`` principal, its namespace's ACLs synced)."""
        sync = io.StringIO()
        run_acl_sync(self.settings, load_policy(self.settings.policy_path), sync)
        self.process.start()

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the pid we started, SIGKILL after ``timeout_s``."""
        self.process.stop(timeout_s)

    def http_get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        return http_get(self.http_port, path, timeout_s, BENCH_TOKEN)

    def seen(self, subject_id: str) -> bool:
        """The consent store holds a state of ``subject_id``."""
        status, body = self.http_get(f"/consent/{subject_id}")
        return status == 200 and json.loads(body).get("seen") is True

    def metrics(self, *names: str) -> Samples:
        """The worker's series (only those of ``names``, if given: a cheaper page)."""
        query = "&".join(f"name[]={n}" for n in names)
        status, body = self.http_get(f"/metrics?{query}" if query else "/metrics")
        if status != 200:
            raise RuntimeError(f"worker /metrics answered {status}")
        return parse_metrics(body.decode())

    def metric(self, name: str) -> float:
        """Sum of every series of ``name`` (all labels)."""
        return sum(v for n, _, v in self.metrics(name) if n == name)

    def events_total(self) -> float:
        return self.metric("consent_events_total")

    def lag(self, policy: Policy) -> int:
        """Records the worker's consumer group has not committed yet (events, ledger, acks)."""
        names = self.settings.topics
        topics = [names.events, names.ledger, *(names.acks(p) for p in sorted(policy.partners))]
        return group_lag(self.settings, self.app_id, topics)

    def wait_idle(self, policy: Policy, timeout_s: float) -> int:
        """Wait (bounded) until every record was processed and committed; returns the lag."""
        deadline = time.monotonic() + timeout_s
        while (lag := self.lag(policy)) > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        return lag

    def wait_ready(self, policy: Policy, timeout_s: float) -> float:
        """HTTP up, then a probe event through the store; returns the seconds it took."""
        started = time.monotonic()
        self._poll(lambda: self.http_get("/healthz")[0] == 200, started + timeout_s, "healthz")
        probe = f"probe-{uuid.uuid4().hex[:12]}"
        payload = ConsentChanged("marketing_sms", ConsentDecision.GRANTED, "2023-09-01", "probe")
        event = ConsentEvent(str(uuid.uuid4()), probe, int(time.time() * 1000), "bench", payload)
        with ConsentPublisher(self.settings, policy) as publisher:
            publisher.publish(event)
        self._poll(lambda: self.seen(probe), started + timeout_s, "probe")
        # the store is written in the batch's first wave, the event counted when it is done
        self._poll(lambda: self.events_total() >= 1, started + timeout_s, "probe counted")
        return time.monotonic() - started

    def _poll(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        while not check():
            if not self.alive():
                raise RuntimeError(f"worker exited while waiting for {what}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready ({what}): {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return self.process.log_tail(lines)
