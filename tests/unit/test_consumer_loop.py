"""aiokafka's consumer runs on the worker's loop: calls into it are plain awaits in the
caller's thread, and starting or stopping it starts no thread. Nothing here connects."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from schemas.errors import ConfigurationError, MembershipError
from schemas.settings import ENV_PREFIX, Settings
from streams.app import create_app
from streams.faust_glue.consumer_loop import (
    InLoopConsumerThread,
    fetch_config_of,
    watch_membership,
)
from streams.faust_glue.transport import RedeliveringConsumer


def _consumer_thread(tmp_path: Path, fetch_client: str = "librdkafka") -> InLoopConsumerThread:
    app = create_app(Settings(data_dir=str(tmp_path), fetch_client=fetch_client))
    consumer = app.consumer
    assert isinstance(consumer, RedeliveringConsumer)
    made = consumer._thread
    assert isinstance(made, InLoopConsumerThread)
    return made


def test_the_consumer_runs_on_the_apps_loop(tmp_path: Path) -> None:
    made = _consumer_thread(tmp_path)
    assert isinstance(made, AIOKafkaConsumerThread)  # Faust's own consumer logic
    assert made.thread_loop is made.parent_loop


def test_calls_run_in_the_callers_thread(tmp_path: Path) -> None:
    made = _consumer_thread(tmp_path)
    seen: list[Any] = []

    def sync_call(x: int) -> int:
        seen.append(threading.current_thread())
        return x + 1

    async def async_call(x: int, *, y: int) -> int:
        seen.append(threading.current_thread())
        return x * y

    async def scenario() -> tuple[int, int]:
        first = await made.call_thread(sync_call, 1)
        second = await made.call_thread(async_call, 3, y=4)
        await made.cast_thread(sync_call, 0)
        return first, second

    assert asyncio.run(scenario()) == (2, 12)
    assert seen == [threading.main_thread()] * 3


def test_the_worker_fetches_with_librdkafka_unless_told_otherwise(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), app_id="worker-group", client_id="w")
    config = fetch_config_of(create_app(settings))
    assert config is not None
    assert (config["group.id"], config["client.id"]) == ("worker-group", "w-fetch")
    assert config["enable.auto.commit"] is False  # Faust commits
    aiokafka_only = create_app(Settings(data_dir=str(tmp_path), fetch_client="aiokafka"))
    assert fetch_config_of(aiokafka_only) is None


def test_start_and_stop_start_no_thread(tmp_path: Path) -> None:
    """With aiokafka fetching; with librdkafka, its fetch thread is the one thread."""
    made = _consumer_thread(tmp_path, fetch_client="aiokafka")
    stopped: list[bool] = []

    async def on_start() -> None:  # instead of connecting to a broker
        return None

    async def on_thread_stop() -> None:
        stopped.append(True)

    made.on_start = on_start  # type: ignore[method-assign]
    made.on_thread_stop = on_thread_stop  # type: ignore[method-assign]
    before = threading.active_count()

    async def scenario() -> tuple[bool, int]:
        await asyncio.wait_for(made.start(), 10)
        running = made._started.is_set() and threading.active_count() == before
        await asyncio.wait_for(made.stop(), 10)
        await asyncio.wait_for(made.stop(), 10)  # a second stop is a no-op
        return running, threading.active_count()

    # the service's events belong to the app's loop
    running, after = made.parent_loop.run_until_complete(scenario())
    assert running
    assert after == before
    assert stopped == [True]
    assert made._shutdown.is_set()


def test_the_fetch_client_is_read_from_the_environment() -> None:
    dev = {ENV_PREFIX + "DEV_MODE": "1"}
    assert Settings.from_env(dev).fetch_client == "librdkafka"
    env = {**dev, ENV_PREFIX + "FETCH_CLIENT": "AIOKafka "}
    assert Settings.from_env(env).fetch_client == "aiokafka"
    with pytest.raises(ConfigurationError, match="FETCH_CLIENT must be one of"):
        Settings.from_env({**dev, ENV_PREFIX + "FETCH_CLIENT": "kafka-python"})


class _App:
    """What ``watch_membership`` uses of the Faust app."""

    def __init__(self) -> None:
        self.should_stop = False
        self.crashed: list[BaseException] = []

    async def crash(self, reason: BaseException) -> None:
        self.crashed.append(reason)


async def _coordination(outcome: BaseException | None, app: _App) -> None:
    async def routine() -> None:
        await asyncio.sleep(0)
        if outcome is not None:
            raise outcome

    coordinator = type("Coordinator", (), {})()
    coordinator._coordination_task = asyncio.ensure_future(routine())
    consumer = type("Consumer", (), {"_coordinator": coordinator})()
    watch_membership(consumer, app)
    task = coordinator._coordination_task
    with contextlib.suppress(BaseException):
        await task
    if outcome is None:
        task.cancel()
    for _ in range(3):
        await asyncio.sleep(0)


def test_the_worker_crashes_when_its_group_coordination_dies() -> None:
    """aiokafka leaves a consumer whose coordination routine failed in no group, silently
    (seen with a second worker of the same group instance id): the app crashes instead,
    which stops the worker with exit code 1."""
    app = _App()
    asyncio.run(_coordination(KafkaError("Unexpected error during coordination"), app))
    [reason] = app.crashed
    assert isinstance(reason, MembershipError)
    assert "group membership ended" in str(reason) and "Unexpected error" in str(reason)


@pytest.mark.parametrize("how", ["cancelled", "stopping"])
def test_a_stopping_worker_or_a_cancelled_coordination_is_no_crash(how: str) -> None:
    app = _App()
    if how == "stopping":
        app.should_stop = True
        asyncio.run(_coordination(KafkaError("connection closed"), app))
    else:
        asyncio.run(_coordination(None, app))
    assert app.crashed == []
