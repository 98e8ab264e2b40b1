"""Keyed digests: partner-scoped subject refs, evidence digests, deterministic ids.

A partner gets ``HMAC-SHA256(k_partner, subject_id)`` with ``k_partner`` derived from the
service's subject key, so refs differ per partner and cannot be joined across partners.

Refs and digests carry the id of the key that made them: ``<key id>:<hex>``. New ones are
made with the current key; ``matches``, ``verify_evidence`` and ``verify_refs_digest``
accept a value made with any accepted key (``SubjectKeys``), and take a value without a
key id (made before key ids existed) as made with the key of ``SubjectKeys.legacy_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterable
from typing import Final

from schemas.subject_keys import KEY_ID_SEPARATOR, SubjectKeys

__all__ = ["INSTRUCTION_NAMESPACE", "Pseudonyms", "instruction_id"]

INSTRUCTION_NAMESPACE: Final = uuid.UUID("0f9d6c1a-3b7e-4d52-8c11-7a2e5b9f4c03")
_NAMESPACE_BYTES: Final = INSTRUCTION_NAMESPACE.bytes
_REFS_HEX: Final = 32
_Expected = Callable[[bytes, str], str]  # (key, key id) -> the digest expected under it


def instruction_id(*parts: str) -> str:
    """A deterministic UUID: the same cause always yields the same instruction id."""
    # uuid.uuid5 without the UUID object (called for every instruction): SHA-1 of the
    # namespace and the name, version 5 and the RFC 4122 variant set, canonical text
    name = _NAMESPACE_BYTES + "/".join(parts).encode()
    digest = bytearray(hashlib.sha1(name, usedforsecurity=False).digest()[:16])  # as uuid5
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def _refs_text(refs: Iterable[tuple[str, str]]) -> str:
    return "\n".join(f"{k}={v}" for k, v in sorted(refs))


class Pseudonyms:
    """Digests under the service's subject keys (never logged; see ``Secret``).

    Verification raises ``UnknownSubjectKeyError`` for a value whose key id is not
    configured (rather than answering "no match" for a key that was removed too early); a
    value that is not of the form at all simply does not match.
    """

    def __init__(self, keys: SubjectKeys) -> None:
        self.keys = keys
        self.key_id = keys.current_id
        self._keys = {key_id: secret.reveal() for key_id, secret in keys.items()}
        self._key = self._keys[self.key_id]
        self._partner_keys: dict[tuple[str, str], bytes] = {}

    def _secret(self, key_id: str) -> bytes:
        key = self._keys.get(key_id)
        return key if key is not None else self.keys.key(key_id).reveal()  # raises

    def _tag(self, digest: str) -> str:
        return f"{self.key_id}{KEY_ID_SEPARATOR}{digest}"

    def partner_key(self, partner: str, key_id: str | None = None) -> bytes:
        """``k_partner`` under the key of ``key_id`` (the current key by default)."""
        key_id = self.key_id if key_id is None else key_id
        key = self._partner_keys.get((key_id, partner))
        if key is None:
            secret = self._secret(key_id)
            key = hmac.new(secret, f"partner:{partner}".encode(), hashlib.sha256).digest()
            self._partner_keys[(key_id, partner)] = key
        return key

    def subject_ref(self, partner: str, subject_id: str) -> str:
        """The partner-scoped pseudonymous subject reference, ``<key id>:<64 hex>``."""
        return self._tag(_mac(self.partner_key(partner), subject_id))

    def evidence_digest(self, subject_id: str) -> str:
        """Digest of a subject id kept in deletion evidence (never the raw id),
        ``<key id>:<64 hex>``."""
        return self._tag(_mac(self._key, f"evidence:{subject_id}"))

    def log_id(self, subject_id: str) -> str:
        """A short digest for log lines (current key, no key id: never stored or compared)."""
        return _mac(self._key, f"log:{subject_id}")[:12]

    def refs_digest(self, refs: Iterable[tuple[str, str]]) -> str:
        """Digest of a partner's references, ``<key id>:<32 hex>``; "" for no references."""
        text = _refs_text(refs)
        return self._tag(_mac(self._key, f"refs:{text}")[:_REFS_HEX]) if text else ""

    def key_id_of(self, value: str) -> str | None:
        """The key id a ref or digest was made with (the legacy id for one without), or
        None when ``value`` is not of the form ``[<key id>:]<hex>``."""
        parts = self.keys.split(value)
        return None if parts is None else parts[0]

    def _check(self, value: str, expected: _Expected) -> bool:
        parts = self.keys.split(value)
        if parts is None:
            return False
        key_id, digest = parts
        return hmac.compare_digest(digest, expected(self._secret(key_id), key_id))

    def matches(self, partner: str, subject_id: str, ref: str) -> bool:
        """Whether ``ref`` is ``partner``'s ref of ``subject_id``, made with any accepted
        key (the one its key id names)."""
        return self._check(
            ref, lambda _secret, key_id: _mac(self.partner_key(partner, key_id), subject_id)
        )

    def verify_evidence(self, subject_id: str, digest: str) -> bool:
        """Whether ``digest`` is the evidence digest of ``subject_id`` under any accepted key."""
        return self._check(digest, lambda secret, _id: _mac(secret, f"evidence:{subject_id}"))

    def verify_refs_digest(self, refs: Iterable[tuple[str, str]], digest: str) -> bool:
        """Whether ``digest`` is the digest of ``refs`` under any accepted key."""
        text = _refs_text(refs)
        if not text:
            return digest == ""
        return self._check(digest, lambda secret, _id: _mac(secret, f"refs:{text}")[:_REFS_HEX])
