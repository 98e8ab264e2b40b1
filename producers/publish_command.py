"""``consent-stream publish FILE|-``: JSON lines in, validated events out.

Each bad line is reported with its number and reason and not sent; progress goes to
stderr on large inputs; the exit status is 1 if any line was rejected or not delivered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from producers.publisher import ConsentPublisher, DeliveryReceipt
from schemas.errors import ConsentStreamError, PublishError
from schemas.jsonform import parse_event_line

__all__ = ["PublishReport", "publish_lines"]

_PROGRESS_EVERY_S = 1.0


@dataclass(slots=True)
class PublishReport:
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0 and self.failed == 0 and self.delivered == self.accepted


def publish_lines(
    lines: Iterable[str], publisher: ConsentPublisher, err: TextIO, *, progress: bool = True
) -> PublishReport:
    report = PublishReport()

    def delivered(receipt: DeliveryReceipt | None, error: PublishError | None) -> None:
        if error is not None:
            report.failed += 1
            report.errors.append(str(error))
            print(f"error: {error}", file=err)
        else:
            report.delivered += 1

    last = time.monotonic()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        report.read += 1
        try:
            publisher.publish_async(parse_event_line(line), delivered)
            report.accepted += 1
        except ConsentStreamError as exc:
            report.rejected += 1
            print(f"line {number}: rejected ({exc.reason}): {exc}", file=err)
        publisher.poll(0)
        if progress and time.monotonic() - last >= _PROGRESS_EVERY_S:
            last = time.monotonic()
            print(
                f"... {report.read} read, {report.delivered} delivered, {report.rejected} rejected",
                file=err,
            )
    left = publisher.flush(60.0)
    report.failed += left
    return report
