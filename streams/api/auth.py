"""Who may call the worker's HTTP API: bearer tokens, each with a name.

Every endpoint that serves personal data (``/consent/...``, ``/requests/...`` and any added
later) needs ``Authorization: Bearer <token>`` with one of the tokens of
``CONSENT_STREAM_HTTP_TOKENS`` (``name=token,name=token``, ``schemas.settings``); ``/metrics`` needs
``CONSENT_STREAM_METRICS_TOKEN`` when one is set; ``/healthz`` is open. A token is compared
with every configured token in constant time (``hmac.compare_digest``), so neither the
time taken nor the order of the list tells which one came close. The access log names the
caller by the token's name and the route by its template (never a token, never a raw
subject id).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from schemas.settings import Secret

__all__ = ["TokenCheck", "guarded"]

access_log = logging.getLogger("streams.http.access")

_BEARER: Final = "bearer "

View = Callable[..., Awaitable[Any]]


class TokenCheck:
    """The caller's name for an ``Authorization`` header, or None."""

    def __init__(self, tokens: Mapping[str, Secret]) -> None:
        self._tokens = [(name, token.reveal()) for name, token in tokens.items()]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def caller(self, header: str | None) -> str | None:
        if not header or header[: len(_BEARER)].lower() != _BEARER:
            return None
        offered = header[len(_BEARER) :].strip().encode("utf-8")
        found = None
        for name, token in self._tokens:  # every token compared: no early exit
            if hmac.compare_digest(offered, token) and found is None:
                found = name
        return found


def guarded(
    check: TokenCheck, route: str, view: View, *, open_without_tokens: bool = False
) -> View:
    """``view`` behind ``check``: 401 (with ``WWW-Authenticate: Bearer``) without a known
    token. ``open_without_tokens``: the endpoint is open while no token is configured
    (``/metrics`` without a metrics token)."""

    async def handler(web: Any, request: Any, **kwargs: Any) -> Any:
        if open_without_tokens and not check:
            return await view(web, request, **kwargs)
        caller = check.caller(request.headers.get("Authorization"))
        if caller is None:
            access_log.info("%s %s 401 (no valid token)", request.method, route)
            return web.json(
                {"error": "a valid bearer token is required", "status": 401},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="consent-stream"'},
            )
        response = await view(web, request, **kwargs)
        access_log.info("%s %s %s by %s", request.method, route, response.status, caller)
        return response

    handler.__name__ = getattr(view, "__name__", "view")
    return handler
