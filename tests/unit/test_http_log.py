"""aiohttp's log of a malformed request keeps who sent it and why, not its bytes (the
worker's URLs hold subject ids)."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import LineTooLong

from streams.api.access_log import SERVER_LOGGER, redact_malformed_requests


def test_a_malformed_request_is_logged_without_its_bytes_or_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redact_malformed_requests()
    redact_malformed_requests()  # installed once
    subject = "buyer-77@example.com"
    exc = LineTooLong(f"/consent/{subject}".encode(), 8190)

    with caplog.at_level(logging.DEBUG, logger=SERVER_LOGGER):
        logging.getLogger(SERVER_LOGGER).error(
            "Error handling request from %s", "127.0.0.1", exc_info=exc
        )
        logging.getLogger(SERVER_LOGGER).error("Error handling request", exc_info=ValueError("x"))

    malformed, other = caplog.records
    assert malformed.levelname == "WARNING" and malformed.exc_info is None
    assert malformed.getMessage() == (
        "Error handling request from 127.0.0.1: refused as malformed "
        "(400, LineTooLong; the request is not logged)"
    )
    assert subject not in caplog.text
    assert other.levelname == "ERROR" and other.exc_info is not None  # left as it was
    assert len(logging.getLogger(SERVER_LOGGER).filters) == 1
