"""``consent-stream demo``: the main job on the local stack (what ``make run`` runs).

Under a fresh namespace (topics, Faust app id, Redis prefix), it starts the workers and
one simulated partner per partner of the policy as child processes, publishes a realistic
workload built from the policy at a given rate while printing a progress line every
second, waits until every deletion request of the workload has a final status, prints a
summary (events, instructions and acknowledgements per partner, requests by status,
latency per hop from the workers' histograms) and stops its children by pid.
Exit status: 0 only when every request reached a final status, every event was delivered
and processed, and no child died; 1 otherwise (with the reason); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from schemas.policy import Policy
from schemas.settings import Settings
from streams.demo.options import DemoOptions
from streams.demo.processes import Children
from streams.demo.run import DemoRun
from streams.demo.webhook import with_webhook_partners
from streams.demo.workload import WorkloadSpec, build_workload
from streams.namespace import remove_namespace

__all__ = ["add_demo_command", "default_namespace", "run_demo"]

log = logging.getLogger(__name__)

DEMO_DIR = Path(".stack") / "demo"


def default_namespace() -> str:
    """``demo<UTC timestamp>-<pid>``: each run starts from empty topics and keys."""
    return f"demo{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{os.getpid()}"


def demo_settings(settings: Settings, namespace: str) -> Settings:
    return replace(
        settings,
        topic_namespace=namespace,
        app_id=f"consent-stream-{namespace}",
        redis_prefix=namespace,
    )


def _check(options: DemoOptions) -> str | None:
    if options.subjects < 1:
        return "--subjects must be at least 1"
    if options.rate < 0:
        return "--rate must be 0 (as fast as possible) or positive"
    if options.workers < 1:
        return "--workers must be at least 1"
    if not 0 <= options.partner_failure_rate <= 1:
        return "--partner-failure-rate must be between 0 and 1"
    if not 0 <= options.closure_fraction <= 1:
        return "--closure-fraction must be between 0 and 1"
    if not 0 <= options.via_gateway <= 1:
        return "--via-gateway must be between 0 and 1"
    if not 0 <= options.webhook_failure_rate <= 1:
        return "--webhook-failure-rate must be between 0 and 1"
    if not 0 <= options.webhook_callback_fraction <= 1:
        return "--webhook-callback-fraction must be between 0 and 1"
    return None


def run_demo(options: DemoOptions, settings: Settings, policy: Policy, out: TextIO) -> int:
    invalid = _check(options)
    if invalid is not None:
        print(f"consent-stream demo: {invalid}", file=sys.stderr)
        return 2
    unknown = sorted(set(options.webhook_partners) - set(policy.partners))
    if unknown:
        print(
            f"consent-stream demo: --webhook-partners: {unknown[0]!r} is not in the policy",
            file=sys.stderr,
        )
        return 2
    namespace = options.namespace or default_namespace()
    scoped = demo_settings(settings, namespace)
    base_dir = DEMO_DIR / namespace
    urls: dict[str, str] = {}
    if options.webhook_partners:
        scoped, policy, urls = with_webhook_partners(scoped, options.webhook_partners, base_dir)
    spec = WorkloadSpec(
        options.subjects, options.seed, int(time.time() * 1000), options.closure_fraction
    )
    workload = build_workload(policy, spec)
    children = Children(Path.cwd())
    run = DemoRun(options, scoped, policy, workload, children, base_dir, out, urls)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        code = run.execute()
        if options.keep_running and not children.dead():
            run.keep_running()
        return code
    finally:
        children.stop_all()
        run.close()
        signal.signal(signal.SIGTERM, previous)
        if options.namespace is None and not options.keep_data:
            _remove(scoped, policy, out)


def _remove(settings: Settings, policy: Policy, out: TextIO) -> None:
    """Remove the run's own namespace (topics, groups, Redis keys); logs stay."""
    try:
        removed = remove_namespace(settings, policy.partners)
    except Exception as exc:  # the run's result stands; say what was left behind
        print(f"could not remove namespace {settings.topic_namespace}: {exc}", file=out)
        return
    print(
        f"removed namespace {settings.topic_namespace}: {removed.topics} topics, "
        f"{removed.keys} Redis keys (--keep-data keeps them)",
        file=out,
    )


def _demo(args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    return run_demo(DemoOptions.from_args(args), settings, policy, sys.stdout)


def add_demo_command(sub: Any) -> None:
    """Add ``demo`` to the ``consent-stream`` subcommands."""
    d = DemoOptions()
    demo = sub.add_parser(
        "demo",
        help="the main job: workers + simulated partners, a realistic workload, a summary",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    add = demo.add_argument
    add("--subjects", type=int, default=d.subjects, help="subjects (default %(default)s)")
    add("--rate", type=float, default=d.rate, help="events/s, 0: as fast as possible (%(default)s)")
    add("--workers", type=int, default=d.workers, help="worker processes (%(default)s)")
    add("--seed", type=int, default=d.seed, help="workload seed (%(default)s)")
    add(
        "--timeout-s",
        type=float,
        default=d.timeout_s,
        help="how long the requests may take to settle after the last event was published "
        "(%(default)s)",
    )
    add(
        "--partner-delay-ms",
        type=int,
        default=d.partner_delay_ms,
        help="time a simulated partner takes per instruction (%(default)s)",
    )
    add(
        "--partner-failure-rate",
        type=float,
        default=d.partner_failure_rate,
        help="0..1 (%(default)s)",
    )
    add(
        "--closure-fraction",
        type=float,
        default=d.closure_fraction,
        help="share of subjects closing their account (%(default)s)",
    )
    add(
        "--via-gateway",
        type=float,
        default=d.via_gateway,
        metavar="FRACTION",
        help="share of the subjects whose events are posted (batched) to a gateway child "
        "(consent-stream gateway) instead of the SDK (%(default)s)",
    )
    add(
        "--webhook-partners",
        default=",".join(d.webhook_partners),
        metavar="NAMES",
        help="partners reached over a signed webhook (a webhook bridge and a simulated "
        "receiver each), comma-separated, '' for none (%(default)s)",
    )
    add(
        "--webhook-failure-rate",
        type=float,
        default=d.webhook_failure_rate,
        help="0..1, share of webhook attempts the simulated receiver answers 503 (%(default)s)",
    )
    add(
        "--webhook-callback-fraction",
        type=float,
        default=d.webhook_callback_fraction,
        help="0..1, share of webhook instructions answered 202 and acknowledged later by a "
        "signed callback to the gateway child's POST /v1/acks (%(default)s)",
    )
    add("--namespace", default=None, help="default: a fresh demo<UTC time>-<pid>")
    add("--keep-running", action="store_true", help="after the summary, run until Ctrl-C")
    add(
        "--keep-data",
        action="store_true",
        help="keep the run's topics and Redis keys afterwards (a fresh namespace is removed "
        "by default; one given with --namespace is always kept)",
    )
    demo.set_defaults(handler=_demo, principal="admin")
