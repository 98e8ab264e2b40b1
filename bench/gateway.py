#!/usr/bin/env python3
"""Accepted events/s through ``consent-stream gateway`` on the local stack.

Under a fresh namespace (its consent.events.v1, its ACLs), starts one gateway process (as
the ``gateway`` principal, stopped by pid), posts batches and single events from client
threads over keep-alive HTTP connections, and prints accepted events/s and answer times.
The namespace is removed afterwards. Settings from ``CONSENT_STREAM_*`` (``make env``).

    bench/gateway.py [--batch 500] [--batches 40] [--singles 2000] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402

from schemas.kafka_security import security_env  # noqa: E402
from schemas.policy import load_policy  # noqa: E402
from schemas.settings import ENV_PREFIX, Settings  # noqa: E402
from streams.acl.sync import run_acl_sync  # noqa: E402
from streams.demo.processes import free_port, http_get  # noqa: E402
from streams.namespace import remove_namespace  # noqa: E402
from streams.topics import wait_for_leaders  # noqa: E402

TOKEN = f"bench-{uuid.uuid4().hex}"
SOURCE = "bench"


def event(n: int, now_ms: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "consent.changed",
        "subject_id": f"bench-{n % 5000}",
        "occurred_at": now_ms - 60_000 + n,
        "source": SOURCE,
        "payload": {
            "purpose": "marketing_sms",
            "decision": "WITHDRAWN" if n % 2 else "GRANTED",
            "notice_version": "2023-09-01",
            "method": "sms_unsubscribe",
        },
    }


def run_clients(port: int, bodies: list[bytes], clients: int) -> tuple[int, float, list[float]]:
    """(accepted events, wall seconds, answer times) for ``bodies`` over ``clients`` threads."""
    accepted: list[int] = []
    times: list[float] = []
    lock = threading.Lock()
    chunks = [bodies[i::clients] for i in range(clients)]

    def work(chunk: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        for body in chunk:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/events", body=body, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            took = time.perf_counter() - t0
            if resp.status != 202:
                raise SystemExit(f"answer {resp.status}: {str(answer)[:300]}")
            with lock:
                accepted.append(answer["accepted"])
                times.append(took)
        conn.close()

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(accepted), time.perf_counter() - start, times


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--singles", type=int, default=2000)
    parser.add_argument("--clients", default="1,8", help="client threads, comma-separated")
    args = parser.parse_args()
    base = Settings.from_env().as_principal("admin")
    ns = f"gwbench{uuid.uuid4().hex[:8]}"
    settings = replace(base, topic_namespace=ns, app_id=f"consent-stream-{ns}", redis_prefix=ns)
    policy = load_policy(settings.policy_path)
    admin = AdminClient(settings.admin_config())
    topic = settings.topics.events
    for future in admin.create_topics([NewTopic(topic, settings.partitions, 1)]).values():
        future.result()
    wait_for_leaders(admin, {topic: settings.partitions}, 30.0)
    run_acl_sync(settings, policy, open(os.devnull, "w"))  # noqa: SIM115
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(security_env(os.environ))
    env.update(
        {
            ENV_PREFIX + "BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            ENV_PREFIX + "TOPIC_NAMESPACE": ns,
            ENV_PREFIX + "DEV_MODE": "1",
            ENV_PREFIX + "GATEWAY_PORT": str(port),
            ENV_PREFIX + "GATEWAY_TOKENS": f"bench={TOKEN}:{SOURCE}",
            "PYTHONPATH": str(REPO),
        }
    )
    log = tempfile.NamedTemporaryFile(prefix="gateway-bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "--log-level", "WARNING", "gateway"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while http_get(port, "/healthz")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the gateway did not start; see {log.name}")
            time.sleep(0.2)
        now = int(time.time() * 1000)
        n = iter(range(10**9))
        warm = [json.dumps([event(next(n), now) for _ in range(100)]).encode() for _ in range(5)]
        run_clients(port, warm, 1)
        print(f"gateway bench: namespace {ns}, {os.cpu_count()} cores shared with the broker")
        for clients in [int(c) for c in args.clients.split(",")]:
            batches = [
                json.dumps([event(next(n), now) for _ in range(args.batch)]).encode()
                for _ in range(args.batches)
            ]
            got, wall, times = run_clients(port, batches, clients)
            print(
                f"batches of {args.batch}, {clients} client(s): {got / wall:,.0f} accepted "
                f"events/s ({got:,} in {wall:.1f} s), answer p50 {ms(times, 0.5):.0f} ms, "
                f"p99 {ms(times, 0.99):.0f} ms"
            )
            singles = [json.dumps(event(next(n), now)).encode() for _ in range(args.singles)]
            got, wall, times = run_clients(port, singles, clients)
            print(
                f"single events, {clients} client(s): {got / wall:,.0f} accepted events/s "
                f"({got:,} in {wall:.1f} s), answer p50 {ms(times, 0.5):.1f} ms, "
                f"p99 {ms(times, 0.99):.1f} ms, mean {1000 * statistics.mean(times):.1f} ms"
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        removed = remove_namespace(settings, policy.partners)
        print(f"removed namespace {ns}: {removed.topics} topics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
