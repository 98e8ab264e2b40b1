"""Webhook signatures: ``t=<unix s>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``,
verified in constant time within a tolerance window, replays refused."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import subprocess

import pytest

from schemas.errors import ContractError
from schemas.webhook_signing import (
    DEFAULT_TOLERANCE_S,
    SIGNATURE_HEADER,
    ReplayGuard,
    SignatureError,
    sign,
    signature_header,
    verify,
)

SECRET = b"whsec-logistics-0123456789"
BODY = b'{"instruction_id":"7f1c0f1e-6f0e-4a55-9d43-2d1c2b1e0a99","action":"ERASE"}'
T = 1_717_171_717
# the worked example of docs/webhooks.md (also checked with openssl below)
DOC_SECRET = b"whsec-demo-0123456789abcdef"
DOC_BODY = b'{"hello":"partner"}'
DOC_T = 1700000000
DOC_SIGNATURE = "83ea0dff4e764d6b47326349dfd635903331f8e339355376212fb89b1f5b6303"


def test_the_header_format() -> None:
    assert SIGNATURE_HEADER == "Consent-Stream-Signature"
    header = signature_header(SECRET, T, BODY)
    expected = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"
    assert sign(SECRET, T, BODY) == expected


def test_the_documented_example() -> None:
    assert sign(DOC_SECRET, DOC_T, DOC_BODY) == DOC_SIGNATURE


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl here")
def test_openssl_computes_the_same_signature() -> None:
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", DOC_SECRET.decode()],
        input=f"{DOC_T}.".encode() + DOC_BODY,
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout.decode()
    assert out.strip().split()[-1] == DOC_SIGNATURE


def test_a_good_signature_is_accepted_and_returns_its_time() -> None:
    header = signature_header(SECRET, T, BODY)
    assert verify(SECRET, header, BODY, now_s=T + 10) == T
    assert verify(SECRET, header, BODY, now_s=T - 10) == T  # a sender's clock a little ahead
    assert verify(SECRET, header, BODY, now_s=T + DEFAULT_TOLERANCE_S) == T


def test_any_of_the_secrets_during_a_rotation() -> None:
    header = signature_header(SECRET, T, BODY)
    assert verify([b"old-secret-0123456789", SECRET], header, BODY, now_s=T) == T
    two = f"t={T},v1={sign(b'other-0123456789abc', T, BODY)},v1={sign(SECRET, T, BODY)}"
    assert verify(SECRET, two, BODY, now_s=T) == T


def test_unknown_schemes_are_ignored() -> None:
    header = f"t={T},v0=abc,v1={sign(SECRET, T, BODY)}"
    assert verify(SECRET, header, BODY, now_s=T) == T


def _refused(header: str | None, reason: str, *, body: bytes = BODY, now: float = T) -> None:
    with pytest.raises(SignatureError) as err:
        verify(SECRET, header, body, now_s=now)
    assert err.value.reason == reason
    assert isinstance(err.value, ContractError)
    assert SECRET.decode() not in str(err.value)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("garbage", "malformed_signature"),
        (f"t={T}", "malformed_signature"),
        ("v1=abcd", "malformed_signature"),
        (f"t=-{T},v1=ab", "malformed_signature"),
        (f"t={T}.5,v1=ab", "malformed_signature"),
        (f"t={T},t={T},v1=ab", "malformed_signature"),
        ("t=1," + "v1=" + "a" * 2000, "malformed_signature"),
        (f"t={T},v1={'0' * 64}", "bad_signature"),
    ],
)
def test_malformed_and_forged_headers_are_refused(header: str | None, reason: str) -> None:
    _refused(header, reason)


def test_another_body_or_secret_or_time_does_not_match() -> None:
    header = signature_header(SECRET, T, BODY)
    _refused(header, "bad_signature", body=BODY + b" ")
    _refused(signature_header(b"not-the-secret-0123", T, BODY), "bad_signature")
    forged_time = header.replace(f"t={T}", f"t={T + 1}")
    _refused(forged_time, "bad_signature")


def test_outside_the_tolerance_is_stale() -> None:
    header = signature_header(SECRET, T, BODY)
    _refused(header, "stale_signature", now=T + DEFAULT_TOLERANCE_S + 1)
    _refused(header, "stale_signature", now=T - DEFAULT_TOLERANCE_S - 1)
    with pytest.raises(SignatureError):
        verify(SECRET, header, BODY, now_s=T + 31, tolerance_s=30)


def test_a_replay_inside_the_window_is_refused_with_a_guard() -> None:
    guard = ReplayGuard()
    header = signature_header(SECRET, T, BODY)
    assert verify(SECRET, header, BODY, now_s=T, guard=guard) == T
    with pytest.raises(SignatureError) as err:
        verify(SECRET, header, BODY, now_s=T + 5, guard=guard)
    assert err.value.reason == "replayed_signature"
    # a new signature of the same body (a legitimate retry) is accepted
    again = signature_header(SECRET, T + 1, BODY)
    assert verify(SECRET, again, BODY, now_s=T + 5, guard=guard) == T + 1


def test_a_forgotten_signature_may_come_again_once() -> None:
    guard = ReplayGuard()
    header = signature_header(SECRET, T, BODY)
    verify(SECRET, header, BODY, now_s=T, guard=guard)
    guard.forget(sign(SECRET, T, BODY))  # the receiver could not act on it
    assert verify(SECRET, header, BODY, now_s=T + 1, guard=guard) == T
    with pytest.raises(SignatureError):
        verify(SECRET, header, BODY, now_s=T + 2, guard=guard)
    guard.forget("never-seen")  # harmless
    assert len(guard) == 1


def test_the_guard_forgets_what_the_window_refuses_anyway() -> None:
    guard = ReplayGuard(window_s=300, max_entries=3)
    assert guard.first_use(T, "a", T)
    assert not guard.first_use(T, "a", T + 300)
    assert guard.first_use(T + 1, "b", T + 1)
    assert len(guard) == 2
    assert guard.first_use(T + 400, "c", T + 400)  # "a" and "b" expired
    assert len(guard) == 1
    for name in "defg":
        guard.first_use(T + 400, name, T + 400)
    assert len(guard) == 3  # bounded
