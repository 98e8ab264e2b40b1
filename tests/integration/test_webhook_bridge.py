"""The webhook bridge as a process against the real broker and a real HTTP receiver.

``consent-stream webhook-bridge --partner logistics`` runs as a subprocess logged in as
``partner-logistics`` (ACLs of a uuid namespace synced first) and POSTs to an aiohttp
receiver on a loopback port in this process, which verifies each signature the way a
partner would (``schemas.webhook_signing.verify`` with a replay guard). Counts are exact:
every instruction id gets its ack on the acks topic, once (or, after a SIGKILL, again with
the same instruction id and ce_id, never another id).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.cloudevents import header_map
from schemas.contracts import PARTNER_INSTRUCTION
from schemas.partner import (
    AcknowledgementStatus,
    InstructionAction,
    PartnerAcknowledgement,
    PartnerInstruction,
)
from schemas.policy import load_policy
from schemas.records import from_record
from schemas.serde import AvroSerde
from schemas.settings import Settings
from schemas.webhook_signing import SIGNATURE_HEADER, ReplayGuard, SignatureError, verify
from streams.acl.sync import remove_namespace_acls
from streams.namespace import remove_namespace
from streams.topics import ensure_topics

from .kafka_auth import admin_settings, sync_acls

pytestmark = pytest.mark.integration

PARTNER = "logistics"
SECRET = "whsec-it-" + uuid.uuid4().hex
REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60.0
DAY_MS = 86_400_000

Behaviour = Callable[[PartnerInstruction, int], Awaitable[web.StreamResponse]]


# ---- the partner's receiver (real HTTP on loopback) -----------------------------------


@dataclass
class Receiver:
    """A partner endpoint in a thread of its own: verifies, counts, answers."""

    behaviour: Behaviour
    calls: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            verify(
                SECRET.encode(),
                request.headers.get(SIGNATURE_HEADER),
                body,
                now_s=time.time(),
                guard=self.guard,
            )
        except SignatureError as exc:
            self.refused[exc.reason] += 1
            return web.Response(status=401)
        ins = from_record(PARTNER_INSTRUCTION, json.loads(body))
        assert isinstance(ins, PartnerInstruction)
        assert request.headers["ce-id"] == ins.instruction_id
        self.calls[ins.instruction_id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.behaviour(ins, self.calls[ins.instruction_id])
        finally:
            self.in_flight -= 1

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/hook", self.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            port = cast(Any, site)._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}/hook"
            self._runner = runner
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


async def answer_done(_ins: PartnerInstruction, _n: int) -> web.StreamResponse:
    return web.json_response({"status": "DONE"})


# ---- the namespace, the bridge process ------------------------------------------------


@dataclass
class Rig:
    settings: Settings  # admin, in the namespace
    env: dict[str, str]
    tmp: Path
    serde: AvroSerde = field(default_factory=AvroSerde)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    producer: Producer | None = None

    @property
    def instructions(self) -> str:
        return self.settings.topics.instructions(PARTNER)

    @property
    def acks(self) -> str:
        return self.settings.topics.acks(PARTNER)

    def policy_for(self, url: str) -> None:
        text = (resources.files("schemas") / "policy" / "policy.v1.toml").read_text("utf-8")
        anchor = 'apps = ["carrier-tracking"]\n'
        text = text.replace(anchor, f'{anchor}delivery = "webhook"\nwebhook_url = "{url}"\n', 1)
        (self.tmp / "policy.toml").write_text(text, encoding="utf-8")

    def start_bridge(self, metrics_port: int | None = None) -> subprocess.Popen[str]:
        args = [sys.executable, "-m", "streams", "--log-level", "INFO", "webhook-bridge"]
        args += ["--partner", PARTNER, "--state-dir", str(self.tmp / "state")]
        if metrics_port is not None:
            args += ["--metrics-port", str(metrics_port)]
        log = open(self.tmp / f"bridge-{len(self.procs)}.log", "w", encoding="utf-8")  # noqa: SIM115
        proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text("utf-8") for p in sorted(self.tmp.glob("bridge-*.log")))

    def publish(self, items: list[PartnerInstruction]) -> None:
        if self.producer is None:
            self.producer = Producer(self.settings.producer_config(**{"linger.ms": 0}))
        producer = self.producer
        for ins in items:
            value = self.serde.encode(ins, self.instructions)
            producer.produce(self.instructions, key=ins.subject_ref.encode(), value=value)
        assert producer.flush(30) == 0

    def read_acks(
        self, done: Callable[[list[tuple[str, PartnerAcknowledgement, dict[str, bytes]]]], bool]
    ) -> list[tuple[str, PartnerAcknowledgement, dict[str, bytes]]]:
        consumer = Consumer(self.settings.consumer_config(f"reader-{uuid.uuid4().hex}"))
        consumer.assign([TopicPartition(self.acks, p, 0) for p in range(self.settings.partitions)])
        got: list[tuple[str, PartnerAcknowledgement, dict[str, bytes]]] = []
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline and not done(got):
                for msg in consumer.consume(100, 0.3):
                    assert msg.error() is None, msg.error()
                    ack = self.serde.decode_as(msg.value() or b"", PartnerAcknowledgement)
                    headers = header_map(cast(Any, msg.headers()))
                    got.append(((msg.key() or b"").decode(), ack, headers))
            # a little longer: anything more (a duplicate) would show now
            for msg in consumer.consume(100, 1.0):
                ack = self.serde.decode_as(msg.value() or b"", PartnerAcknowledgement)
                got.append(((msg.key() or b"").decode(), ack, header_map(cast(Any, msg.headers()))))
        finally:
            consumer.close()
        return got

    def committed(self) -> int:
        consumer = Consumer(
            self.settings.consumer_config(self.settings.topics.partner_group(PARTNER))
        )
        try:
            parts = [TopicPartition(self.instructions, p) for p in range(self.settings.partitions)]
            return sum(max(tp.offset, 0) for tp in consumer.committed(parts, 30))
        finally:
            consumer.close()


@pytest.fixture
def rig(bootstrap_servers: str, tmp_path: Path) -> Iterator[Rig]:
    namespace = f"wh{uuid.uuid4().hex[:12]}"
    settings = admin_settings(
        bootstrap_servers=bootstrap_servers,
        topic_namespace=namespace,
        app_id=namespace,
        redis_prefix=namespace,
    )
    policy = load_policy()
    ensure_topics(settings, policy)
    sync_acls(settings, [PARTNER])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "CONSENT_STREAM_BOOTSTRAP_SERVERS": bootstrap_servers,
        "CONSENT_STREAM_TOPIC_NAMESPACE": namespace,
        "CONSENT_STREAM_APP_ID": namespace,
        "CONSENT_STREAM_REDIS_PREFIX": namespace,
        "CONSENT_STREAM_POLICY": str(tmp_path / "policy.toml"),
        "CONSENT_STREAM_WEBHOOK_SECRETS": f"{PARTNER}={SECRET}",
        "CONSENT_STREAM_WEBHOOK_CONCURRENCY": "4",
        "CONSENT_STREAM_WEBHOOK_TIMEOUT_S": "5",
        "CONSENT_STREAM_DATA_DIR": str(tmp_path / "data"),
        # a SIGKILLed consumer's partitions move after 6 s (the broker's minimum), not 45 s
        "CONSENT_STREAM_KAFKA_SESSION_TIMEOUT_MS": "6000",
    }
    env.pop("CONSENT_STREAM_SASL_USERNAME", None)
    env.pop("CONSENT_STREAM_SASL_PASSWORD", None)
    rig = Rig(settings, env, tmp_path)
    try:
        yield rig
    finally:
        for proc in rig.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        remove_namespace(settings, [PARTNER])
        remove_namespace_acls(settings, [PARTNER])


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[Behaviour], Receiver]]:
    started: list[Receiver] = []

    def make(behaviour: Behaviour) -> Receiver:
        receiver = Receiver(behaviour)
        receiver.start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


def instruction(**overrides: Any) -> PartnerInstruction:
    iid = str(uuid.uuid4())
    now = int(time.time() * 1000)
    fields: dict[str, Any] = {
        "instruction_id": iid,
        "source_event_id": str(uuid.uuid4()),
        "partner": PARTNER,
        "action": InstructionAction.STOP_PROCESSING,
        "subject_ref": "dev:" + uuid.uuid4().hex * 2,
        "issued_at": now,
        "due_by": now + DAY_MS,
        "ack_key": iid,
        "purposes": ("marketing_sms",),
    }
    fields.update(overrides)
    return PartnerInstruction(**fields)


def by_id(
    got: list[tuple[str, PartnerAcknowledgement, dict[str, bytes]]],
) -> dict[str, list[tuple[str, PartnerAcknowledgement, dict[str, bytes]]]]:
    out: dict[str, list[tuple[str, PartnerAcknowledgement, dict[str, bytes]]]] = defaultdict(list)
    for item in got:
        out[item[1].instruction_id].append(item)
    return out


def all_acked(ids: set[str]) -> Callable[[list[Any]], bool]:
    return lambda got: ids <= {a.instruction_id for _, a, _ in got}


def poll(check: Callable[[], bool], what: str, rig: Rig, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; bridge log:\n{rig.logs()[-4000:]}")
        time.sleep(0.05)


# ---- the tests ------------------------------------------------------------------------


def test_happy_path_one_ack_per_instruction_and_round_trip_latency(
    rig: Rig, receiver_factory: Callable[[Behaviour], Receiver]
) -> None:
    receiver = receiver_factory(answer_done)
    rig.policy_for(receiver.url)
    items = [instruction() for _ in range(40)]
    proc = rig.start_bridge()
    rig.publish(items)
    ids = {i.instruction_id for i in items}
    got = rig.read_acks(all_acked(ids))
    acks = by_id(got)
    assert set(acks) == ids, rig.logs()[-3000:]
    assert all(len(v) == 1 for v in acks.values())  # exactly one ack each
    for ins in items:
        ((key, ack, headers),) = acks[ins.instruction_id]
        assert key == ins.ack_key
        assert ack.status is AcknowledgementStatus.DONE and ack.partner == PARTNER
        assert headers["ce_subject"] == ins.subject_ref.encode()
    assert receiver.calls == Counter(dict.fromkeys(ids, 1))
    assert sum(receiver.refused.values()) == 0
    poll(lambda: rig.committed() == len(items), "all offsets committed", rig)
    assert rig.stop(proc) == 0
    assert "webhook bridge for logistics" in rig.logs()
    assert SECRET not in rig.logs()


def test_500_then_recovery_retries_and_answers_each_once(
    rig: Rig, receiver_factory: Callable[[Behaviour], Receiver]
) -> None:
    async def flaky(_ins: PartnerInstruction, n: int) -> web.StreamResponse:
        if n <= 2:
            return web.Response(status=500, text="partner down")
        return web.json_response({"status": "DONE"})

    receiver = receiver_factory(flaky)
    rig.policy_for(receiver.url)
    items = [instruction() for _ in range(10)]
    proc = rig.start_bridge()
    rig.publish(items)
    ids = {i.instruction_id for i in items}
    acks = by_id(rig.read_acks(all_acked(ids)))
    assert set(acks) == ids
    assert all(len(v) == 1 and v[0][1].status is AcknowledgementStatus.DONE for v in acks.values())
    assert receiver.calls == Counter(dict.fromkeys(ids, 3))  # two 500s, then the answer
    assert sum(receiver.refused.values()) == 0  # retries are signed anew: no "replay"
    poll(lambda: rig.committed() == len(items), "all offsets committed", rig)
    assert rig.stop(proc) == 0


def test_a_slow_partner_gets_at_most_the_concurrency_in_flight(
    rig: Rig, receiver_factory: Callable[[Behaviour], Receiver]
) -> None:
    async def slow(_ins: PartnerInstruction, _n: int) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return web.json_response({"status": "DONE"})

    receiver = receiver_factory(slow)
    rig.policy_for(receiver.url)
    items = [instruction() for _ in range(16)]
    proc = rig.start_bridge()
    rig.publish(items)
    started = time.monotonic()
    ids = {i.instruction_id for i in items}
    acks = by_id(rig.read_acks(all_acked(ids)))
    elapsed = time.monotonic() - started
    assert set(acks) == ids and all(len(v) == 1 for v in acks.values())
    assert receiver.max_in_flight == 4  # CONSENT_STREAM_WEBHOOK_CONCURRENCY
    assert elapsed >= 16 / 4 * 0.3 * 0.9  # bounded: never more than 4 at a time
    assert rig.stop(proc) == 0


def test_forged_and_replayed_requests_are_refused_by_the_partners_verifier(
    receiver_factory: Callable[[Behaviour], Receiver],
) -> None:
    """What a partner's verifier does with requests that are not the bridge's own."""
    import urllib.error
    import urllib.request

    from schemas.webhook_signing import signature_header

    receiver = receiver_factory(answer_done)
    ins = instruction()
    body = json.dumps(from_record_json(ins)).encode()

    def post(signature: str | None) -> int:
        headers = {"Content-Type": "application/json", "ce-id": ins.instruction_id}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        request = urllib.request.Request(receiver.url, data=body, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    now = int(time.time())
    good = signature_header(SECRET.encode(), now, body)
    assert post(good) == 200
    assert post(good) == 401  # the same request again: a replay
    assert post(signature_header(b"not-the-partners-secret", now, body)) == 401
    assert post(signature_header(SECRET.encode(), now - 3600, body)) == 401  # an old capture
    assert post(None) == 401
    assert receiver.refused == Counter(
        {"replayed_signature": 1, "bad_signature": 1, "stale_signature": 1, "missing_signature": 1}
    )
    assert receiver.calls == Counter({ins.instruction_id: 1})


def from_record_json(ins: PartnerInstruction) -> dict[str, Any]:
    from schemas.jsonform import instruction_to_json

    return instruction_to_json(ins)


def test_sigkill_mid_delivery_then_restart_acknowledges_every_instruction(
    rig: Rig, receiver_factory: Callable[[Behaviour], Receiver]
) -> None:
    async def slowish(_ins: PartnerInstruction, _n: int) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        return web.json_response({"status": "DONE"})

    receiver = receiver_factory(slowish)
    rig.policy_for(receiver.url)
    items = [instruction() for _ in range(120)]
    ids = {i.instruction_id for i in items}
    first = rig.start_bridge()
    rig.publish(items)
    poll(lambda: len(receiver.calls) >= 30, "30 instructions delivered", rig)
    os.killpg(first.pid, signal.SIGKILL)  # mid-delivery: requests in flight, acks unsent
    first.wait(10)
    delivered_before = len(receiver.calls)
    assert delivered_before < len(items), "the kill came too late to test anything"
    second = rig.start_bridge()
    got = rig.read_acks(all_acked(ids))
    acks = by_id(got)
    assert set(acks) == ids, f"missing acks; log:\n{rig.logs()[-3000:]}"
    assert len({a.instruction_id for _, a, _ in got} - ids) == 0  # no other ids
    for iid, items_of in acks.items():
        # at-least-once across the kill: a repeat has the same id, ce_id and content
        assert len({(k, a.status, h["ce_id"]) for k, a, h in items_of}) == 1, iid
    repeats = sum(len(v) - 1 for v in acks.values())
    reposted = sum(n - 1 for n in receiver.calls.values())
    assert set(receiver.calls) == ids
    assert sum(receiver.refused.values()) == 0
    poll(lambda: rig.committed() == len(items), "all offsets committed", rig)
    assert rig.stop(second) == 0
    print(
        f"SIGKILL after {delivered_before} of {len(items)} POSTs: "
        f"{repeats} repeated acks (same ce_id), {reposted} repeated POSTs (same ce-id)"
    )
    # a POST is repeated only if its answer was not yet remembered: at most what was in
    # flight (CONSENT_STREAM_WEBHOOK_CONCURRENCY); a remembered answer is re-sent, not POSTed
    assert reposted <= 4


def test_round_trip_latency_on_loopback(
    rig: Rig, receiver_factory: Callable[[Behaviour], Receiver]
) -> None:
    """Measures the webhook round trip the bridge reports (request to answer)."""
    import urllib.request

    from streams.demo.processes import free_port

    receiver = receiver_factory(answer_done)
    rig.policy_for(receiver.url)
    port = free_port()
    proc = rig.start_bridge(metrics_port=port)
    warm = [instruction() for _ in range(5)]  # connections set up, group joined
    rig.publish(warm)
    rig.read_acks(all_acked({i.instruction_id for i in warm}))
    items = []
    for _ in range(200):  # one at a time: the latency of one delivery, not of a queue
        ins = instruction()
        rig.publish([ins])
        items.append(ins)
        time.sleep(0.01)
    got = rig.read_acks(all_acked({i.instruction_id for i in items}))
    acks = by_id(got)
    assert len(acks) == 205
    issued = {i.instruction_id: i.issued_at for i in items}
    hop = sorted(
        int(h["cs_published_at"]) - issued[a.instruction_id]
        for _, a, h in got
        if a.instruction_id in issued
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert rig.stop(proc) == 0
    from prometheus_client.parser import text_string_to_metric_families

    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "consent_stream_webhook_round_trip_seconds_bucket"
    )
    count = max(v for _, v in buckets)
    assert count == 205

    def quantile(q: float) -> float:
        return next(le for le, v in buckets if v >= q * count)

    p50, p99 = statistics.quantiles(hop, n=100)[49], statistics.quantiles(hop, n=100)[98]
    print(
        f"webhook round trip on loopback (bridge histogram): p50 <= {quantile(0.5)} s, "
        f"p99 <= {quantile(0.99)} s; instruction published -> ack produced: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    assert quantile(0.99) <= 0.25
