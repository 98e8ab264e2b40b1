"""The service and the benchmark's no-op agent run their Faust apps the same way
(``streams.worker.faust_worker``), without the terminal spinner that would set the root
logger to DEBUG (every debug record of aiokafka then built: ~10 % of a worker's CPU)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from streams.worker import faust_worker


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def test_the_root_logger_keeps_the_level_asked_for(root_logger: logging.Logger) -> None:
    app = faust.App("test-faust-worker", autodiscover=False)
    worker = faust_worker(app, "warning")
    assert worker.spinner is None
    root_logger.setLevel(logging.WARNING)
    worker.on_setup_root_logger(root_logger, logging.WARNING)
    assert root_logger.level == logging.WARNING


def test_faust_own_worker_would_set_it_to_debug(root_logger: logging.Logger) -> None:
    """What ``faust_worker`` prevents (the bench's no-op agent ran this way before)."""
    app = faust.App("test-faust-worker-spinner", autodiscover=False)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    root_logger.setLevel(logging.WARNING)
    worker.on_setup_root_logger(root_logger, logging.WARNING)
    assert root_logger.level == logging.DEBUG
