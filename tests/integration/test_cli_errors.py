"""The command line against services that are down or missing, as a user meets them: one
line on stderr naming the problem, the documented exit code, no traceback; and an
oversized line is rejected by its number while the rest are published.

Broker and Redis "down" are loopback ports nothing listens on (the stack keeps running)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from schemas.policy import load_policy
from schemas.settings import ENV_PREFIX
from streams.acl.sync import remove_namespace_acls

from .kafka_auth import admin_settings, sync_acls

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "consent-stream"
GOOD = {
    "type": "consent.changed",
    "occurred_at": "2024-11-05T10:00:00+08:00",
    "source": "app-settings",
    "payload": {
        "purpose": "marketing_sms",
        "decision": "WITHDRAWN",
        "notice_version": "2023-09-01",
        "method": "sms_unsubscribe",
    },
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("CONSENT_STREAM_POLICY",)}
    full.update({ENV_PREFIX + k: v for k, v in env.items()})
    return subprocess.run(
        [str(CLI), "--log-level", "ERROR", *args],
        env=full,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], reason: str) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("consent-stream:")]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"consent-stream: {reason}: "), result.stderr
    return lines[0]


def line(subject: str, **extra: object) -> str:
    return json.dumps({**GOOD, "event_id": str(uuid.uuid4()), "subject_id": subject, **extra})


def test_publish_with_the_broker_down(tmp_path: Path) -> None:
    started = time.monotonic()
    result = cli(
        "publish", "-", stdin=line("buyer-1") + "\n", BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port()}"
    )
    assert result.returncode == 5
    one_line(result, "broker_unavailable")
    assert time.monotonic() - started < 60


def test_publish_to_a_topic_that_does_not_exist(bootstrap_servers: str) -> None:
    namespace = f"missing{uuid.uuid4().hex[:8]}"
    settings = admin_settings(topic_namespace=namespace)
    sync_acls(settings, load_policy().partners)  # no topics
    try:
        result = cli(
            "publish",
            "-",
            stdin=line("buyer-1") + "\n",
            BOOTSTRAP_SERVERS=bootstrap_servers,
            TOPIC_NAMESPACE=namespace,
        )
    finally:
        remove_namespace_acls(settings, sorted(load_policy().partners))
    assert result.returncode == 3
    assert "consent.events.v1 does not exist" in one_line(result, "unknown_topic")


def test_publish_where_no_acl_allows_it_is_access_denied(bootstrap_servers: str) -> None:
    """Without an ACL the broker does not even say whether the topic exists."""
    result = cli(
        "publish",
        "-",
        stdin=line("buyer-1") + "\n",
        BOOTSTRAP_SERVERS=bootstrap_servers,
        TOPIC_NAMESPACE=f"noacl{uuid.uuid4().hex[:8]}",
    )
    assert result.returncode == 4
    assert "Topic authorization failed" in one_line(result, "access_denied")


def test_check_status_and_report_with_redis_down() -> None:
    down = f"redis://127.0.0.1:{closed_port()}/0"
    for args in (
        ("check", "buyer-1", "marketing_sms"),
        ("status", str(uuid.uuid4())),
        ("report", str(uuid.uuid4())),
    ):
        result = cli(*args, REDIS_URL=down)
        assert result.returncode == 6, (args, result.stderr)
        one_line(result, "store_unavailable")


def test_replay_with_the_broker_down() -> None:
    result = cli("replay", "--partner", "ads", BOOTSTRAP_SERVERS=f"127.0.0.1:{closed_port()}")
    assert result.returncode == 5, result.stderr
    one_line(result, "broker_unavailable")


def test_an_oversized_line_is_rejected_by_number_and_the_rest_published(
    bootstrap_servers: str,
) -> None:
    subject = f"cli-oversized-{uuid.uuid4().hex[:8]}"
    refs = {f"ref-{i:05d}": f"ORDER-{i:030d}" for i in range(33_000)}  # about 1.3 MB
    big = line(
        subject,
        type="data.shared",
        payload={
            "partner": "logistics",
            "categories": ["delivery_details"],
            "partner_refs": refs,
        },
    )
    assert len(big) > 1_300_000
    lines = [line(subject), big, line(subject)]
    result = cli("publish", "-", stdin="\n".join(lines) + "\n", BOOTSTRAP_SERVERS=bootstrap_servers)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "line 2: rejected (oversized): record of " in result.stderr
    assert "exceeds the maximum of 1,048,576 bytes" in result.stderr
    assert "published 2 of 3 events (1 rejected, 0 not delivered)" in result.stdout


def test_check_of_a_subject_id_no_event_can_carry() -> None:
    result = cli("check", "x" * 257, "marketing_sms")
    assert result.returncode == 2
    assert "subject_id longer than 256 characters" in one_line(result, "invalid_field")
