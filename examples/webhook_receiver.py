"""A small webhook receiver for a Consent Stream partner: verify, de-duplicate, answer.

Standard library only (copy it as a start). See docs/webhooks.md for the contract.

    WEBHOOK_SECRET=... python examples/webhook_receiver.py --port 8080

Each POST is an instruction (JSON, CloudEvents HTTP binary mode). The receiver:
1. refuses (401) a request whose ``Consent-Stream-Signature`` is missing, wrong, older
   than 5 minutes, or seen before (a replay);
2. answers a repeated instruction (same ``ce-id``) with the answer it gave the first time;
3. carries out the instruction (here: nothing) and answers ``200`` with the
   acknowledgement ``{"status": "DONE"}``.

An ERASE or RESTRICT whose ``partner_refs`` lack some records' references (they did not
fit the subject's state) says how many in its ``ce-referencesdropped`` header: find that
data by ``subject_ref`` and ``categories`` as well.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 300
MAX_BODY = 1024 * 1024


def verify_signature(secret: bytes, header: str | None, body: bytes, now: float) -> bool:
    """True when ``header`` (``t=<unix s>,v1=<hex>``) signs ``body`` under ``secret`` and
    ``t`` is within 5 minutes of ``now``."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        (t,) = fields["t"]
        timestamp = int(t)
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > TOLERANCE_S:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


class Receiver:
    """The partner's state: signatures seen (replays) and answers given (by ce-id)."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.seen: dict[str, float] = {}  # signature -> when it stops being valid
        self.answers: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def first_use(self, signature: str, now: float) -> bool:
        with self.lock:
            self.seen = {s: until for s, until in self.seen.items() if until >= now}
            if signature in self.seen:
                return False
            self.seen[signature] = now + 2 * TOLERANCE_S
            return True

    def handle(self, instruction: dict[str, Any], refs_dropped: int = 0) -> dict[str, Any]:
        """Carry out the instruction; here every one is simply DONE."""
        lacking = f" (references of {refs_dropped} records missing)" if refs_dropped else ""
        action, ref = instruction["action"], instruction["subject_ref"][:12]
        print(f"{action} for {ref}...{lacking}", flush=True)
        return {"status": "DONE", "completed_at": int(time.time() * 1000)}

    def answer(
        self, ce_id: str, instruction: dict[str, Any], refs_dropped: int = 0
    ) -> dict[str, Any]:
        with self.lock:
            if ce_id in self.answers:
                return self.answers[ce_id]
        result = self.handle(instruction, refs_dropped)
        with self.lock:
            return self.answers.setdefault(ce_id, result)


def make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": "too large"})
                return
            body = self.rfile.read(length)
            signature = self.headers.get("Consent-Stream-Signature")
            now = time.time()
            if not verify_signature(receiver.secret, signature, body, now):
                self._send(401, {"error": "bad signature"})
                return
            if not receiver.first_use(str(signature), now):
                self._send(401, {"error": "replayed"})
                return
            instruction = json.loads(body)
            ce_id = self.headers.get("ce-id") or instruction["instruction_id"]
            dropped = self.headers.get("ce-referencesdropped") or ""
            refs_dropped = int(dropped) if dropped.isascii() and dropped.isdigit() else 0
            self._send(200, receiver.answer(ce_id, instruction, refs_dropped))

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log: the bridge's metrics and our answers are enough here

    return Handler


def serve(secret: bytes, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A server ready to ``serve_forever()`` (port 0: any free port)."""
    return ThreadingHTTPServer((host, port), make_handler(Receiver(secret)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    secret = os.environ["WEBHOOK_SECRET"].encode()
    server = serve(secret, args.host, args.port)
    print(f"listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
