"""Who may post events: a bearer token of ``CONSENT_STREAM_GATEWAY_TOKENS`` names a caller
and the ``source`` values it may publish. Tokens are compared in constant time with every
configured token (``streams.api.auth.TokenCheck``); logs and metrics name the caller,
never the token."""

from __future__ import annotations

from collections.abc import Mapping

from schemas.secrets import Secret
from streams.api.auth import TokenCheck
from streams.gateway.settings import GatewayCaller

__all__ = ["Callers", "optional_token"]


class Callers:
    def __init__(self, callers: Mapping[str, GatewayCaller]) -> None:
        self._callers = dict(callers)
        self._check = TokenCheck({name: c.token for name, c in callers.items()})

    def __len__(self) -> int:
        return len(self._callers)

    def caller(self, authorization: str | None) -> GatewayCaller | None:
        """The caller an ``Authorization: Bearer ...`` header names, or None."""
        name = self._check.caller(authorization)
        return None if name is None else self._callers[name]


def optional_token(token: Secret | None, authorization: str | None) -> bool:
    """True when no ``token`` is configured or the header carries it (``/metrics``)."""
    return token is None or TokenCheck({"metrics": token}).caller(authorization) is not None
