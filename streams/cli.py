"""The ``consent-stream`` command. Settings and logging are configured here, once."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from schemas.errors import ConsentStreamError
from schemas.policy import Policy, load_policy
from schemas.settings import Settings

__all__ = ["main"]

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Settings, Policy], int]


def _publish(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from producers.publish_command import publish_lines
    from producers.publisher import ConsentPublisher

    stream: TextIO = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with stream, ConsentPublisher(settings, policy) as publisher:
        report = publish_lines(stream, publisher, sys.stderr, progress=not args.quiet)
    print(
        f"published {report.delivered} of {report.read} events "
        f"({report.rejected} rejected, {report.failed} not delivered)"
    )
    return 0 if report.ok else 1


def _worker(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.worker import run_worker

    return run_worker(settings, policy, loglevel=str(args.log_level).lower())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consent-stream", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    publish = sub.add_parser("publish", help="publish events from JSON lines (FILE or - for stdin)")
    publish.add_argument("file")
    publish.add_argument("--quiet", action="store_true", help="no progress lines")
    publish.set_defaults(handler=_publish)
    worker = sub.add_parser("worker", help="run a stream worker (Faust) with its HTTP API")
    worker.set_defaults(handler=_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
        policy = load_policy(settings.policy_path)
        handler: Command = args.handler
        return handler(args, settings, policy)
    except ConsentStreamError as exc:
        print(f"consent-stream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
