"""The gateway over real HTTP on loopback (aiohttp server and client), with a fake Kafka
producer behind it: answers, per-item outcomes, auth, limits, back-pressure, a broker
that does not acknowledge, metrics, and the OpenAPI document against what is served."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway_harness import (
    APP,
    ORDERS,
    PARTNER,
    FakeKafka,
    Served,
    callback_body,
    callbacks,
    event,
    serve,
    signed,
)
from prometheus_client.parser import text_string_to_metric_families

from schemas.secrets import Secret
from streams.gateway.app import openapi_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway-openapi.json"
WRONG = Secret("w" * 24)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def sent_keys(kafka: FakeKafka) -> list[bytes]:
    return [key for key, _ in kafka.sent]


def metric(served: Served, name: str, **labels: str) -> float:
    from prometheus_client import generate_latest

    text = generate_latest(served.registry).decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_a_single_event_is_accepted_once_acknowledged() -> None:
    async def scenario() -> None:
        async with serve() as g:
            one = event("m-1")
            status, body, headers = await g.client.post(one)
            assert status == 202, body
            assert body["accepted"] == 1 and body["items"] == [
                {"index": 0, "event_id": one["event_id"], "status": "accepted"}
            ]
            assert sent_keys(g.kafka) == [b"m-1"]
            assert "Retry-After" not in headers

    run(scenario())


def test_a_batch_with_good_and_bad_items_sends_only_the_good_ones() -> None:
    async def scenario() -> None:
        async with serve() as g:
            bad = event("m-bad")
            bad["payload"] = {**bad["payload"], "purpose": "order_fulfilment"}
            batch = [event("m-1"), bad, event("m-3", source="ads-settings"), event("m-4")]
            status, body, _ = await g.client.post(batch)
            assert status == 400
            assert [i["status"] for i in body["items"]] == [
                "accepted",
                "rejected",
                "rejected",
                "accepted",
            ]
            assert [i.get("reason") for i in body["items"]] == [
                None,
                "not_withdrawable",
                "source_not_allowed",
                None,
            ]
            assert (body["accepted"], body["rejected"]) == (2, 2)
            assert sent_keys(g.kafka) == [b"m-1", b"m-4"]
            assert (
                metric(
                    g, "consent_gateway_events_total", source="order-service", outcome="accepted"
                )
                == 2
            )
            assert (
                metric(g, "consent_gateway_events_total", source="unknown", outcome="rejected") == 1
            )
            assert (
                metric(g, "consent_gateway_rejected_events_total", reason="source_not_allowed") == 1
            )

    run(scenario())


def test_json_lines_answer_by_line_number() -> None:
    async def scenario() -> None:
        async with serve() as g:
            text = f"{json.dumps(event('m-1'))}\n\nnot json\n{json.dumps(event('m-2'))}\n"
            status, body, _ = await g.client.post(
                text.encode(), content_type="application/x-ndjson"
            )
            assert status == 400
            assert [(i["line"], i["status"]) for i in body["items"]] == [
                (1, "accepted"),
                (3, "rejected"),
                (4, "accepted"),
            ]
            assert body["items"][1]["reason"] == "not_json"
            assert sent_keys(g.kafka) == [b"m-1", b"m-2"]

    run(scenario())


def test_auth_failures_send_nothing() -> None:
    async def scenario() -> None:
        async with serve() as g:
            for token in (None, WRONG):
                status, body, headers = await g.client.post(event(), token=token)
                assert status == 401, body
                assert headers["WWW-Authenticate"].startswith("Bearer")
            status, body, _ = await g.client.post([event(), event()], token=APP.token)
            assert status == 403
            assert {i["reason"] for i in body["items"]} == {"source_not_allowed"}
            assert g.kafka.sent == []
            status, _, _ = await g.client.post(event(source="app-settings"), token=APP.token)
            assert status == 202
            assert metric(g, "consent_gateway_requests_total", code="401") == 2

    run(scenario())


def test_limits_of_size_count_and_content_type() -> None:
    async def scenario() -> None:
        async with serve(max_body_bytes=2000, max_items=3) as g:
            status, body, _ = await g.client.post([event()] * 4)
            assert (status, body["status"]) == (413, 413)
            assert "at most 3" in body["error"]
            big = event()
            big["payload"] = {**big["payload"], "method": "x" * 3000}
            status, body, _ = await g.client.post(big)
            assert status == 413 and "larger than 2,000 bytes" in body["error"]
            status, body, _ = await g.client.post(event(), content_type="text/plain")
            assert status == 415
            status, body, _ = await g.client.post(b"{oops")
            assert status == 400 and body["error"].startswith("not JSON")
            assert g.kafka.sent == []

    run(scenario())


def test_a_full_queue_is_429_with_retry_after_and_nothing_sent() -> None:
    async def scenario() -> None:
        async with serve(queue_max_messages=3) as g:
            status, body, headers = await g.client.post([event(f"m-{n}") for n in range(4)])
            assert status == 429 and headers["Retry-After"] == "1"
            assert g.kafka.sent == []
            status, _, _ = await g.client.post([event(f"m-{n}") for n in range(3)])
            assert status == 202
        async with serve(FakeKafka(capacity=2)) as g:  # the client's own queue is smaller
            g.kafka.hold = True
            task = asyncio.create_task(g.client.post([event(f"m-{n}") for n in range(3)]))
            await asyncio.sleep(0.2)
            g.kafka.hold = False
            status, body, headers = await task
            assert status == 429 and headers["Retry-After"] == "1"
            assert [i["status"] for i in body["items"]] == ["accepted", "accepted", "not_sent"]
            assert body["items"][2]["reason"] == "queue_full"
            assert sent_keys(g.kafka) == [b"m-0", b"m-1"]

    run(scenario())


def test_deliveries_that_fail_or_time_out_are_503_never_success() -> None:
    async def scenario() -> None:
        async with serve(FakeKafka(down=True), retry_after_s=7) as g:
            status, body, headers = await g.client.post([event("m-1"), event("m-2")])
            assert status == 503 and headers["Retry-After"] == "7"
            assert {i["status"] for i in body["items"]} == {"not_delivered"}
            assert body["items"][0]["reason"] == "publish_failed"
            assert metric(g, "consent_gateway_events_total", outcome="not_delivered") == 2
        async with serve(FakeKafka(hold=True), delivery_timeout_ms=100) as g:
            status, body, headers = await g.client.post(event("m-1"))
            assert status == 503 and "Retry-After" in headers
            assert body["items"][0]["reason"] == "timeout"

    run(scenario())


def test_health_metrics_and_the_metrics_token() -> None:
    token = Secret("metrics-" + "m" * 20)

    async def scenario() -> None:
        async with serve(metrics_token=token) as g:
            assert (await g.client.get("/healthz"))[0] == 200
            g.broker.value = "down"
            status, body = await g.client.get("/healthz")
            assert status == 503 and json.loads(body)["broker"] == "down"
            assert (await g.client.get("/metrics"))[0] == 401
            assert (await g.client.get("/metrics", token=ORDERS.token))[0] == 401
            status, body = await g.client.get("/metrics", token=token)
            assert status == 200 and b"consent_gateway_requests_total" in body

    run(scenario())


def _documented() -> dict[tuple[str, str], set[int]]:
    doc = json.loads(DOC.read_text(encoding="utf-8"))
    return {
        (path, method.upper()): {int(code) for code in op["responses"]}
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    }


def test_the_served_openapi_document_is_the_one_in_docs() -> None:
    async def scenario() -> None:
        async with serve() as g:
            status, body = await g.client.get("/v1/openapi.json")
            assert status == 200
            assert json.loads(body) == json.loads(DOC.read_text(encoding="utf-8"))
            assert json.loads(openapi_document()) == json.loads(body)
            assert json.loads(body)["openapi"].startswith("3.1")
            routes = {
                (r.resource.canonical, r.method)
                for r in g.app.router.routes()
                if r.resource is not None and r.method != "HEAD"
            }
            assert routes == set(_documented())

    run(scenario())


def test_every_status_the_server_answers_is_documented_and_no_other() -> None:
    seen: dict[tuple[str, str], set[int]] = {}

    def saw(path: str, method: str, status: int) -> None:
        seen.setdefault((path, method), set()).add(status)

    async def posts(g: Served, *bodies: Any, **kwargs: Any) -> None:
        for body in bodies:
            saw("/v1/events", "POST", (await g.client.post(body, **kwargs))[0])

    async def ack(g: Served, body: bytes, signature: str | None = "") -> None:
        signature = signed(body) if signature == "" else signature
        answer = await g.client.post_ack(body, partner=PARTNER, signature=signature)
        saw("/v1/acks", "POST", answer[0])

    async def scenario() -> None:
        token = Secret("metrics-" + "m" * 20)
        async with serve(
            max_items=2, queue_max_messages=2, metrics_token=token, callbacks=callbacks()
        ) as g:
            await posts(g, event(), [event(), {"type": "?"}], b"[", [event()] * 3)
            await ack(g, callback_body())
            await ack(g, b"{")
            await ack(g, callback_body(), signature=None)
            await ack(g, callback_body(reason="x" * 70_000))
            await posts(g, event(), token=WRONG)
            await posts(g, event(source="nope"))
            await posts(g, event(), content_type="text/csv")
            g.kafka.hold = True
            waiting = asyncio.create_task(g.client.post([event(), event()]))  # a full queue
            await asyncio.sleep(0.2)
            await posts(g, event())
            await ack(g, callback_body())
            g.kafka.hold = False
            saw("/v1/events", "POST", (await waiting)[0])
            for path in ("/healthz", "/metrics", "/v1/openapi.json"):
                saw(path, "GET", (await g.client.get(path, token=token))[0])
            saw("/metrics", "GET", (await g.client.get("/metrics"))[0])
            g.broker.value = "down"
            saw("/healthz", "GET", (await g.client.get("/healthz"))[0])
        async with serve(FakeKafka(down=True), callbacks=callbacks()) as g:
            await posts(g, event())
            await ack(g, callback_body())
        async with serve(max_body_bytes=100) as g:
            await posts(g, event())

    run(scenario())
    assert seen == _documented()
