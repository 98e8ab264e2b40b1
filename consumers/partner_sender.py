"""Sends acknowledgements and waits until the broker has them (acks=all, idempotent).

``ack_record`` is the one definition of an ack's Kafka record (key ``ack_key``, Avro
value, CloudEvents headers), which the partner SDK and the webhook bridge (both through
``AckSender``) produce.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consumers.dedup import SentAck
from consumers.partner_clients import KafkaProducer
from consumers.partner_delivery import ack_headers
from consumers.partner_metrics import PartnerMetrics
from schemas.cloudevents import Headers
from schemas.serde import AvroSerde

__all__ = ["AckRecord", "AckSender", "PendingAck", "ack_record"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingAck:
    """One ack to send: keyed by the instruction's ack_key, subject = its subject_ref."""

    sent: SentAck
    ack_key: str
    subject_ref: str
    delivered: bool = False
    error: str | None = None


AckRecord = tuple[bytes, bytes, Headers]
"""(key, value, headers) of an ack's record."""


def ack_record(
    item: PendingAck, serde: AvroSerde, *, topic: str, data_schema: str, published_at_ms: int
) -> AckRecord:
    """The record of ``item`` on ``topic`` (``partner.<p>.acks.v1``): keyed by its
    ``ack_key``, the Avro acknowledgement, CloudEvents headers with its ``ce_id``."""
    value = serde.encode(item.sent.ack, topic)
    headers = ack_headers(
        item.sent.ack,
        ce_id=item.sent.ce_id,
        subject_ref=item.subject_ref,
        data_schema=data_schema,
        published_at_ms=published_at_ms,
    )
    return item.ack_key.encode("utf-8"), value, headers


class AckSender:
    """Produces acks and polls until every delivery callback reported success.

    A refused ack is sent again (same bytes, same ce_id) until it is delivered or the stop
    event is set; then whatever the producer still holds gets ``grace_s`` to flush. Acks
    that are not delivered are left ``delivered=False``: their instructions are not committed.
    """

    def __init__(
        self,
        producer: KafkaProducer,
        serde: AvroSerde,
        *,
        topic: str,
        partner: str,
        data_schema: str,
        metrics: PartnerMetrics,
        now_ms: Callable[[], int],
        retry_wait_s: float,
        grace_s: float = 10.0,
    ) -> None:
        self._producer = producer
        self._serde = serde
        self._topic = topic
        self._partner = partner
        self._data_schema = data_schema
        self._metrics = metrics
        self._now_ms = now_ms
        self._retry_wait_s = retry_wait_s
        self._grace_s = grace_s

    def send_all(self, pending: list[PendingAck], stop: threading.Event) -> None:
        for item in pending:
            self._produce(item)
        while not all(item.delivered for item in pending):
            self._producer.poll(0.05)
            for item in pending:
                if item.error is not None:
                    self._retry(item, stop)
            if stop.is_set():
                self._producer.flush(self._grace_s)
                return

    def _retry(self, item: PendingAck, stop: threading.Event) -> None:
        self._metrics.ack_delivery_failures.labels(self._partner).inc()
        log.warning(
            "ack for instruction %s not accepted by the broker (%s); sending again",
            item.sent.ack.instruction_id,
            item.error,
        )
        item.error = None
        if not stop.wait(self._retry_wait_s):
            self._produce(item)

    def _produce(self, item: PendingAck) -> None:
        key, value, headers = ack_record(
            item,
            self._serde,
            topic=self._topic,
            data_schema=self._data_schema,
            published_at_ms=self._now_ms(),
        )

        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                item.delivered = True
            else:
                item.error = str(err)

        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=value,
                    key=key,
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve callbacks, then retry
