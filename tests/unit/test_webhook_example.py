"""examples/webhook_receiver.py (what partners copy) agrees with the bridge's signatures:
it answers a signed instruction DONE, refuses forged, stale and replayed requests, and
answers a repeated instruction (same ce-id) with its first answer."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from sre_contract import REPO_ROOT

from schemas.webhook_signing import signature_header

SECRET = b"whsec-example-0123456789"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "webhook_receiver", REPO_ROOT / "examples" / "webhook_receiver.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load()


@pytest.fixture
def url(example: ModuleType) -> Iterator[str]:
    server = example.serve(SECRET, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_example_verifies_what_the_bridge_signs(example: ModuleType) -> None:
    body, now = b'{"a":1}', int(time.time())
    header = signature_header(SECRET, now, body)
    assert example.verify_signature(SECRET, header, body, now)
    assert not example.verify_signature(SECRET, header, body + b" ", now)
    assert not example.verify_signature(b"other-secret-0123456", header, body, now)
    assert not example.verify_signature(SECRET, header, body, now + 301)
    assert not example.verify_signature(SECRET, None, body, now)
    assert not example.verify_signature(SECRET, "t=x,v1=ab", body, now)


def post(url: str, body: bytes, signature: str | None, ce_id: str) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "ce-id": ce_id}
    if signature:
        headers["Consent-Stream-Signature"] = signature
    request = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_example_answers_done_and_refuses_the_rest(url: str) -> None:
    body = json.dumps(
        {"instruction_id": "i-1", "action": "ERASE", "subject_ref": "dev:" + "ab" * 32}
    ).encode()
    now = int(time.time())
    status, answer = post(url, body, signature_header(SECRET, now, body), "i-1")
    assert status == 200 and answer["status"] == "DONE"
    assert post(url, body, signature_header(SECRET, now, body), "i-1")[0] == 401  # replay
    assert post(url, body, signature_header(b"forged-secret-012345", now, body), "i-1")[0] == 401
    assert post(url, body, signature_header(SECRET, now - 3600, body), "i-1")[0] == 401
    assert post(url, body, None, "i-1")[0] == 401
    again_status, again = post(url, body, signature_header(SECRET, now + 1, body), "i-1")
    assert again_status == 200 and again == answer  # the same answer for the same ce-id
