"""``demo --via-gateway``: which subjects are routed, and the sender against a real gateway
(loopback aiohttp server, fake producer): batches posted in order, answers counted."""

from __future__ import annotations

import asyncio

from gateway_harness import ORDERS, serve

from schemas.events import ConsentChanged, ConsentDecision, ConsentEvent
from streams.demo.gateway import GatewaySender, gateway_env, routed


def test_routing_is_by_subject_stable_and_about_the_fraction() -> None:
    subjects = [f"m-{n}" for n in range(10_000)]
    share = sum(routed(s, 0.3) for s in subjects) / len(subjects)
    assert 0.27 < share < 0.33
    assert [routed(s, 0.3) for s in subjects[:50]] == [routed(s, 0.3) for s in subjects[:50]]
    assert not any(routed(s, 0.0) for s in subjects)
    assert all(routed(s, 1.0) for s in subjects)


def test_the_gateway_env_names_every_source_once() -> None:
    env = gateway_env(6080, "t" * 20, ["b", "a", "b"])
    assert env["CONSENT_STREAM_GATEWAY_TOKENS"] == f"demo={'t' * 20}:a|b"


def test_the_sender_posts_everything_in_order_and_counts_the_answers() -> None:
    now = 1_700_000_000_000
    payload = ConsentChanged("marketing_sms", ConsentDecision.WITHDRAWN, "2023-09-01", "sms")
    good = [
        ConsentEvent(
            f"{n:08d}-0000-4000-8000-000000000000", f"m-{n}", now + n, "order-service", payload
        )
        for n in range(30)
    ]
    bad = ConsentEvent("99999999-0000-4000-8000-000000000000", "m-x", now, "ads", payload)
    delivered: list[str] = []

    def send(port: int) -> GatewaySender:
        sender = GatewaySender(port, ORDERS.token.reveal().decode(), delivered.append)
        for e in [*good[:10], bad, *good[10:]]:
            sender.put(e)
        sender.close()
        return sender

    async def scenario() -> tuple[GatewaySender, list[bytes]]:
        async with serve() as g:
            port = int(g.client.base.rsplit(":", 1)[1])
            sender = await asyncio.to_thread(send, port)
            return sender, [key for key, _ in g.kafka.sent]

    sender, keys = asyncio.run(scenario())
    c = sender.counts
    assert (c.events, c.accepted, c.rejected, c.failed) == (31, 30, 1, 0)
    assert keys == [f"m-{n}".encode() for n in range(30)]
    assert delivered == ["consent.changed"] * 30
    assert c.errors and "400" in c.errors[0]
    assert "31 events in" in c.line() and "30 accepted, 1 rejected" in c.line()
