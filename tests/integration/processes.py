"""Helpers to run the project's processes in integration tests (and measurement scripts).

* ``WorkerProcess``: one ``consent-stream worker`` subprocess, isolated under a uuid
  namespace (topics, Faust app id, Redis prefix), its own HTTP port and data dir. Started
  in its own session; stopped and killed only by the pid it started.
* ``worker_factory``: module-scoped pytest fixture; yields a function that creates
  workers and guarantees they are stopped (and their topics and Redis keys removed).
* ``read_until`` / ``read_all``: every record of a topic from the beginning (assign() to
  all partitions), decoded with ``AvroSerde``.
* ``Metrics``: a parsed ``/metrics`` page; ``poll_until``: poll a condition with a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, NoReturn, Protocol, TypeVar, cast

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from producers.publisher import ConsentPublisher
from schemas.cloudevents import header_map
from schemas.errors import ConsentStreamError
from schemas.events import (
    ConsentChanged,
    ConsentDecision,
    ConsentEvent,
    DataShared,
    DeletionRequested,
    DeletionScope,
    Payload,
    PermissionRevoked,
)
from schemas.kafka_security import security_env
from schemas.policy import Policy, load_policy
from schemas.serde import AvroSerde
from schemas.settings import Secret, Settings
from schemas.store_login import without_login
from streams.acl.sync import remove_namespace_acls
from streams.demo.processes import free_port, http_get

from .kafka_auth import admin_settings, sync_acls

__all__ = [
    "Metrics",
    "TopicRecord",
    "WorkerFactory",
    "WorkerProcess",
    "free_port",
    "poll_until",
    "read_all",
    "read_until",
    "worker_factory",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 80
PROBE_PURPOSE = "marketing_sms"  # opt-out, no partner processes it: a grant sends nothing
TEST_CALLER = "tests"
TEST_TOKEN = Secret(f"tests-{uuid.uuid4().hex}")  # the workers' HTTP token for this session

T = TypeVar("T")


def worker_command() -> list[str]:
    """The ``consent-stream`` entry point of the venv running the tests."""
    beside = Path(sys.executable).parent / "consent-stream"
    script = beside if beside.exists() else REPO_ROOT / ".venv" / "bin" / "consent-stream"
    return [str(script), "worker"]


def poll_until(
    check: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value (returned) or fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every process still running, then wait for each; SIGKILL one that takes
    longer than ``timeout_s`` (all by the pids they got)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Metrics:
    """A parsed Prometheus text page; ``value`` sums the samples matching the labels."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            v
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == want for k, want in labels.items())
        )

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples if n == name]


@dataclass(frozen=True)
class WorkerConfig:
    namespace: str
    http_port: int
    data_dir: Path
    log_path: Path
    bootstrap_servers: str
    redis_url: str
    partitions: int = 3
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def app_id(self) -> str:
        return f"consent-stream-{self.namespace}"

    def settings(self) -> Settings:
        """The tests' view of this worker's settings (as the admin principal)."""
        return admin_settings(
            bootstrap_servers=self.bootstrap_servers,
            redis_url=self.redis_url,
            partitions=self.partitions,
            http_port=self.http_port,
            data_dir=str(self.data_dir),
            topic_namespace=self.namespace,
            app_id=self.app_id,
            redis_prefix=self.namespace,
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_STREAM_")}
        env.update(security_env(os.environ))  # the worker logs in as `worker`
        env.update(
            {
                "CONSENT_STREAM_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "CONSENT_STREAM_REDIS_URL": without_login(self.redis_url),  # as `writer`
                "CONSENT_STREAM_TOPIC_NAMESPACE": self.namespace,
                "CONSENT_STREAM_APP_ID": self.app_id,
                "CONSENT_STREAM_REDIS_PREFIX": self.namespace,
                "CONSENT_STREAM_HTTP_PORT": str(self.http_port),
                "CONSENT_STREAM_DATA_DIR": str(self.data_dir),
                "CONSENT_STREAM_PARTITIONS": str(self.partitions),
                "CONSENT_STREAM_DEV_MODE": "1",  # the tests' Settings use the development key
                "CONSENT_STREAM_HTTP_TOKENS": f"{TEST_CALLER}={TEST_TOKEN.reveal().decode()}",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        return env


class WorkerProcess:
    """One worker subprocess; every signal goes to the pid it started, never by name."""

    def __init__(self, config: WorkerConfig, policy: Policy | None = None) -> None:
        self.config = config
        self.settings = config.settings()
        self.policy = policy or load_policy()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._acls_synced = False
        self.starts = 0
        self.killed = False
        self.exit_expected = False

    # -- lifecycle -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last process started, None while it runs (or before)."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> None:
        if self.running:
            raise RuntimeError("worker already running")
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._acls_synced:  # the `worker` principal's
            sync_acls(self.settings, self.policy.partners)  # ACLs for this namespace
            self._acls_synced = True
        self._log = self.config.log_path.open("ab")
        self._log.write(f"\n===== start #{self.starts + 1} =====\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            worker_command(),
            cwd=REPO_ROOT,
            env=self.config.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        self.killed = False
        self.exit_expected = False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        self.exit_expected = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._append_log(f"did not stop within {timeout_s:.0f} s: SIGKILL")
                proc.kill()
                proc.wait(10)
        self._close_log()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the worker (a crash: no shutdown, no commit) by its pid."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self.fail("kill(): the worker is not running")
        self.exit_expected = True
        proc.kill()
        proc.wait(10)
        self.killed = True
        self._append_log(f"SIGKILL by the test (pid {proc.pid})")
        self._close_log()

    def restart(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        self.stop()
        self.start()
        self.wait_ready(timeout_s)

    def _append_log(self, line: str) -> None:
        with self.config.log_path.open("ab") as fh:
            fh.write(f"===== {line} =====\n".encode())

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- readiness -------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """HTTP up, then a probe event through the consumer group into the store.

        The probe (a grant of an opt-out purpose no partner processes, on a fresh
        probe subject) sends no instruction; it proves the group is assigned and the
        agents process. After a restart it also waits for the probe's partition backlog.
        """
        deadline = time.monotonic() + timeout_s
        self.poll(lambda: self.http_status("/healthz") == 200, timeout_s, "GET /healthz 200")
        probe = f"probe-{uuid.uuid4().hex}"
        with ConsentPublisher(self.settings, self.policy) as publisher:
            publisher.publish(
                ConsentEvent(
                    event_id=str(uuid.uuid4()),
                    subject_id=probe,
                    occurred_at=now_ms(),
                    source="tests.readiness-probe",
                    payload=ConsentChanged(
                        PROBE_PURPOSE, ConsentDecision.GRANTED, NOTICE_VERSION, "probe"
                    ),
                )
            )
        left = max(1.0, deadline - time.monotonic())
        self.poll(lambda: self.seen(probe), left, "the probe event")
        # the store is written in the batch's first wave, the event counted once the batch
        # is done: ready means counted too
        left = max(1.0, deadline - time.monotonic())
        self.poll(
            lambda: self.metric("consent_events_total", outcome="applied") >= 1,
            left,
            "the probe event counted",
        )

    # -- HTTP ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.config.http_port}{path}"

    def http_get(
        self, path: str, timeout_s: float = 5.0, token: Secret | None = TEST_TOKEN
    ) -> tuple[int, bytes]:
        """(status, body) with the tests' bearer token (``token``); 0 when nothing answers."""
        return http_get(self.config.http_port, path, timeout_s, token)

    def http_status(self, path: str) -> int:
        return self.http_get(path)[0]

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = self.http_get(path)
        return status, (json.loads(body) if body else None)

    def seen(self, subject_id: str) -> bool:
        """The consent store holds a state of ``subject_id`` (GET /consent answers "seen")."""
        status, view = self.get_json(f"/consent/{subject_id}")
        return status == 200 and view.get("seen") is True

    def metrics(self) -> Metrics:
        status, body = self.http_get("/metrics")
        if status != 200:
            self.fail(f"GET /metrics answered {status}")
        return Metrics(body.decode())

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().value(name, **labels)

    # -- diagnostics -----------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.config.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- worker log {self.config.log_path} (last {lines} lines) ---\n{tail}"

    def describe(self) -> str:
        state = "running" if self.running else f"exited {self._proc and self._proc.returncode}"
        return f"worker {self.config.namespace} pid {self.pid} ({state})\n{self.log_tail()}"

    def fail(self, message: str) -> NoReturn:
        pytest.fail(f"{message}\n{self.describe()}")

    def poll(
        self, check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
    ) -> T:
        """``poll_until`` that also fails early when the worker process has exited."""

        def alive_check() -> T | None:
            if self._proc is not None and self._proc.poll() is not None:
                self.fail(f"the worker exited ({self._proc.returncode}) while waiting for {what}")
            return check()

        return poll_until(
            alive_check, timeout_s, what, interval_s=interval_s, explain=self.describe
        )


# -- events ------------------------------------------------------------------------------

NOTICE_VERSION = "2023-09-01"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_subject(prefix: str = "buyer") -> str:
    return f"{prefix}-{uuid.uuid4().hex}@example.com"


def event(
    subject_id: str,
    payload: Payload,
    *,
    occurred_at: int | None = None,
    event_id: str | None = None,
    source: str = "tests.integration",
) -> ConsentEvent:
    return ConsentEvent(
        event_id=event_id or str(uuid.uuid4()),
        subject_id=subject_id,
        occurred_at=occurred_at if occurred_at is not None else now_ms(),
        source=source,
        payload=payload,
    )


def consent_changed(subject_id: str, purpose: str, granted: bool, **kw: Any) -> ConsentEvent:
    decision = ConsentDecision.GRANTED if granted else ConsentDecision.WITHDRAWN
    return event(subject_id, ConsentChanged(purpose, decision, NOTICE_VERSION, "settings"), **kw)


def data_shared(
    subject_id: str,
    partner: str,
    categories: tuple[str, ...],
    refs: Mapping[str, str],
    *,
    transaction_completed_at: int | None = None,
    **kw: Any,
) -> ConsentEvent:
    payload = DataShared(
        partner, categories, MappingProxyType(dict(refs)), transaction_completed_at
    )
    return event(subject_id, payload, **kw)


def deletion_requested(
    subject_id: str,
    *,
    request_id: str | None = None,
    categories: tuple[str, ...] = (),
    **kw: Any,
) -> ConsentEvent:
    scope = DeletionScope.CATEGORIES if categories else DeletionScope.ACCOUNT
    payload = DeletionRequested(
        request_id or str(uuid.uuid4()), scope, "user request", tuple(categories)
    )
    return event(subject_id, payload, **kw)


def app_revoked(subject_id: str, app_id: str, **kw: Any) -> ConsentEvent:
    return event(subject_id, PermissionRevoked(app_id=app_id), **kw)


def permission_revoked(subject_id: str, permission: str, device_id: str, **kw: Any) -> ConsentEvent:
    return event(subject_id, PermissionRevoked(permission=permission, device_id=device_id), **kw)


# -- reading topics ---------------------------------------------------------------------


@dataclass(frozen=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int
    obj: Any = None


def _consumer(settings: Settings, topic: str) -> tuple[Consumer, dict[int, int]]:
    """A consumer assigned to every partition of ``topic`` from the beginning, and the
    current high watermarks."""
    consumer = Consumer(
        settings.consumer_config(f"reader-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 50})
    )
    meta = consumer.list_topics(topic, timeout=30)
    partitions = sorted(meta.topics[topic].partitions)
    if not partitions:
        consumer.close()
        raise KafkaException(f"topic {topic} has no partitions")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    highs = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 30)[1] for p in partitions}
    return consumer, highs


def _record(msg: Any, serde: AvroSerde | None) -> TopicRecord:
    value = msg.value()
    obj = serde.decode(value, msg.topic()) if serde is not None and value is not None else None
    return TopicRecord(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=value,
        headers=header_map(cast(Any, msg.headers())),
        timestamp_ms=msg.timestamp()[1],
        obj=obj,
    )


def read_until(
    settings: Settings,
    topic: str,
    done: Callable[[list[TopicRecord]], bool],
    *,
    timeout_s: float = 30.0,
    what: str = "",
    decode: bool = True,
    explain: Callable[[], str] | None = None,
) -> list[TopicRecord]:
    """Every record of ``topic`` from the beginning until ``done(records)`` holds."""
    serde = AvroSerde(settings.schema_registry()) if decode else None
    consumer, _ = _consumer(settings, topic)
    records: list[TopicRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(records):
            if time.monotonic() >= deadline:
                detail = f"\n{explain()}" if explain is not None else ""
                pytest.fail(
                    f"timed out after {timeout_s:.0f} s reading {topic} "
                    f"({len(records)} records) for {what or 'the condition'}{detail}"
                )
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                records.append(_record(msg, serde))
    finally:
        consumer.close()
    return records


def read_all(settings: Settings, topic: str, *, decode: bool = True) -> list[TopicRecord]:
    """Every record of ``topic`` up to its high watermarks at the time of the call."""
    serde = AvroSerde(settings.schema_registry()) if decode else None
    consumer, highs = _consumer(settings, topic)
    positions = dict.fromkeys(highs, 0)
    records: list[TopicRecord] = []
    deadline = time.monotonic() + 60.0
    try:
        while any(positions[p] < highs[p] for p in highs):
            if time.monotonic() >= deadline:
                pytest.fail(f"could not read {topic} up to {highs} (at {positions})")
            for msg in consumer.consume(500, 0.2):
                if msg.error() is not None:
                    raise KafkaException(msg.error())
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                positions[partition] = offset + 1
                records.append(_record(msg, serde))
    finally:
        consumer.close()
    return records


# -- the fixture --------------------------------------------------------------------------


class WorkerFactory(Protocol):
    def __call__(
        self,
        *,
        start: bool = True,
        partitions: int = 3,
        env: Mapping[str, str] | None = None,
        cluster: str | None = None,
        like: WorkerProcess | None = None,
    ) -> WorkerProcess: ...


def _cleanup(config: WorkerConfig) -> list[str]:
    """Delete the namespace's topics (incl. Faust's internal ones) and Redis keys."""
    problems: list[str] = []
    admin = AdminClient(config.settings().admin_config())
    try:
        names = [
            t
            for t in admin.list_topics(timeout=30).topics
            if t.startswith((f"{config.namespace}.", f"{config.app_id}-"))
        ]
        for name, fut in admin.delete_topics(names, operation_timeout=30).items() if names else []:
            try:
                fut.result()
            except KafkaException as exc:
                problems.append(f"delete topic {name}: {exc}")
    except KafkaException as exc:
        problems.append(f"list topics: {exc}")
    try:
        remove_namespace_acls(config.settings(), sorted(load_policy().partners))
    except ConsentStreamError as exc:
        problems.append(f"remove ACLs: {exc}")
    client = redis.Redis.from_url(config.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{config.namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()
    return problems


def _report(request: pytest.FixtureRequest, text: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)
    else:
        sys.stderr.write(text + "\n")


@pytest.fixture(scope="module")
def worker_factory(
    request: pytest.FixtureRequest,
    bootstrap_servers: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerFactory]:
    """Creates isolated workers (started and ready unless ``start=False``); at teardown
    stops every one, removes its topics and keys, and shows the log tails when a test of
    the module failed or a worker had died on its own."""
    workers: list[WorkerProcess] = []
    failed_before = request.session.testsfailed

    def create(
        *,
        start: bool = True,
        partitions: int = 3,
        env: Mapping[str, str] | None = None,
        cluster: str | None = None,
        like: WorkerProcess | None = None,
    ) -> WorkerProcess:
        """``cluster``: the bootstrap servers of other brokers secured as the local stack's
        (``kafka_cluster.KafkaCluster``: the same principals and passwords). ``like``: one more
        worker of that worker's group (its namespace, app id and settings, with ``env``
        over them, its own port and data); started, it is ready once it serves HTTP (its
        share of the partitions comes with the group's rebalance)."""
        namespace = f"t{uuid.uuid4().hex[:8]}" if like is None else like.config.namespace
        base = tmp_path_factory.mktemp(f"worker-{namespace}")
        config = WorkerConfig(
            namespace=namespace,
            http_port=free_port(),
            data_dir=base / "data",
            log_path=base / "worker.log",
            bootstrap_servers=cluster or bootstrap_servers,
            redis_url=redis_url,
            partitions=partitions,
            extra_env=dict(env or {}),
        )
        if like is not None:
            config = replace(
                like.config,
                http_port=config.http_port,
                data_dir=config.data_dir,
                log_path=base / "worker.log",
                extra_env={**like.config.extra_env, **(env or {})},
            )
        worker = WorkerProcess(config)
        workers.append(worker)
        if start:
            worker.start()
            if like is None:
                worker.wait_ready()
            else:
                worker.poll(lambda: worker.http_status("/healthz") == 200, 60.0, "GET /healthz")
        return worker

    yield create

    problems: list[str] = []
    for worker in workers:
        died = worker.pid is not None and not worker.running and not worker.exit_expected
        code = worker.stop()
        if died:
            problems.append(f"the worker died on its own (exit {code})\n{worker.log_tail()}")
        elif request.session.testsfailed > failed_before:
            _report(request, f"\n{worker.describe()}")
        problems += _cleanup(worker.config)
    if problems:
        pytest.fail("\n".join(problems))
