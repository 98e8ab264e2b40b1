"""Shared by the SRE tests: the metrics the factories register, the metrics docs/metrics.md
documents, and the metric names a PromQL expression uses.

Imported by test_metrics_doc.py, test_alert_rules.py, test_dashboard.py (pytest puts this
directory on ``sys.path``; tests/unit is not a package).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from consumers.partner_metrics import partner_metrics
from consumers.webhook.metrics import webhook_metrics
from streams.gateway.metrics import gateway_metrics
from streams.metrics import stream_metrics

__all__ = [
    "HISTOGRAM_SUFFIXES",
    "METRICS_DOC",
    "REPO_ROOT",
    "DocumentedMetric",
    "allowed_metric_names",
    "documented_metrics",
    "promql_metric_names",
    "registered_metrics",
    "registry_with_every_series",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
EXTERNAL_SECTION = "From other exporters"

_ROW = re.compile(r"^\|\s*`(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|(?P<rest>.*)\|\s*$")
_LABEL = re.compile(r"`([a-zA-Z_][a-zA-Z0-9_]*)`")


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    type: str
    labels: tuple[str, ...]
    unit: str
    meaning: str
    section: str


def documented_metrics(path: Path = METRICS_DOC) -> dict[str, DocumentedMetric]:
    """Every table row of docs/metrics.md whose first cell is a backticked metric name."""
    rows: dict[str, DocumentedMetric] = {}
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        match = _ROW.match(line)
        if match is None:
            continue
        cells = [c.strip() for c in match["rest"].split("|")]
        if len(cells) != 4:
            raise AssertionError(f"docs/metrics.md: row needs 5 cells: {line}")
        kind, labels, unit, meaning = cells
        name = match["name"]
        if name in rows:
            raise AssertionError(f"docs/metrics.md documents {name} twice")
        rows[name] = DocumentedMetric(
            name, kind, tuple(sorted(_LABEL.findall(labels))), unit, meaning, section
        )
    return rows


def _factory_metrics() -> list[Any]:
    registry = CollectorRegistry()
    groups = (
        stream_metrics(registry),
        partner_metrics(registry),
        gateway_metrics(registry),
        webhook_metrics(registry),
    )
    return [getattr(group, f.name) for group in groups for f in fields(group)]


def registry_with_every_series() -> CollectorRegistry:
    """A registry where each factory metric has one labelled child (so samples exist)."""
    registry = CollectorRegistry()
    groups = (
        stream_metrics(registry),
        partner_metrics(registry),
        gateway_metrics(registry),
        webhook_metrics(registry),
    )
    for group in groups:
        for f in fields(group):
            metric = getattr(group, f.name)
            names = metric._labelnames
            child = metric.labels(*["x"] * len(names)) if names else metric
            if hasattr(child, "observe"):
                child.observe(0.3)
            else:
                child.inc()
    return registry


def registered_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Exposed name -> (type, sorted label names) of every metric the factories register."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for metric in _factory_metrics():
        (family,) = metric.describe()
        name = f"{family.name}_total" if family.type == "counter" else family.name
        found[name] = (family.type, tuple(sorted(metric._labelnames)))
    return found


def allowed_metric_names(extra: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Names a rule or panel may use: the factories' (with histogram series suffixes),
    the documented external ones (``up``, kafka-exporter), and ``extra``."""
    allowed = set(extra)
    for name, (kind, _) in registered_metrics().items():
        allowed.add(name)
        if kind == "histogram":
            allowed.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    allowed.update(
        m.name for m in documented_metrics().values() if m.section.startswith(EXTERNAL_SECTION)
    )
    return allowed


# -- PromQL -----------------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels removed)."""
    text = _STRINGS.sub('""', expr)
    text = _VARIABLES.sub("1m", text)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call is None and word.lower() not in _KEYWORDS:
            names.add(word)
    return names
