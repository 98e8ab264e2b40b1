"""Keyed digests: partner-scoped subject refs, evidence digests, deterministic ids.

A partner gets ``HMAC-SHA256(k_partner, subject_id)`` with ``k_partner`` derived from the
service's subject key, so refs differ per partner and cannot be joined across partners.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable
from typing import Final

from schemas.settings import Secret

__all__ = ["INSTRUCTION_NAMESPACE", "Pseudonyms", "instruction_id"]

INSTRUCTION_NAMESPACE: Final = uuid.UUID("0f9d6c1a-3b7e-4d52-8c11-7a2e5b9f4c03")


def instruction_id(*parts: str) -> str:
    """A deterministic UUID: the same cause always yields the same instruction id."""
    return str(uuid.uuid5(INSTRUCTION_NAMESPACE, "/".join(parts)))


class Pseudonyms:
    """Digests under the service's subject key (never logged; see ``Secret``)."""

    def __init__(self, key: Secret) -> None:
        self._key = key.reveal()
        self._partner_keys: dict[str, bytes] = {}

    def _mac(self, key: bytes, text: str) -> str:
        return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def partner_key(self, partner: str) -> bytes:
        key = self._partner_keys.get(partner)
        if key is None:
            key = hmac.new(self._key, f"partner:{partner}".encode(), hashlib.sha256).digest()
            self._partner_keys[partner] = key
        return key

    def subject_ref(self, partner: str, subject_id: str) -> str:
        """The partner-scoped pseudonymous subject reference."""
        return self._mac(self.partner_key(partner), subject_id)

    def evidence_digest(self, subject_id: str) -> str:
        """Digest of a subject id kept in deletion evidence (never the raw id)."""
        return self._mac(self._key, f"evidence:{subject_id}")

    def log_id(self, subject_id: str) -> str:
        """A short digest for log lines."""
        return self._mac(self._key, f"log:{subject_id}")[:12]

    def refs_digest(self, refs: Iterable[tuple[str, str]]) -> str:
        text = "\n".join(f"{k}={v}" for k, v in sorted(refs))
        return self._mac(self._key, f"refs:{text}")[:32] if text else ""
