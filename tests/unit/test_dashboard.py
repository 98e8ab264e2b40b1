"""The provisioned Grafana dashboard: valid JSON, every query uses only metrics that exist,
the panels the SRE view needs are there, and it points at the provisioned datasource."""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

import yaml
from sre_contract import REPO_ROOT, allowed_metric_names, promql_metric_names

GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "consent-stream.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "consent-stream.yml"
HOPS = (
    "consent_publish_to_store_seconds",
    "consent_publish_to_partner_topic_seconds",
    "consent_instruction_to_ack_seconds",
)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_the_dashboard_is_identified_and_has_panels() -> None:
    data = dashboard()
    assert data["uid"] == "consent-stream"
    assert data["title"] == "Consent Stream"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    assert len(panels()) >= 15


def test_every_query_uses_only_metrics_that_exist() -> None:
    allowed = allowed_metric_names()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = promql_metric_names(target["expr"])
            assert used, (panel["title"], target["expr"])
            assert used <= allowed, (panel["title"], used - allowed)


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_the_provider_loads_the_directory_compose_mounts() -> None:
    (provider,) = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_latency_per_hop_has_p50_and_p99() -> None:
    queries = exprs()
    for hop in HOPS:
        for quantile in ("0.5", "0.99"):
            assert any(
                q.startswith(f"histogram_quantile({quantile},") and f"{hop}_bucket" in q
                for q in queries
            ), (hop, quantile)


def test_the_sre_view_is_complete() -> None:
    queries = exprs()

    def uses(fragment: str) -> bool:
        return any(fragment in q for q in queries)

    assert uses("sum by (type) (rate(consent_events_total")  # throughput by event type
    assert uses("sum by (partner) (consent_instructions_pending)")
    assert uses("sum by (partner) (consent_instructions_overdue)")
    assert uses("sum(consent_requests_open)")
    assert uses("sum(consent_requests_overdue)")
    assert uses("sum by (reason) (increase(consent_deadletters_total")
    assert uses("kafka_consumergroup_lag")


def test_panels_do_not_overlap() -> None:
    def box(p: dict[str, Any]) -> tuple[int, int, int, int]:
        g = p["gridPos"]
        return g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]

    for a, b in combinations(dashboard()["panels"], 2):
        ax0, ay0, ax1, ay1 = box(a)
        bx0, by0, bx1, by1 = box(b)
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a["title"], b["title"])
        assert ax1 <= 24 and bx1 <= 24
