"""``producers.sending.CountedSends``: a full local queue is waited out, and every
delivery report is counted (a refused record is a failure with its reason)."""

from __future__ import annotations

from fake_producer import QueueProducer

from producers.sending import CountedSends


def test_more_records_than_the_local_queue_holds_are_all_sent() -> None:
    producer = QueueProducer(capacity=3)
    sends = CountedSends(producer)

    for n in range(10):
        sends.send("t", str(n).encode(), b"v")

    assert producer.queue_full > 0  # the queue filled, and was waited out
    assert sends.settle(1.0)
    assert (sends.sent, sends.delivered, sends.failed, sends.pending) == (10, 10, 0, 0)
    assert [key for _, key, _ in producer.log if key is not None] == [b"%d" % n for n in range(10)]


def test_a_refused_record_is_a_failure_with_its_reason() -> None:
    producer = QueueProducer(refused=frozenset({"denied"}))
    sends = CountedSends(producer)
    sends.send("ok", b"a", b"v")
    sends.send("denied", b"b", b"v")

    assert not sends.settle(1.0)
    assert (sends.delivered, sends.failed) == (1, 1)
    assert sends.summary() == "1 delivered, 1 failed (denied: Broker: Topic authorization failed)"


def test_records_not_acknowledged_within_the_timeout_are_pending() -> None:
    sends = CountedSends(QueueProducer(deliver_on_flush=False))
    sends.send("t", None, b"v")

    assert not sends.settle(0.01)
    assert sends.pending == 1
    assert sends.summary() == "0 delivered, 1 not acknowledged"
