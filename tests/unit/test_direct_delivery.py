"""streams.faust_glue.direct and the batches of messages it hands over, with mode's real
flow-control queue and event and a stand-in for the rest of the app (no Kafka): which
partitions get the direct handler, flow control, back-pressure, a full queue waited on,
generation checks and acknowledgement to the consumer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.faust_glue.batches import EventBatches, inbound
from streams.faust_glue.direct import Chunk, deliver_directly

EVENTS = TP("consent.events.v1", 0)
OTHER = TP("consent.other.v1", 0)


class Consumer:
    def __init__(self) -> None:
        self.full: list[TP] = []
        self.dropped: list[TP] = []
        self.acked: list[int] = []

    def on_buffer_full(self, tp: TP) -> None:
        self.full.append(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        self.dropped.append(tp)

    def ack(self, message: Message) -> bool:
        self.acked.append(message.offset)
        return True


class Channel:
    def __init__(self, queue: ThrowableQueue[Any]) -> None:
        self.queue = queue


class App:
    """What the handler and the batches read of a Faust app."""

    def __init__(self, maxsize: int = 100) -> None:
        self.consumer = Consumer()
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.sensors = SimpleNamespace(on_topic_buffer_full=lambda tp: None)
        self.consumer_generation_id = 1
        self.queue: ThrowableQueue[Any] = ThrowableQueue(
            maxsize, flow_control=self.flow_control, clear_on_resume=True
        )
        self.channel = Channel(self.queue)
        self.topics = SimpleNamespace(_build_handler=self.faust_handler, acking_topics=set())
        self.faust_built: list[TP] = []

    def faust_handler(self, tp: TP, channels: Any) -> Any:
        self.faust_built.append(tp)
        return "faust's handler"

    def stream(self) -> Any:
        async def maybe_start() -> None:
            pass

        async def ack(event: Any) -> bool:
            raise AssertionError("a message handed over directly is not a stream's event")

        return SimpleNamespace(app=self, channel=self.channel, maybe_start=maybe_start, ack=ack)


def message(offset: int, tp: TP = EVENTS, generation: int = 1) -> Message:
    headers = [("cs_published_at", b"1700000000000")]
    return Message(
        tp.topic, tp.partition, offset, 0.0, 0, headers, b"key", b"value", None,
        generation_id=generation,
    )  # fmt: skip


def direct_app(maxsize: int = 100) -> tuple[App, Any]:
    app = App(maxsize)
    deliver_directly(app, [EVENTS.topic])
    return app, app.topics._build_handler(EVENTS, {app.channel})


def test_only_the_named_topics_read_by_one_channel_are_handed_over_directly() -> None:
    app, handler = direct_app()
    assert handler != "faust's handler"
    assert app.topics._build_handler(OTHER, {app.channel}) == "faust's handler"
    two = {app.channel, Channel(app.queue)}
    assert app.topics._build_handler(EVENTS, two) == "faust's handler"
    assert app.faust_built == [OTHER, EVENTS]


def test_messages_go_into_the_queue_as_they_are_and_batches_ack_them_to_the_consumer() -> None:
    async def run() -> tuple[list[Any], Consumer]:
        app, handler = direct_app()
        for offset in range(3):
            await handler(message(offset))
        batches = EventBatches(app.stream(), max_records=10)
        batch = await batches.__anext__()
        await batches.ack(batch)
        return batch, app.consumer

    batch, consumer = asyncio.run(run())
    assert [m.offset for m in batch] == [0, 1, 2]
    assert all(isinstance(m, Message) for m in batch)
    assert [inbound(m).offset for m in batch] == [0, 1, 2]
    assert inbound(batch[0]).headers == {"cs_published_at": b"1700000000000"}
    assert consumer.acked == [0, 1, 2]


def test_a_message_of_an_earlier_generation_is_left_out() -> None:
    async def run() -> list[Any]:
        app, handler = direct_app()
        await handler(message(0, generation=0))
        await handler(message(1))
        return await EventBatches(app.stream(), max_records=10).__anext__()

    assert [m.offset for m in asyncio.run(run())] == [1]


def test_nothing_is_delivered_while_the_flow_is_suspended() -> None:
    async def run() -> tuple[int, int]:
        app, handler = direct_app()
        app.flow_control.suspend()
        delivery = asyncio.ensure_future(handler(message(0)))
        await asyncio.sleep(0.01)
        held = app.queue.qsize()
        app.flow_control.resume()
        await delivery
        return held, app.queue.qsize()

    assert asyncio.run(run()) == (0, 1)


def test_back_pressure_takes_the_partition_out_of_the_fetch_and_back() -> None:
    async def run() -> Consumer:
        app, handler = direct_app(maxsize=10)  # pressure high at 8, dropped at 4
        for offset in range(9):
            await handler(message(offset))
        assert app.consumer.full == [EVENTS]
        await EventBatches(app.stream(), max_records=6).__anext__()
        return app.consumer

    consumer = asyncio.run(run())
    assert consumer.dropped == [EVENTS]


def test_a_full_queue_is_waited_on_not_overrun() -> None:
    async def run() -> tuple[bool, int]:
        app, handler = direct_app(maxsize=2)
        await handler(message(0))
        await handler(message(1))
        third = asyncio.ensure_future(handler(message(2)))
        await asyncio.sleep(0.01)
        waiting = not third.done()
        app.queue.get_nowait()
        await third
        return waiting, app.queue.qsize()

    assert asyncio.run(run()) == (True, 2)


def test_a_chunk_is_one_item_in_the_queue_and_batches_take_its_records_in_order() -> None:
    async def run() -> tuple[int, list[list[int]], Consumer]:
        app, handler = direct_app()
        await handler(Chunk(EVENTS, [message(offset) for offset in range(7)]))
        await handler(message(7))
        held = app.queue.qsize()
        batches = EventBatches(app.stream(), max_records=5)
        taken = []
        for _ in range(2):
            batch = await batches.__anext__()
            await batches.ack(batch)
            taken.append([m.offset for m in batch])
        return held, taken, app.consumer

    held, taken, consumer = asyncio.run(run())
    assert held == 2
    # the chunk's records past the limit start the next batch, before what queued after it
    assert taken == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert consumer.acked == list(range(8))


def test_a_chunk_of_an_earlier_generation_is_left_out() -> None:
    async def run() -> list[Any]:
        app, handler = direct_app()
        await handler(Chunk(EVENTS, [message(0, generation=0), message(1, generation=0)]))
        await handler(Chunk(EVENTS, [message(2)]))
        return await EventBatches(app.stream(), max_records=10).__anext__()

    assert [m.offset for m in asyncio.run(run())] == [2]


def test_an_interrupt_wakes_a_wait_for_records_with_an_empty_batch() -> None:
    async def run() -> tuple[list[Any], list[int]]:
        app, handler = direct_app()
        batches = EventBatches(app.stream(), max_records=10)
        waiting = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # no record yet
        batches.interrupt()
        woken = await asyncio.wait_for(waiting, 1)
        await handler(message(0))
        return woken, [m.offset for m in await batches.__anext__()]

    assert asyncio.run(run()) == ([], [0])


def test_an_interrupt_with_no_one_waiting_is_the_next_batch_empty() -> None:
    async def run() -> list[list[int]]:
        app, handler = direct_app()
        batches = EventBatches(app.stream(), max_records=10)
        await handler(message(0))
        batches.interrupt()  # noted: the next batch is empty, before the queued records
        await handler(message(1))
        first = await batches.__anext__()
        second = await batches.__anext__()
        return [[m.offset for m in first], [m.offset for m in second]]

    assert asyncio.run(run()) == [[], [0, 1]]
