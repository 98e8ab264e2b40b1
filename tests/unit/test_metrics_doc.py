"""docs/metrics.md documents exactly the metrics the factories register (it cannot drift),
and the names follow the Prometheus conventions."""

from __future__ import annotations

import re

from prometheus_client import generate_latest
from sre_contract import (
    EXTERNAL_SECTION,
    documented_metrics,
    registered_metrics,
    registry_with_every_series,
)

from streams.metrics import HOP_BUCKETS_SECONDS

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_records")  # records: a count of them


def owned_documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        m.name: (m.type, m.labels)
        for m in documented_metrics().values()
        if not m.section.startswith(EXTERNAL_SECTION)
    }


def test_the_doc_lists_every_registered_metric_with_its_type_and_labels() -> None:
    registered = registered_metrics()
    documented = owned_documented()

    assert (
        len(registered) == 41
    )  # 25 worker + 6 partner + 5 gateway + 5 webhook: a new one needs a doc row
    missing = sorted(set(registered) - set(documented))
    stale = sorted(set(documented) - set(registered))
    assert missing == [], f"registered but not in docs/metrics.md: {missing}"
    assert stale == [], f"in docs/metrics.md but not registered: {stale}"
    for name, (kind, labels) in registered.items():
        assert documented[name] == (kind, labels), name


def test_every_documented_row_says_what_it_means_and_its_unit() -> None:
    for metric in documented_metrics().values():
        assert metric.unit, metric.name
        assert len(metric.meaning) >= 20, metric.name
        assert metric.type in {"counter", "gauge", "histogram"}, metric.name


def test_names_follow_the_prometheus_conventions() -> None:
    for name, (kind, _labels) in registered_metrics().items():
        assert NAME.match(name), name
        assert name.startswith("consent_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith(UNIT_SUFFIXES), f"{name}: a histogram names its base unit"
    for metric in documented_metrics().values():
        if metric.unit == "seconds":
            assert "_seconds" in metric.name, metric.name


def test_the_exposition_has_a_documented_family_for_every_sample() -> None:
    documented = set(documented_metrics())
    text = generate_latest(registry_with_every_series()).decode()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    # prometheus-client writes the creation time of counters and histograms as a separate
    # "<name>_created" gauge family in the text format (documented in docs/metrics.md)
    created = {f for f in families if f.endswith("_created")}
    exposed = {f"{f}_total" if f"{f}_total" in documented else f for f in families - created}

    assert exposed <= documented
    assert len(exposed) == 41
    for family in created:
        base = family.removesuffix("_created")
        assert f"{base}_total" in documented or base in documented, family


def test_the_slo_threshold_is_a_bucket_and_is_written_as_the_rules_expect() -> None:
    assert 5.0 in HOP_BUCKETS_SECONDS
    text = generate_latest(registry_with_every_series()).decode()
    assert 'consent_publish_to_store_seconds_bucket{le="5.0"}' in text
    assert 'le="5.0"' in text.split("consent_publish_to_partner_topic_seconds_bucket", 1)[1]
