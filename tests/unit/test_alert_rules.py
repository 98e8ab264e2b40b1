"""The alert rules: `promtool check rules` and `promtool test rules` pass, every alert is
tested firing and not firing, uses only documented metrics and has a runbook entry.

promtool comes from Debian's ``prometheus`` package, which ``deploy/local/stack.py install``
(run by ``make stack``) installs: a missing promtool is a failure, not a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.utils import floatToGoString
from sre_contract import REPO_ROOT, allowed_metric_names, promql_metric_names

from streams.metrics import HOP_BUCKETS_SECONDS

RULES = REPO_ROOT / "deploy" / "prometheus" / "rules" / "consent-stream.rules.yml"
RULE_TESTS = sorted((REPO_ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: it comes with Debian's prometheus package, installed by "
            "`python deploy/local/stack.py install` (make stack)"
        )
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_promtool_check_rules_passes() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert f"{len(rules())} rules found" in result.stdout


def test_promtool_test_rules_passes() -> None:
    assert RULE_TESTS, "no promtool test files under deploy/prometheus/tests"
    result = run_promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = load(path)
        assert [(path.parent / f).resolve() for f in spec["rule_files"]] == [RULES]
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown NOT firing"
    assert firing | quiet <= names, "tests of alerts that do not exist"


def test_rules_use_only_documented_metrics() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    allowed = allowed_metric_names(recorded)
    for rule in rules():
        used = promql_metric_names(rule["expr"])
        assert used, rule
        assert used <= allowed, f"{rule.get('alert') or rule.get('record')}: {used - allowed}"


def test_alerts_have_severity_summary_and_a_runbook_entry() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert alert["labels"]["service"] == "consent-stream", name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
        runbook = alert["annotations"]["runbook_url"]
        assert runbook == f"docs/operations.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no section for {name}"


def test_histogram_thresholds_are_real_buckets_as_exposed() -> None:
    exposed = {floatToGoString(b) for b in HOP_BUCKETS_SECONDS}  # type: ignore[no-untyped-call]
    text = RULES.read_text(encoding="utf-8")
    thresholds = set(re.findall(r'le="([^"]*)"', text))
    assert thresholds == {"5.0"}
    assert thresholds <= exposed


def test_jobs_in_rules_are_scraped_by_the_compose_prometheus() -> None:
    jobs = {c["job_name"] for c in load(PROMETHEUS_CONFIG)["scrape_configs"]}
    used = set(re.findall(r'job="([^"]+)"', RULES.read_text(encoding="utf-8")))
    assert used, "the rules check the workers' up series"
    assert used <= jobs
