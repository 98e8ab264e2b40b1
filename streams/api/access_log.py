"""No raw request line in the logs: aiohttp's server logs a malformed request (an
over-long URL or header, a bad request line: ``BadHttpMessage``) at ERROR with a
traceback whose message holds the request's first bytes, and the worker's URLs hold
subject ids (``/consent/<subject>``). Installed once, where logging is configured
(``streams.cli``), for every aiohttp server of the command (the worker's HTTP API, the
gateway): such a record keeps who sent it and why it was refused, without the bytes or the
traceback, at WARNING. Other errors of the server are logged as aiohttp logs them.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp.http_exceptions import BadHttpMessage

__all__ = ["SERVER_LOGGER", "MalformedRequests", "redact_malformed_requests"]

SERVER_LOGGER: Final = "aiohttp.server"


class MalformedRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            said = record.getMessage()  # "Error handling request from <peer>"
            record.msg = "%s: refused as malformed (%d, %s; the request is not logged)"
            record.args = (said, exc.code, type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def redact_malformed_requests() -> None:
    """Install the filter on aiohttp's server logger (once: a second call adds nothing)."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequests) for f in logger.filters):
        logger.addFilter(MalformedRequests())
