"""The simulated webhook partner over real HTTP on loopback (no Kafka): it verifies the
bridge's signature, answers like the simulated partner, remembers its answers by ce-id,
answers 503 for the simulated outages and sends signed callbacks after a 202."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from test_webhook_jsonform import INSTRUCTION

from consumers.simulated.callback import callback_body
from consumers.simulated.webhook import WebhookPartnerOptions, build_receiver
from consumers.webhook.callback import acknowledgement_from_callback
from consumers.webhook.delivery import instruction_body, request_headers
from schemas.partner import AcknowledgementStatus
from schemas.webhook_signing import PARTNER_HEADER, SIGNATURE_HEADER
from streams.demo.processes import free_port

SECRET = b"whsec-test-0123456789abcdef"


def options(port: int, **extra: Any) -> WebhookPartnerOptions:
    return WebhookPartnerOptions(
        partner="logistics", url=f"http://127.0.0.1:{port}/hook", secret=SECRET, seed=1, **extra
    )


@asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def deliver(port: int, secret: bytes = SECRET, **instruction: Any) -> tuple[int, Any]:
    import dataclasses

    ins = dataclasses.replace(INSTRUCTION, **instruction)
    body = instruction_body(ins)
    headers = request_headers(ins, body, secret, int(time.time()))
    url = f"http://127.0.0.1:{port}/hook"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        return r.status, await r.json()


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(scenario())


def test_a_signed_delivery_gets_the_ack_and_a_forged_one_401() -> None:
    port = free_port()
    registry = CollectorRegistry()

    async def scenario() -> list[tuple[int, Any]]:
        app, callbacks = build_receiver(options(port), registry)
        async with serving(app, port):
            answers = [await deliver(port), await deliver(port, secret=b"x" * 32)]
        await callbacks.close()
        return answers

    (ok, ack), (forged, error) = run(scenario)
    assert ok == 200
    assert ack["instruction_id"] == INSTRUCTION.instruction_id
    assert ack["status"] == "DONE"  # logistics carries out an ERASE
    assert forged == 401 and "signature" in error["error"]
    answers = registry.get_sample_value
    assert (
        answers(
            "consent_stream_simulated_webhook_answers_total",
            {"partner": "logistics", "answer": "acknowledged"},
        )
        == 1
    )
    assert (
        answers(
            "consent_stream_simulated_webhook_answers_total",
            {"partner": "logistics", "answer": "unauthorized"},
        )
        == 1
    )


def test_outages_are_503_and_a_repeated_instruction_gets_its_first_answer() -> None:
    port = free_port()

    async def scenario() -> list[tuple[int, Any]]:
        app, _ = build_receiver(options(port, failure_rate=1.0), CollectorRegistry())
        async with serving(app, port):
            down = await deliver(port)
        app, _ = build_receiver(options(port), CollectorRegistry())
        async with serving(app, port):
            first = await deliver(port)
            await asyncio.sleep(1.05)  # a retry of the bridge is signed at a later second
            again = await deliver(port)  # same ce-id
        return [down, first, again]

    down, first, again = run(scenario)
    assert down[0] == 503
    assert first[0] == 200 and again == first


def test_a_202_is_followed_by_a_signed_callback_the_gateway_accepts() -> None:
    port, gateway_port = free_port(), free_port()
    received: list[tuple[bytes, str | None, str | None]] = []

    async def acks(request: web.Request) -> web.Response:
        received.append(
            (
                await request.read(),
                request.headers.get(SIGNATURE_HEADER),
                request.headers.get(PARTNER_HEADER),
            )
        )
        return web.json_response({"status": 202}, status=202 if len(received) > 1 else 503)

    async def scenario() -> tuple[int, Any]:
        gateway = web.Application()
        gateway.router.add_post("/v1/acks", acks)
        url = f"http://127.0.0.1:{gateway_port}/v1/acks"
        opts = options(port, callback_fraction=1.0, callback_url=url)
        app, callbacks = build_receiver(opts, CollectorRegistry())
        async with serving(gateway, gateway_port), serving(app, port):
            answer = await deliver(port)
            deadline = time.monotonic() + 10
            while len(received) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await callbacks.close()
        return answer

    status, _ = run(scenario)
    assert status == 202
    assert len(received) == 2  # the first got 503: sent again, signed anew
    (body1, sig1, _), (body2, sig2, partner) = received
    assert body1 == body2 and sig1 != sig2 and partner == "logistics"
    pending = acknowledgement_from_callback(
        body2, sig2, partner="logistics", secrets=SECRET, now_s=time.time()
    )
    assert pending.ack_key == INSTRUCTION.ack_key
    assert pending.sent.ack.instruction_id == INSTRUCTION.instruction_id
    assert pending.sent.ack.status is AcknowledgementStatus.DONE
    assert json.loads(body2)["subject_ref"] == INSTRUCTION.subject_ref


def test_options_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="loopback"):
        WebhookPartnerOptions("logistics", "https://carrier.example/hook", SECRET).check()
    with pytest.raises(ValueError, match="callback_url"):
        options(1, callback_fraction=0.5).check()
    with pytest.raises(ValueError, match="between 0 and 1"):
        options(1, failure_rate=2.0).check()


def test_callback_body_carries_the_routing_fields() -> None:
    from consumers.partner_results import Done, ack_for_result

    ack = ack_for_result(INSTRUCTION, "logistics", Done(), 5)
    obj = json.loads(callback_body(INSTRUCTION, ack))
    assert obj["ack_key"] == INSTRUCTION.ack_key and obj["status"] == "DONE"
