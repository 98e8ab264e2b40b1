"""Signatures of webhook requests: HMAC-SHA256 over a timestamp and the body.

Both directions use it: the bridge signs each instruction it POSTs to a partner, and a
partner signs its callback (``POST /v1/acks`` on the gateway) the same way. The header::

    Consent-Stream-Signature: t=1717171717,v1=5257a869e7ec...(64 hex digits)

``t`` is the signing time in Unix seconds; ``v1`` is the lowercase hex HMAC-SHA256, under
the partner's secret, of the bytes ``f"{t}."`` followed by the raw request body (exactly
the bytes sent, before any JSON parsing). Several ``v1=`` entries may be given (a secret
rotation: one signature per secret); one match is enough.

A verifier refuses a signature whose ``t`` is more than the tolerance (default 300 s) away
from its clock, compares in constant time, and with a ``ReplayGuard`` also refuses a
signature it has already accepted inside the window (``forget`` gives one back: a
receiver that could not act on a request lets the same request come again). Pure: the
clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Protocol

from schemas.errors import ContractError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "PARTNER_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_VERSION",
    "ReplayGuard",
    "SignatureError",
    "SignatureGuard",
    "sign",
    "signature_header",
    "verify",
]

SIGNATURE_HEADER: Final = "Consent-Stream-Signature"
PARTNER_HEADER: Final = "Consent-Stream-Partner"
"""Names the partner of a signed callback (``POST /v1/acks``): whose secret verifies it."""
SIGNATURE_VERSION: Final = "v1"
DEFAULT_TOLERANCE_S: Final = 300
_MAX_HEADER_CHARS: Final = 1024


class SignatureError(ContractError):
    """A webhook request whose signature is missing, malformed, stale, wrong or replayed.

    ``reason``: ``missing_signature``, ``malformed_signature``, ``stale_signature``,
    ``bad_signature``, ``replayed_signature``. Answer it with 401; never say more."""

    reason = "bad_signature"


class SignatureGuard(Protocol):
    """What ``verify`` asks of a replay guard (``ReplayGuard``, or a wrapper of one)."""

    def first_use(self, timestamp: int, signature: str, now_s: float) -> bool: ...


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}."`` + ``body`` under ``secret``."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, timestamp: int, body: bytes) -> str:
    """The value of the ``Consent-Stream-Signature`` header: ``t=<ts>,v1=<hex>``."""
    return f"t={timestamp},{SIGNATURE_VERSION}={sign(secret, timestamp, body)}"


def _parse(header: str | None) -> tuple[int, list[str]]:
    if not header:
        raise SignatureError("no signature header", reason="missing_signature")
    if len(header) > _MAX_HEADER_CHARS:
        raise SignatureError("signature header too long", reason="malformed_signature")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(
                "signature header is not t=...,v1=...", reason="malformed_signature"
            )
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise SignatureError("bad timestamp in signature", reason="malformed_signature")
            timestamp = int(value)
        elif name == SIGNATURE_VERSION:
            signatures.append(value)
        # other schemes (v0, v2...) are ignored: a newer sender may add one
    if timestamp is None or not signatures:
        raise SignatureError("signature header needs t= and v1=", reason="malformed_signature")
    return timestamp, signatures


def verify(
    secrets: bytes | Iterable[bytes],
    header: str | None,
    body: bytes,
    *,
    now_s: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    guard: SignatureGuard | None = None,
) -> int:
    """Check a ``Consent-Stream-Signature`` header against ``body``; return its timestamp.

    ``secrets``: the partner's secret, or several during a rotation. Raises
    ``SignatureError`` for a missing, malformed, stale (outside ``tolerance_s`` either way),
    wrong or (with ``guard``) replayed signature."""
    timestamp, given = _parse(header)
    if abs(now_s - timestamp) > tolerance_s:
        raise SignatureError("signature timestamp outside the tolerance", reason="stale_signature")
    keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
    match: str | None = None
    for key in keys:
        expected = sign(key, timestamp, body)
        for candidate in given:
            if hmac.compare_digest(expected, candidate.strip().lower()):
                match = expected
    if match is None:
        raise SignatureError("signature does not match", reason="bad_signature")
    if guard is not None and not guard.first_use(timestamp, match, now_s):
        raise SignatureError("signature already used", reason="replayed_signature")
    return timestamp


class ReplayGuard:
    """Signatures accepted in the last ``window_s`` seconds: a second use is a replay.

    Bounded (``max_entries``, oldest dropped first); outside the window the timestamp check
    refuses a replay anyway. Thread-safe. One process's memory: several receivers behind a
    load balancer need a shared store (Redis ``SET NX EX``) for the same guarantee."""

    def __init__(self, window_s: int = DEFAULT_TOLERANCE_S, max_entries: int = 100_000) -> None:
        self._window_s = window_s
        self._max = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, timestamp: int, signature: str, now_s: float) -> bool:
        """Record ``signature``; False when it was recorded before (a replay)."""
        with self._lock:
            self._expire(now_s)
            if signature in self._seen:
                return False
            self._seen[signature] = timestamp + self._window_s
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return True

    def forget(self, signature: str) -> None:
        """Drop a recorded ``signature``: its request had no effect, it may come again."""
        with self._lock:
            self._seen.pop(signature, None)

    def _expire(self, now_s: float) -> None:
        # insertion order is close to timestamp order; stop at the first live entry
        while self._seen:
            signature, until = next(iter(self._seen.items()))
            if until >= now_s:
                return
            del self._seen[signature]

    def __len__(self) -> int:
        return len(self._seen)
