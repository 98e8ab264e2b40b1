"""``consent-stream gateway`` against the real secured broker, as a caller meets it: a real
gateway process (logged in as ``gateway`` from a credentials file, under a uuid
namespace whose ACLs are synced) on a loopback port, real HTTP requests, and the records
read back from the namespace's consent.events.v1 as ``admin``. Its policy is the packaged
one with ``logistics`` delivered by webhook: ``POST /v1/acks`` callbacks of logistics end
on its acks topic (the ``gateway`` principal may write it), those of ``payment`` (kafka
delivery, though it has a secret) and of unknown partners are refused.

Broker "down" is a loopback port nothing listens on (the shared stack keeps running): at
start the gateway exits 5 with one line; during a POST (an in-process gateway with a real
Kafka client aimed at that port) the answer is 503 with Retry-After, never a success.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from consumers.webhook.delivery import ack_ce_id
from schemas.events import ConsentEvent
from schemas.kafka_security import security_env
from schemas.partner import AcknowledgementStatus, PartnerAcknowledgement
from schemas.policy import load_policy
from schemas.settings import ENV_PREFIX, Settings
from schemas.webhook_signing import signature_header
from streams.namespace import remove_namespace
from streams.topics import wait_for_leaders

from .kafka_auth import admin_settings, principal_credentials, sync_acls, webhook_policy
from .processes import Metrics, TopicRecord, free_port, poll_until, read_all

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOKEN = f"orders-{uuid.uuid4().hex}"
APP_TOKEN = f"app-{uuid.uuid4().hex}"
TOKENS = f"orders={TOKEN}:order-service|checkout,app={APP_TOKEN}:app-settings"
METRICS_TOKEN = f"metrics-{uuid.uuid4().hex}"
START_TIMEOUT_S = 60.0
WEBHOOK = "logistics"  # delivery = "webhook" in the gateway's policy
KAFKA = "payment"  # kafka delivery: may not call back, even with a secret
SECRETS = {WEBHOOK: f"whsec-{uuid.uuid4().hex}", KAFKA: f"whsec-{uuid.uuid4().hex}"}


def gateway_command() -> list[str]:
    """This checkout's ``consent-stream gateway`` (the venv's script may be another's)."""
    return [sys.executable, "-m", "streams", "--log-level", "INFO", "gateway"]


def event(subject: str, source: str = "order-service", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "consent.changed",
        "subject_id": subject,
        "occurred_at": int(time.time() * 1000) - 60_000,
        "source": source,
        "payload": {
            "purpose": "marketing_sms",
            "decision": "WITHDRAWN",
            "notice_version": "2023-09-01",
            "method": "sms_unsubscribe",
        },
        **extra,
    }


def post(
    port: int,
    body: Any,
    token: str | None = TOKEN,
    content_type: str = "application/json",
    path: str = "/v1/events",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST")
    request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def gateway_env(
    settings: Settings, port: int, credentials: Path | None = None, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(security_env(os.environ))  # the credentials file: it logs in as `gateway`
    if credentials is not None:
        env[ENV_PREFIX + "CREDENTIALS_FILE"] = str(credentials)
    env.update(
        {
            ENV_PREFIX + "BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            ENV_PREFIX + "TOPIC_NAMESPACE": settings.topic_namespace,
            ENV_PREFIX + "DEV_MODE": "1",
            ENV_PREFIX + "GATEWAY_PORT": str(port),
            ENV_PREFIX + "GATEWAY_TOKENS": TOKENS,
            ENV_PREFIX + "GATEWAY_MAX_BODY_BYTES": "100000",
            ENV_PREFIX + "METRICS_TOKEN": METRICS_TOKEN,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            **{ENV_PREFIX + k: v for k, v in extra.items()},
        }
    )
    return env


@dataclass
class Gateway:
    port: int
    settings: Settings
    proc: subprocess.Popen[bytes]
    log_path: Path

    def events(self) -> list[ConsentEvent]:
        return [r.obj for r in read_all(self.settings, self.settings.topics.events)]

    def acks(self, partner: str = WEBHOOK) -> list[TopicRecord]:
        return read_all(self.settings, self.settings.topics.acks(partner))

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def credentials(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A credentials file with the ``gateway`` principal, which the broker knows (a stack
    started before the principal existed gets it upserted here, kafka_auth)."""
    return principal_credentials("gateway", tmp_path_factory.mktemp("credentials"))


@pytest.fixture(scope="module")
def gateway(credentials: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    policy_file = webhook_policy(tmp / "policy.toml", [WEBHOOK], "https://carrier.example/hook")
    policy = load_policy(policy_file)
    ns = f"gw{uuid.uuid4().hex[:12]}"
    settings = admin_settings(
        topic_namespace=ns,
        app_id=f"consent-stream-{ns}",
        redis_prefix=ns,
        policy_path=str(policy_file),
    )
    admin = AdminClient(settings.admin_config())
    topics = {settings.topics.events: 3, settings.topics.acks(WEBHOOK): 3}
    topics[settings.topics.acks(KAFKA)] = 3
    for future in admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()]).values():
        future.result()
    wait_for_leaders(admin, topics, 30.0)
    sync_acls(settings, policy.partners)  # the gateway may write the acks of logistics
    port = free_port()
    log_path = tmp / "gateway.log"
    secrets = ",".join(f"{p}={s}" for p, s in SECRETS.items())
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            gateway_command(),
            cwd=REPO,
            env=gateway_env(
                settings, port, credentials, POLICY=str(policy_file), WEBHOOK_SECRETS=secrets
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    gw = Gateway(port, settings, proc, log_path)
    try:
        poll_until(
            lambda: proc.poll() is not None or get(port, "/healthz")[0] == 200,
            START_TIMEOUT_S,
            "the gateway to answer /healthz",
            interval_s=0.2,
            explain=gw.log,
        )
        assert proc.poll() is None, gw.log()
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        remove_namespace(settings, policy.partners)


def test_the_gateway_logs_in_as_gateway(gateway: Gateway) -> None:
    assert f"publishing to {gateway.settings.topics.events} as gateway" in gateway.log()
    assert f"callbacks (POST /v1/acks) from: {WEBHOOK}\n" in gateway.log()  # not payment
    assert TOKEN not in gateway.log() and APP_TOKEN not in gateway.log()
    assert not any(secret in gateway.log() for secret in SECRETS.values())


def test_a_batch_with_good_and_bad_items(gateway: Gateway) -> None:
    tag = uuid.uuid4().hex[:8]
    bad = event(f"batch-{tag}-bad")
    bad["payload"]["purpose"] = "telepathy"
    batch = [
        event(f"batch-{tag}-1"),
        bad,
        event(f"batch-{tag}-2", source="ads"),
        event(f"batch-{tag}-3"),
    ]
    status, body, _ = post(gateway.port, batch)

    assert status == 400, body
    assert [i["status"] for i in body["items"]] == ["accepted", "rejected", "rejected", "accepted"]
    assert [i.get("reason") for i in body["items"]] == [
        None,
        "unknown_purpose",
        "source_not_allowed",
        None,
    ]
    on_topic = {e.event_id for e in gateway.events() if e.subject_id.startswith(f"batch-{tag}")}
    assert on_topic == {batch[0]["event_id"], batch[3]["event_id"]}


def test_a_single_event_and_json_lines(gateway: Gateway) -> None:
    one = event(f"single-{uuid.uuid4().hex[:8]}", source="checkout")
    status, body, _ = post(gateway.port, one)
    assert status == 202, body
    assert body["items"] == [{"index": 0, "event_id": one["event_id"], "status": "accepted"}]

    lines = [event(f"lines-{n}-{uuid.uuid4().hex[:6]}") for n in range(3)]
    del lines[2]["event_id"]  # derived from the content, and told in the answer
    text = "\n".join(json.dumps(e) for e in lines).encode()
    status, body, _ = post(gateway.port, text, content_type="application/x-ndjson")
    assert status == 202, body
    assert [i["line"] for i in body["items"]] == [1, 2, 3]
    ids = {i["event_id"] for i in body["items"]}
    assert {one["event_id"]} | ids <= {e.event_id for e in gateway.events()}


def test_auth_failures_and_limits_send_nothing(gateway: Gateway) -> None:
    subject = f"refused-{uuid.uuid4().hex[:8]}"
    for token in (None, "not-a-token-of-this-gateway"):
        status, body, headers = post(gateway.port, event(subject), token=token)
        assert status == 401, body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = post(gateway.port, [event(subject)], token=APP_TOKEN)
    assert status == 403 and body["items"][0]["reason"] == "source_not_allowed"
    big = [event(subject) for _ in range(600)]  # about 180,000 bytes > 100,000
    status, body, _ = post(gateway.port, big)
    assert status == 413, body
    status, body, _ = post(gateway.port, b"a,b\n", content_type="text/csv")
    assert status == 415
    assert all(e.subject_id != subject for e in gateway.events())


def test_reposting_the_same_event_id_is_harmless(gateway: Gateway) -> None:
    """The same id is published again; the worker applies an event id once per subject
    (``SubjectState.seen``: outcome ``duplicate``, test_worker_consent)."""
    same = event(f"again-{uuid.uuid4().hex[:8]}")
    assert post(gateway.port, same)[0] == 202
    assert post(gateway.port, same)[0] == 202
    copies = [e for e in gateway.events() if e.event_id == same["event_id"]]
    assert len(copies) == 2 and copies[0] == copies[1]


def test_metrics_per_source_and_outcome(gateway: Gateway) -> None:
    assert get(gateway.port, "/metrics")[0] == 401
    post(gateway.port, [event(f"m-{uuid.uuid4().hex[:8]}", source="checkout")])
    status, page = get(gateway.port, "/metrics", token=METRICS_TOKEN)
    assert status == 200
    metrics = Metrics(page.decode())
    assert metrics.value("consent_gateway_events_total", source="checkout", outcome="accepted") >= 1
    assert metrics.value("consent_gateway_requests_total", code="401") >= 2
    assert metrics.value("consent_gateway_request_duration_seconds_count") >= 3


def test_with_the_broker_unreachable_at_start_the_gateway_exits_5(credentials: Path) -> None:
    settings = admin_settings(topic_namespace=f"gw{uuid.uuid4().hex[:12]}")
    port = free_port()  # bound, then closed: nothing listens on it
    started = time.monotonic()
    result = subprocess.run(
        gateway_command(),
        cwd=REPO,
        env=gateway_env(
            replace(settings, bootstrap_servers=f"127.0.0.1:{port}"), free_port(), credentials
        ),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 5, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("consent-stream:")]
    assert len(lines) == 1 and lines[0].startswith("consent-stream: broker_unavailable: ")
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_with_the_broker_unreachable_during_a_post_the_answer_is_503() -> None:
    """A real Kafka client aimed at a port nothing listens on: the events are accepted,
    never acknowledged, and the answer says so once the delivery timeout has passed."""
    from aiohttp import web

    from producers.publisher import ConsentPublisher, make_producer
    from streams.gateway.app import build_app
    from streams.gateway.bridge import BrokerState, DeliveryBridge
    from streams.gateway.settings import GatewaySettings, parse_gateway_tokens

    async def scenario(port: int) -> tuple[int, Any, dict[str, str], float]:
        config = GatewaySettings(
            callers=parse_gateway_tokens(TOKENS), delivery_timeout_ms=1500, retry_after_s=3
        )
        settings = replace(
            Settings.from_env().as_principal("publisher"),
            bootstrap_servers=f"127.0.0.1:{port}",
        )
        broker = BrokerState()
        producer: Any = make_producer(
            settings, **config.producer_overrides(), error_cb=broker.error_cb, log_level=0
        )
        publisher = ConsentPublisher(settings, load_policy(), producer=producer)
        app = build_app(config, publisher, DeliveryBridge(publisher, producer, broker))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http_port = runner.addresses[0][1]
        try:
            started = time.monotonic()
            answer = await asyncio.to_thread(post, http_port, [event("down-1"), event("down-2")])
            took = time.monotonic() - started
            health = await asyncio.to_thread(get, http_port, "/healthz")
        finally:
            await runner.cleanup()
        status, body, headers = answer
        assert health[0] == 503 and json.loads(health[1])["broker"] == "down"
        return status, body, headers, took

    status, body, headers, took = asyncio.run(scenario(free_port()))  # nothing listens
    assert status == 503, body
    assert headers["Retry-After"] == "3"
    assert [i["status"] for i in body["items"]] == ["not_delivered", "not_delivered"]
    assert body["accepted"] == 0
    assert 1.0 < took < 10.0


# ---- POST /v1/acks: a webhook partner's callback after a 202 ------------------------


def callback(ack_key: str | None = None, **fields: Any) -> tuple[str, bytes]:
    """(instruction id, body) of a callback for a new instruction id."""
    iid = str(uuid.uuid4())
    key = f"key-{iid}" if ack_key is None else ack_key
    obj = {"instruction_id": iid, "ack_key": key, "subject_ref": f"ref-{iid}"}
    return iid, json.dumps({**obj, "status": "DONE", **fields}).encode()


def post_ack(
    gateway: Gateway,
    body: bytes,
    partner: str | None = WEBHOOK,
    at_s: float | None = None,
    secret: str | None = None,
    signature: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """POST /v1/acks as ``partner``, signed with its secret (or ``secret``) at ``at_s``."""
    key = (secret or SECRETS.get(partner or "", "unknown-partner-secret")).encode()
    signature = signature or signature_header(key, int(at_s or time.time()), body)
    headers = {"Consent-Stream-Signature": signature}
    if partner is not None:
        headers["Consent-Stream-Partner"] = partner
    return post(gateway.port, body, token=None, path="/v1/acks", headers=headers)


def test_a_signed_callback_is_202_with_exactly_its_ack_on_the_acks_topic(gateway: Gateway) -> None:
    iid, body = callback(completed_at=int(time.time() * 1000) - 1000)
    first = post_ack(gateway, body)
    status, answer, _ = first
    assert status == 202, answer
    assert answer == {"status": 202, "instruction_id": iid}
    (record,) = [r for r in gateway.acks() if r.key == f"key-{iid}".encode()]
    ack = record.obj
    assert isinstance(ack, PartnerAcknowledgement)
    assert (ack.instruction_id, ack.partner, ack.status) == (
        iid,
        WEBHOOK,
        AcknowledgementStatus.DONE,
    )
    # the CloudEvents headers of the bridge's acks: ce_id derived from the instruction id
    assert record.headers["ce_id"] == ack_ce_id(iid).encode()
    assert record.headers["ce_type"] == b"partner.acknowledgement"
    assert record.headers["ce_source"] == f"partner/{WEBHOOK}".encode()
    assert record.headers["ce_subject"] == f"ref-{iid}".encode()


def test_replayed_forged_and_stale_callbacks_are_401_and_produce_nothing(
    gateway: Gateway,
) -> None:
    ack_key = f"replay-{uuid.uuid4().hex}"
    iid, body = callback(ack_key)
    signature = signature_header(SECRETS[WEBHOOK].encode(), int(time.time()), body)
    assert post_ack(gateway, body, signature=signature)[0] == 202
    refusals = [
        post_ack(gateway, body, signature=signature),  # the same request again: a replay
        post_ack(gateway, body, secret=f"whsec-{uuid.uuid4().hex}"),  # forged
        post_ack(gateway, body, at_s=time.time() - 600),  # stale
        post_ack(gateway, body, partner=KAFKA),  # payment, signed with its own secret
        post_ack(gateway, body, partner="nobody"),  # unknown
        post_ack(gateway, body, partner=None),  # no partner named
    ]
    for status, answer, headers in refusals:
        assert status == 401, answer
        assert answer == refusals[0][1]  # one answer: it tells nothing about partners
        assert headers["WWW-Authenticate"].startswith("Consent-Stream-Signature")
    # a later callback with the same key: the same partition, after anything produced
    # before it; so once it is there, a second record of the first would be too
    marker, marker_body = callback(ack_key)
    assert post_ack(gateway, marker_body)[0] == 202
    same_key = [r.obj.instruction_id for r in gateway.acks() if r.key == ack_key.encode()]
    assert same_key == [iid, marker]
    assert [r for r in gateway.acks(KAFKA)] == []  # the kafka partner's acks: untouched


def test_a_malformed_callback_is_400_and_an_oversized_one_413(gateway: Gateway) -> None:
    for body, reason, field in [
        (b"{not json", "not_json", None),
        (callback(ack_key="")[1], "invalid_field", "ack_key"),
        (callback(status="SOMETIME")[1], "invalid_field", "status"),
    ]:
        status, answer, _ = post_ack(gateway, body)
        assert status == 400, answer
        assert (answer["reason"], answer.get("field")) == (reason, field), answer
    iid, big = callback(status="FAILED", reason="x" * 70_000)
    for partner in (WEBHOOK, "nobody"):  # the same answer for anyone
        status, answer, _ = post_ack(gateway, big, partner=partner)
        assert status == 413 and "65,536" in answer["error"], answer
    assert all(r.obj.instruction_id != iid for r in gateway.acks())


def test_callbacks_are_counted_by_partner_and_outcome(gateway: Gateway) -> None:
    _, body = callback()
    assert post_ack(gateway, body)[0] == 202
    assert post_ack(gateway, body, partner="nobody")[0] == 401
    status, page = get(gateway.port, "/metrics", token=METRICS_TOKEN)
    assert status == 200
    metrics = Metrics(page.decode())
    acks = "consent_gateway_acks_total"
    assert metrics.value(acks, partner=WEBHOOK, outcome="accepted") >= 1
    assert metrics.value(acks, partner="unknown", outcome="unauthorized") >= 1
    assert "nobody" not in page.decode() and KAFKA not in page.decode()
