"""A short ``make run``: ``consent-stream demo`` end to end on the real Kafka and Redis.

The demo runs as a subprocess under a uuid namespace with its working directory in a
temporary directory (its logs land there); its topics and Redis keys are removed after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from schemas.policy import load_policy
from schemas.views import FINAL_REQUEST_STATES
from streams.acl.sync import remove_namespace_acls
from streams.demo.command import demo_settings
from streams.request_views import status_from_json

from .kafka_auth import admin_config, admin_settings

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 240.0
SECTIONS = (
    "=== consent-stream demo: summary ===",
    "events by type and outcome",
    "partner instructions (by action) and acknowledgements (by status)",
    "deletion requests",
    "latency per hop",
    "logs: ",
)


def demo_command() -> list[str]:
    beside = Path(sys.executable).parent / "consent-stream"
    script = beside if beside.exists() else REPO_ROOT / ".venv" / "bin" / "consent-stream"
    return [str(script), "demo"]


@pytest.fixture
def namespace(bootstrap_servers: str, redis_url: str) -> Iterator[str]:
    name = f"tdemo{uuid.uuid4().hex[:10]}"
    yield name
    admin = AdminClient(admin_config(bootstrap_servers))
    prefixes = (f"{name}.", f"consent-stream-{name}-")
    topics = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefixes)]
    for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else []:
        future.result()
    scoped = demo_settings(admin_settings(bootstrap_servers=bootstrap_servers), name)
    remove_namespace_acls(scoped, sorted(load_policy().partners))
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def run_demo(
    bootstrap_servers: str,
    redis_url: str,
    namespace: str | None,
    cwd: Path,
    *args: str,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CONSENT_STREAM_BOOTSTRAP_SERVERS": bootstrap_servers,
        "CONSENT_STREAM_REDIS_URL": redis_url,
        **(extra_env or {}),
    }
    try:
        return subprocess.run(
            [*demo_command(), *(("--namespace", namespace) if namespace else ()), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the demo did not finish within {RUN_TIMEOUT_S:.0f} s:\n{exc.stdout!r}")


def explain(result: subprocess.CompletedProcess[str], cwd: Path, namespace: str) -> str:
    logs = sorted((cwd / ".stack" / "demo" / namespace).glob("*.log"))
    tails = "\n".join(
        f"--- {p.name} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
        for p in logs
    )
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}\n{tails}"


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return match.group(1)


def child_pids(stdout: str) -> list[int]:
    line = next(x for x in stdout.splitlines() if x.startswith("started (pids): "))
    return [int(pid) for pid in re.findall(r" (\d+)(?:,|;)", line)]


def assert_stopped(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_short_run_settles_every_request(
    bootstrap_servers: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    result = run_demo(
        bootstrap_servers,
        redis_url,
        namespace,
        tmp_path,
        *("--subjects", "150", "--rate", "0", "--timeout-s", "120"),
        *("--webhook-failure-rate", "0.3"),
    )
    detail = explain(result, tmp_path, namespace)
    assert result.returncode == 0, detail
    out = result.stdout
    for section in SECTIONS:
        assert section in out, detail
    assert out.rstrip().endswith("result: OK - every deletion request reached a final status")
    requests = int(found(r"  (\d+) requests \(ACCOUNT \d+", out))
    statuses = found(r"by status: (.*)", out)
    counted = {s: int(n) for s, n in re.findall(r"([A-Z_]+) (\d+)", statuses)}
    assert set(counted) <= {s.value for s in FINAL_REQUEST_STATES}, statuses
    assert sum(counted.values()) == requests > 0
    for partner in ("payment", "logistics", "ads", "research"):
        assert re.search(rf"  {partner}\s+instructions\s+[1-9]", out), detail
    assert_webhook_partner(out, detail)

    client = redis.Redis.from_url(redis_url)  # what the workers wrote, read independently
    try:
        keys = list(client.scan_iter(match=f"{namespace}:r:*", count=1000))
        views = [status_from_json(raw) for raw in client.mget(keys) if raw is not None]
    finally:
        client.close()
    probes = int(found(r"warm-up: .*, (\d+) probe subjects \(", out))  # one closure each
    assert len(views) == requests + probes
    assert all(v.status in FINAL_REQUEST_STATES for v in views)
    assert (tmp_path / ".stack" / "demo" / namespace / "worker-1.log").exists()
    assert_stopped(child_pids(out))


def assert_webhook_partner(out: str, detail: str) -> None:
    """logistics is reached over the webhook: every instruction of it delivered, retries."""
    assert "webhook delivery (" in out, detail
    found(r"  logistics\s+(http://127\.0\.0\.1:\d+/consent/hook)", out)
    instructions = int(found(r"  logistics\s+instructions\s+(\d+)", out))
    assert int(found(r"deliveries\s+(\d+) \(", out)) == instructions, detail
    assert int(found(r"retries\s+(\d+) \(", out)) > 0, detail
    assert "p99 -" not in found(r"(round trip p50 .*)", out), detail
    accepted = int(found(r"deliveries\s+\d+ \(accepted (\d+)", out))  # 202, then a callback
    callbacks = found(r"callbacks to /v1/acks: (.*)", out)
    assert accepted > 0 and callbacks == f"acknowledged {accepted}", detail
    assert "webhook-bridge-logistics" in found(r"(started \(pids\): .*)", out)


def test_requests_not_settled_in_time_fail_the_run(
    bootstrap_servers: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    result = run_demo(
        bootstrap_servers,
        redis_url,
        namespace,
        tmp_path,
        *("--subjects", "40", "--rate", "0", "--timeout-s", "0"),
    )
    detail = explain(result, tmp_path, namespace)
    assert result.returncode == 1, detail
    last = result.stdout.rstrip().splitlines()[-1]
    assert re.fullmatch(r"result: FAILED - \d+ of \d+ deletion requests not final after 0 s", last)
    assert_stopped(child_pids(result.stdout))


def test_a_run_in_its_own_fresh_namespace_removes_it_afterwards(
    bootstrap_servers: str, redis_url: str, tmp_path: Path
) -> None:
    """Also with a metrics token: the demo reads its children's /metrics pages with it
    (the gateway's answers 401 without it)."""
    result = run_demo(
        bootstrap_servers,
        redis_url,
        None,
        tmp_path,
        *("--subjects", "20", "--rate", "0", "--timeout-s", "120"),
        extra_env={"CONSENT_STREAM_METRICS_TOKEN": "demo-metrics-token-" + uuid.uuid4().hex},
    )
    namespace = found(r"consent-stream demo: namespace (\S+)", result.stdout)
    assert result.returncode == 0, explain(result, tmp_path, namespace)
    removed = found(rf"removed namespace {re.escape(namespace)}: (\d+) topics", result.stdout)
    assert int(removed) >= 13  # the service's topics, partners' and Faust's own

    admin = AdminClient(admin_config(bootstrap_servers))
    left = [t for t in admin.list_topics(timeout=30).topics if namespace in t]
    assert left == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{namespace}:*", count=1000)) == []
    finally:
        client.close()
    assert (tmp_path / ".stack" / "demo" / namespace / "worker-1.log").exists()  # logs stay
