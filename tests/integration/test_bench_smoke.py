"""Smoke test of the benchmark harness: ``bench/run.py --quick`` against the real stack.

Benchmarks are not run as tests; this only keeps the harness working: tiny sizes, a tmp
output directory, every section present and measured, the plot written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MEASURED = (
    "raw_kafka",
    "faust_noop",
    "faust_noop_aiokafka",
    "faust_noop_direct",
    "pipeline",
    "redis_memory",
    "worker_rss",
    "rebuild",
    "sweep",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_quick_bench_writes_every_section(
    bootstrap_servers: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "CONSENT_STREAM_BOOTSTRAP_SERVERS": bootstrap_servers,
        "CONSENT_STREAM_REDIS_URL": redis_url,
    }
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out", str(tmp_path), "--budget-s", "240"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert {"machine", "sizes", "latency", "ratios", *MEASURED} <= results.keys()
    for section in MEASURED:
        body = results[section]
        assert "error" not in body and "skipped" not in body, (section, body)
        assert body["complete"] is True, (section, body)
    assert results["machine"]["cores"] >= 1
    assert results["pipeline"]["rate_events_per_s"] > 0
    assert results["redis_memory"]["bytes_per_subject"] > 0
    assert results["rebuild"]["applied"] == results["sizes"]["rebuild_subjects"]
    sweep = results["sweep"]
    assert sweep["tickets_indexed"] == sweep["tickets"] == results["sizes"]["sweep_tickets"]
    rates = results["sizes"]["sweep_rates"]  # the first again, first, just after the start
    assert [s["offered_events_per_s"] for s in sweep["latency"]] == [rates[0], *rates]
    assert sweep["latency"][0]["label"].endswith("just after start")

    steps = results["latency"]
    assert isinstance(steps, list), steps
    assert len(steps) >= len(results["sizes"]["latency_rates"])
    for s in steps:
        assert s["complete"] is True, s
        assert s["observed_ms"]["store"]["count"] > 0, s
        assert s["histogram_ms"]["store"]["count"] == s["observed_ms"]["store"]["count"], s
        # every event published is taken by the events agent (a redelivery counts again)
        assert s["histogram_ms"]["worker"]["count"] >= s["events"], s
        assert s["worker_cpu_ms_per_event"] > 0, s
    noop_rates = results["sizes"]["noop_latency_rates"]
    noop_steps = [s for s in steps if "noop" in s]
    assert [s["offered_events_per_s"] for s in noop_steps] == noop_rates
    for s in noop_steps:
        noop = s["noop"]
        assert noop["complete"] is True and noop["seen"] == noop["events"] == s["events"], noop
        assert noop["latency_ms"]["count"] == noop["events"], noop
        assert noop["latency_ms"]["p50"] <= noop["latency_ms"]["p99"], noop
        assert noop["worker_cpu_ms_per_event"] > 0, noop

    ratios = results["ratios"]
    assert 0 < ratios["pipeline_to_raw_kafka"] < 1
    assert ratios["pipeline_to_faust_noop"] > 0
    noops = ("faust_noop", "faust_noop_aiokafka")  # (b); the direct path is shown beside it
    ceiling = max(results[name]["records_per_s"] for name in noops)
    assert ratios["pipeline_to_faust_noop"] == pytest.approx(
        results["pipeline"]["rate_events_per_s"] / ceiling, rel=1e-3
    )
    assert results["faust_noop_aiokafka"]["fetch_client"] == "aiokafka"
    assert results["faust_noop_direct"]["path"] == "direct"

    assert (tmp_path / "latency-vs-throughput.png").read_bytes()[:8] == PNG_MAGIC
    table = (tmp_path / "latest.md").read_text()
    assert "## Throughput" in table and "## Latency per hop (ms)" in table
    assert "no-op p50 / p99" in table and "worker CPU µs/event" in table
