"""The ``consent-stream`` command. Settings and logging are configured here, once."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

from schemas.client_errors import EXIT_INTERRUPTED, exit_code, project_error
from schemas.errors import ConfigurationError
from schemas.policy import Policy, load_policy
from schemas.settings import Settings

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace, Settings, Policy], int]
_KAFKA_COMMANDS = frozenset(
    {
        "publish",
        "gateway",
        "worker",
        "replay",
        "rebuild-store",
        "remove-worker",
        "dead-letters",
        "partner",
        "webhook-bridge",
        "acl",
        "demo",
    }
)


def _publish(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from producers.publish_command import publish_lines
    from producers.publisher import ConsentPublisher

    try:
        stream: TextIO = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.file}: {exc.strerror}") from exc
    with stream, ConsentPublisher(settings, policy) as publisher:
        publisher.check_topic()
        report = publish_lines(stream, publisher, sys.stderr, progress=not args.quiet)
    print(
        f"published {report.delivered} of {report.read} events "
        f"({report.rejected} rejected, {report.failed} not delivered)"
    )
    return 0 if report.ok else 1


def _gateway(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.gateway import GatewaySettings, run_gateway

    return run_gateway(settings, GatewaySettings.from_env(), policy)


def _worker(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.worker import run_worker

    return run_worker(settings, policy, loglevel=str(args.log_level).lower())


def _check(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.commands import run_check

    return run_check(settings, policy, args.subject, args.purpose, sys.stdout)


def _status(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.commands import run_status

    return run_status(settings, args.request_id, sys.stdout)


def _report(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.commands import run_report

    return run_report(settings, args.request_id, args.json, sys.stdout)


def _replay(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.replay.command import run_replay

    return run_replay(settings, policy, args.partner, sys.stdout, args.timeout_s)


def _remove_worker(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.group_members import remove_workers

    removal = remove_workers(settings, args.names)
    for name, removed in removal.removed.items():
        outcome = "removed: its partitions go to the others now" if removed else "not in it"
        print(f"{name}: {outcome} (group {removal.group})")
    return 0 if all(removal.removed.values()) else 1


def _rebuild_store(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from consumers.store.rebuild import run_rebuild_store

    return run_rebuild_store(
        settings, policy, topic=settings.topics.state, timeout_s=args.timeout_s, out=sys.stdout
    )


def _dead_letters(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.deadletter.command import run_dead_letters

    return run_dead_letters(
        settings, args.reason, args.subject, args.republish, sys.stdout, args.timeout_s
    )


def _acl(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    from streams.acl.sync import run_acl_sync

    if args.acl_command != "sync":
        raise ConfigurationError(f"unknown acl command {args.acl_command!r}")
    return run_acl_sync(settings, policy, sys.stdout, dry_run=args.dry_run, prune=args.prune)


def _add_acl_command(sub: Any) -> None:
    acl = sub.add_parser("acl", help="Kafka ACLs from the policy (as the admin principal)")
    acl.add_argument("acl_command", choices=["sync"], help="sync: create the missing ACLs")
    acl.add_argument("--dry-run", action="store_true", help="only show the difference")
    acl.add_argument("--prune", action="store_true", help="also delete ACLs not in the policy")
    acl.set_defaults(handler=_acl, principal="admin")


_STORE_READERS: Final = frozenset({"check", "status", "report"})
"""Commands that only read the consent store: its ``reader`` user (``schemas.store_login``)."""


def _principal(args: argparse.Namespace) -> str:
    """The Kafka principal a command authenticates as (from the credentials file)."""
    if args.command == "partner":
        return f"partner-{args.name}"
    if args.command == "webhook-bridge":
        return f"partner-{args.partner}"  # it acts for the partner
    return str(getattr(args, "principal", "worker"))


def _add_commands(sub: Any) -> None:
    check = sub.add_parser("check", help="may SUBJECT be processed for PURPOSE? exit 0 yes, 1 no")
    check.add_argument("subject")
    check.add_argument("purpose")
    check.set_defaults(handler=_check)
    status = sub.add_parser("status", help="status of a deletion request")
    status.add_argument("request_id")
    status.set_defaults(handler=_status)
    report = sub.add_parser("report", help="evidence of a deletion request (no personal data)")
    report.add_argument("request_id")
    report.add_argument("--json", action="store_true", help="JSON instead of text")
    report.set_defaults(handler=_report)
    replay = sub.add_parser("replay", help="send the current consent state to a (new) partner")
    replay.add_argument("--partner", required=True)
    _add_read_timeout(replay, 600.0)
    replay.set_defaults(handler=_replay)
    remove = sub.add_parser(
        "remove-worker",
        help="named workers stopped for good leave the group now, not after the session timeout",
    )
    remove.add_argument(
        "names", nargs="+", metavar="NAME", help="a worker's CONSENT_STREAM_GROUP_INSTANCE_ID"
    )
    remove.set_defaults(handler=_remove_worker)
    rebuild = sub.add_parser("rebuild-store", help="rebuild the Redis store from consent.state.v1")
    _add_read_timeout(rebuild, 600.0)
    rebuild.set_defaults(handler=_rebuild_store)
    dead = sub.add_parser(
        "dead-letters", help="list the dead-letter topic's records (JSON lines), or publish again"
    )
    dead.add_argument("--reason", action="append", default=[], help="only this reason (repeat)")
    dead.add_argument("--subject", default=None, help="only this subject's records")
    dead.add_argument(
        "--republish", action="store_true", help="publish them to the events topic again"
    )
    _add_read_timeout(dead, 60.0)
    dead.set_defaults(handler=_dead_letters, principal="admin")
    from streams.cli_partners import add_partner_commands

    add_partner_commands(sub)
    _add_acl_command(sub)
    from streams.demo.command import add_demo_command

    add_demo_command(sub)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _add_read_timeout(command: argparse.ArgumentParser, default: float) -> None:
    """``--timeout-s``: how long a command may read its topic to the end before it gives up
    (exit 1, and nothing sent or applied past what it reports)."""
    command.add_argument(
        "--timeout-s",
        type=_seconds,
        default=default,
        help="give up reading the topic to its end after this long (%(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consent-stream", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    publish = sub.add_parser("publish", help="publish events from JSON lines (FILE or - for stdin)")
    publish.add_argument("file")
    publish.add_argument("--quiet", action="store_true", help="no progress lines")
    publish.set_defaults(handler=_publish, principal="publisher")
    gateway = sub.add_parser(
        "gateway", help="HTTP gateway: POST /v1/events, JSON events to consent.events.v1"
    )
    gateway.set_defaults(handler=_gateway, principal="gateway")
    worker = sub.add_parser("worker", help="run a stream worker (Faust) with its HTTP API")
    worker.set_defaults(handler=_worker)
    _add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from streams.api.access_log import redact_malformed_requests

    redact_malformed_requests()
    try:
        store_role = "reader" if args.command in _STORE_READERS else None
        settings = Settings.from_env().as_principal(_principal(args), store_role)
        policy = load_policy(settings.policy_path)
        if args.command in _KAFKA_COMMANDS:
            from schemas.kafka_access import check_access

            check_access(settings)
        handler: Command = args.handler
        return handler(args, settings, policy)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # operational errors: one line and an exit code, no traceback
        error = project_error(exc)
        if error is None:
            raise
        message = " ".join(str(error).split())
        print(f"consent-stream: {error.reason}: {message}", file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
