"""The demo's webhook partners: the policy copy, the summary section, the ports."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from schemas.policy import load_policy
from streams.demo.latency import Samples
from streams.demo.processes import _ephemeral_range, free_port
from streams.demo.webhook import policy_text, webhook_lines, webhook_policy

URL = "http://127.0.0.1:20001/consent/hook"


def test_the_policy_copy_delivers_the_partner_by_webhook(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "policy.toml"
    path.write_text(webhook_policy(policy_text(None), {"logistics": URL}), encoding="utf-8")
    policy, default = load_policy(path), load_policy()
    assert policy.partners["logistics"].webhook and policy.partners["logistics"].webhook_url == URL
    assert not any(policy.partners[p].webhook for p in ("ads", "payment", "research"))
    for name, partner in default.partners.items():  # nothing else changed
        assert replace(policy.partners[name], delivery="kafka", webhook_url=None) == partner
    assert set(policy.partners) == set(default.partners)


def test_a_partner_already_on_webhook_gets_the_demo_url_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    once = webhook_policy(policy_text(None), {"logistics": "http://127.0.0.1:1/x"})
    twice = webhook_policy(once, {"logistics": URL})
    assert twice.count("webhook_url") == once.count("webhook_url")
    path = tmp_path / "p.toml"
    path.write_text(twice, encoding="utf-8")
    assert load_policy(path).partners["logistics"].webhook_url == URL


def test_an_unknown_partner_is_refused() -> None:
    with pytest.raises(ValueError, match=r"partners\.carrier"):
        webhook_policy(policy_text(None), {"carrier": URL})


PAGE = """
consent_stream_webhook_deliveries_total{partner="logistics",outcome="acknowledged"} 80
consent_stream_webhook_deliveries_total{partner="logistics",outcome="accepted"} 20
consent_stream_webhook_retries_total{partner="logistics",cause="server_error"} 5
consent_stream_webhook_round_trip_seconds_bucket{partner="logistics",le="0.001"} 0
consent_stream_webhook_round_trip_seconds_bucket{partner="logistics",le="0.01"} 100
consent_stream_webhook_round_trip_seconds_bucket{partner="logistics",le="0.1"} 105
consent_stream_webhook_round_trip_seconds_bucket{partner="logistics",le="+Inf"} 105
consent_stream_webhook_round_trip_seconds_count{partner="logistics"} 105
consent_stream_simulated_webhook_answers_total{partner="logistics",answer="unavailable"} 5
consent_stream_simulated_webhook_callbacks_total{partner="logistics",outcome="acknowledged"} 20
"""


def test_the_summary_section_names_deliveries_retries_and_round_trip() -> None:
    lines = webhook_lines(Samples.from_pages([PAGE]), {"logistics": URL})
    text = "\n".join(lines)
    assert URL in lines[0]
    assert "deliveries    100 (accepted 20, acknowledged 80)" in text
    assert "retries         5 (server_error 5)" in text
    assert "(105 attempts)" in text and "p99 " in text
    assert "callbacks to /v1/acks: acknowledged 20" in text


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    rng = random.Random(7)
    ports = {free_port(rng) for _ in range(50)}
    assert all(not low <= p <= high for p in ports)
    assert all(1024 < p < 65536 for p in ports)


def test_a_port_is_never_handed_out_twice() -> None:
    """The demo draws every child's port before the last child binds its own: a second
    draw of the same port failed a first `make run` (the gateway: EADDRINUSE)."""
    first = free_port(random.Random(11))
    again = free_port(random.Random(11))  # the same draws, in the same order
    assert again != first
