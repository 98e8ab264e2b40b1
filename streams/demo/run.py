"""One run of the demo: children up, warm-up (``streams.demo.warmup``), paced publishing
with progress, settling, and the summary. Used by ``streams.demo.run_demo``."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TextIO

from consumers.store.clients import make_redis
from producers.publisher import ConsentPublisher, DeliveryReceipt
from schemas.errors import PublishError
from schemas.policy import Policy
from schemas.settings import ENV_PREFIX, Settings
from streams.demo.gateway import GatewaySender, gateway_env, new_token, routed
from streams.demo.latency import Samples
from streams.demo.options import DemoOptions
from streams.demo.processes import Child, Children, child_env, free_port, http_get, scrape
from streams.demo.request_tracker import RequestTracker
from streams.demo.summary import (
    ACKS,
    INSTRUCTIONS,
    Progress,
    RunFacts,
    processed,
    progress_line,
    summary_lines,
    warmup_line,
)
from streams.demo.warmup import Warmup
from streams.demo.webhook import WebhookChildren
from streams.demo.workload import Workload
from streams.topics import ensure_topics

__all__ = ["DemoRun"]

log = logging.getLogger(__name__)


class DemoRun:
    def __init__(
        self,
        options: DemoOptions,
        settings: Settings,
        policy: Policy,
        workload: Workload,
        children: Children,
        base_dir: Path,
        out: TextIO,
        webhook_urls: Mapping[str, str] | None = None,
    ) -> None:
        self.options, self.settings, self.policy = options, settings, policy
        self.workload, self.children, self.base_dir, self.out = workload, children, base_dir, out
        self.started = time.monotonic()
        self.partner_names = sorted(policy.partners)
        self.workers: list[Child] = []
        self.redis = make_redis(settings)
        self.requests = RequestTracker(self.redis, settings.redis_prefix, workload.requests)
        self.publisher: ConsentPublisher | None = None
        self.published = 0
        self.published_by_type: Counter[str] = Counter()
        self.delivery_errors: list[PublishError] = []
        self.children_started = 0.0
        self.probes: Counter[str] = Counter()
        self.baseline = Samples()
        self.publish_s = 0.0
        self.publish_started = 0.0
        self.process_s: float | None = None
        self.note: str | None = None
        self._progress_stop = threading.Event()
        self._count_lock = threading.Lock()
        self.gateway_child: Child | None = None
        self.gateway_token = new_token()
        self.gateway: GatewaySender | None = None
        self.webhook = WebhookChildren(webhook_urls or {}, base_dir, settings.metrics_token)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- the run ---------------------------------------------------------------------------

    def execute(self) -> int:
        self._announce()
        ensure_topics(self.settings, self.policy)
        self._sync_acls()
        self._start_children()
        failure = self._warm_up()
        progress = threading.Thread(target=self._report_progress, name="progress", daemon=True)
        if failure is None:
            progress.start()
            failure = self._publish() or self._settle()
            self._progress_stop.set()
            progress.join()
        return self._finish(failure)

    def _sync_acls(self) -> None:
        """The namespace's ACLs, so each child works as its own principal."""
        from streams.acl.sync import run_acl_sync

        quiet = io.StringIO()
        run_acl_sync(self.settings, self.policy, quiet)
        self.say(quiet.getvalue().strip().splitlines()[-1])

    def _announce(self) -> None:
        w = self.workload
        by_type = ", ".join(f"{t} {n}" for t, n in sorted(w.count_by_type().items()))
        scopes = ", ".join(f"{s} {n}" for s, n in sorted(w.requests_by_scope().items()))
        self.say(
            f"consent-stream demo: namespace {self.settings.topic_namespace}\n"
            f"workload: {w.subjects} subjects (seed {self.options.seed}): {len(w.events)} "
            f"events ({by_type}); {len(w.requests)} deletion requests ({scopes})"
        )

    def _start_children(self) -> None:
        env = child_env(self.settings)
        o = self.options
        self.children_started = time.monotonic()
        gateway_port = free_port() if self._wants_gateway() else None
        callback_url = f"http://127.0.0.1:{gateway_port}/v1/acks" if gateway_port else None
        self.webhook.start(self.children, env, o, callback_url, o.seed + len(self.partner_names))
        for i, name in enumerate(self.partner_names):
            if name in self.webhook.urls:
                continue
            port = free_port()
            args = ["partner", "--name", name, "--metrics-port", str(port)]
            args += ["--delay-ms", str(o.partner_delay_ms)]
            args += ["--failure-rate", str(o.partner_failure_rate), "--seed", str(o.seed + i)]
            args += ["--state-dir", str(self.base_dir / "partners")]
            self.children.start(
                f"partner-{name}", args, env, self.base_dir / f"partner-{name}.log", port
            )
        for i in range(1, o.workers + 1):
            port = free_port()
            worker_env = {
                **env,
                f"{ENV_PREFIX}HTTP_PORT": str(port),
                f"{ENV_PREFIX}DATA_DIR": str(self.base_dir / f"worker-{i}"),
            }
            log_path = self.base_dir / f"worker-{i}.log"
            self.workers.append(
                self.children.start(f"worker-{i}", ["worker"], worker_env, log_path, port)
            )
        if gateway_port is not None:
            port = gateway_port
            sources = {e.source for e in self.workload.events}
            gateway = {**env, **gateway_env(port, self.gateway_token, sources)}
            log_path = self.base_dir / "gateway.log"
            child = self.children.start("gateway", ["gateway"], gateway, log_path, port)
            self.gateway_child = child
        pids = ", ".join(f"{c.name} {c.pid}" for c in self.children.items)
        self.say(f"started (pids): {pids}; logs in {self.base_dir}/")
        if o.workers > self.settings.partitions:
            self.say(f"note: {o.workers} workers share {self.settings.partitions} partitions")

    def _wants_gateway(self) -> bool:
        """A gateway child: for a share of the events, or for the webhook callbacks."""
        o = self.options
        return o.via_gateway > 0 or (bool(self.webhook.urls) and o.webhook_callback_fraction > 0)

    def _warm_up(self) -> str | None:
        """Warm everything up, then take the workers' metrics as the baseline."""
        self.publisher = ConsentPublisher(self.settings.as_principal("publisher"), self.policy)
        warmup = Warmup(
            self.settings,
            self.policy,
            self.children,
            self.workers,
            self.publisher,
            self.redis,
            self.snapshot,
            load_rate=self.options.rate,
        )
        report, failure = warmup.run(self.children_started)
        if report is None:
            return failure
        if self.gateway_child is not None and self.options.via_gateway > 0:
            port = self.gateway_child.port
            failure = self.children.wait_until(
                lambda: http_get(port, "/healthz")[0] == 200, 60.0, "the gateway's /healthz"
            )
            if failure is not None:
                return failure
            self.gateway = GatewaySender(port, self.gateway_token, self._gateway_delivered)
        self.probes = warmup.events
        self.baseline = self.snapshot(attempts=5)
        self.webhook.baseline = self.webhook.snapshot()
        rate = self.options.rate
        pace = f"at {rate:.0f} events/s" if rate > 0 else "as fast as possible"
        self.say(warmup_line(report))
        self.say(f"ready after {time.monotonic() - self.started:.1f} s; publishing {pace}")
        return None

    def _delivered(
        self, event_type: str, receipt: DeliveryReceipt | None, error: PublishError | None
    ) -> None:
        if error is not None:
            self.delivery_errors.append(error)
        else:
            self._gateway_delivered(event_type)

    def _gateway_delivered(self, event_type: str) -> None:
        with self._count_lock:  # the SDK's callbacks and the gateway sender's thread
            self.published += 1
            self.published_by_type[event_type] += 1

    def _publish(self) -> str | None:
        publisher = self.publisher
        assert publisher is not None  # noqa: S101 - set by _wait_ready
        rate = self.options.rate
        start = self.publish_started = time.monotonic()
        for i, event in enumerate(self.workload.events):
            if rate > 0:
                due = start + i / rate
                while (wait := due - time.monotonic()) > 0.001:
                    publisher.poll(min(wait, 0.1))
            if self.gateway is not None and routed(event.subject_id, self.options.via_gateway):
                self.gateway.put(event)
            else:
                publisher.publish_async(event, partial(self._delivered, event.type.value))
            publisher.poll(0)
            if i % 1000 == 999 and (died := self.children.describe_dead()) is not None:
                return f"{died} while publishing"
        if self.gateway is not None:
            self.gateway.close()
            self.delivery_errors.extend(PublishError(e) for e in self.gateway.counts.errors)
        left = publisher.flush(60.0)
        self.publish_s = time.monotonic() - start
        if left or self.delivery_errors:
            first = self.delivery_errors[0] if self.delivery_errors else "no acknowledgement"
            missing = len(self.workload.events) - self.published
            return f"{missing} events were not acknowledged by Kafka ({first})"
        return None

    def _settle(self) -> str | None:
        expected = len(self.workload.events)
        state: dict[str, float] = {}

        def settled() -> bool:
            samples = self.measured()
            state["processed"] = processed(samples)
            state["unacked"] = samples.total(INSTRUCTIONS) - samples.total(ACKS)
            state["final"] = self.requests.final_count()
            if self.process_s is None and state["processed"] >= expected:
                self.process_s = time.monotonic() - self.publish_started
            return (
                state["processed"] >= expected
                and state["final"] == self.requests.total
                and state["unacked"] <= 0
            )

        timeout = self.options.timeout_s
        failure = self.children.wait_until(settled, timeout, "every request to settle", 0.5)
        if failure is None or not failure.startswith("timed out"):
            return failure
        after = f"after {timeout:.0f} s"
        if state["final"] < self.requests.total:
            open_ = self.requests.total - int(state["final"])
            return f"{open_} of {self.requests.total} deletion requests not final {after}"
        if state["processed"] < expected:
            return f"{expected - int(state['processed'])} events not processed {after}"
        self.note = f"{int(state['unacked'])} instructions not yet acknowledged"
        return None

    # -- figures ---------------------------------------------------------------------------

    def snapshot(self, attempts: int = 1) -> Samples:
        """Every worker's /metrics page, parsed (a worker that does not answer is left out)."""
        return scrape(self.workers, self.settings.metrics_token, attempts)

    def measured(self) -> Samples:
        """What the workers counted since the warm-up (the workload's figures)."""
        return self.snapshot().since(self.baseline)

    def _report_progress(self) -> None:
        while not self._progress_stop.wait(1.0):
            samples = self.measured()
            self.say(
                progress_line(
                    Progress(
                        elapsed_s=time.monotonic() - self.started,
                        published=self.published,
                        total=len(self.workload.events),
                        processed=int(processed(samples)),
                        instructions=int(samples.total(INSTRUCTIONS)),
                        acks=int(samples.total(ACKS)),
                        requests_final=self.requests.final_count(),
                        requests_total=self.requests.total,
                    )
                )
            )

    def _finish(self, failure: str | None) -> int:
        samples = self.snapshot(attempts=5)
        failure = failure or self.children.describe_dead()
        facts = RunFacts(
            namespace=self.settings.topic_namespace,
            workers=len(self.workers),
            partners=self.partner_names,
            subjects=self.workload.subjects,
            published=self.published_by_type,
            probes=self.probes,
            publish_s=self.publish_s,
            process_s=self.process_s,
            target_rate=self.options.rate,
            wall_s=time.monotonic() - self.started,
            samples=samples,
            requests_by_status=self.requests.by_status(),
            requests_by_scope=self.workload.requests_by_scope(),
            log_dir=str(self.base_dir),
            logs=[c.log_path.name for c in self.children.items],
            failure=failure,
            note=self.note,
            baseline=self.baseline,
            webhook=self.webhook.summary(),
        )
        for line in summary_lines(facts):
            self.say(line)
        if self.gateway is not None:
            self.say(self.gateway.counts.line())
        return 1 if failure else 0

    def keep_running(self) -> None:
        s = self.settings
        self.say("\nstill running (Ctrl-C to stop):")
        for w in self.workers:
            self.say(
                f"  {w.name}: http://127.0.0.1:{w.port}/metrics, /consent/<subject>, "
                "/requests/<request id> (with Authorization: Bearer <a token of "
                f"{ENV_PREFIX}HTTP_TOKENS>)"
            )
        self.say(
            f"  CLI: export {ENV_PREFIX}TOPIC_NAMESPACE={s.topic_namespace} "
            f"{ENV_PREFIX}APP_ID={s.app_id} {ENV_PREFIX}REDIS_PREFIX={s.redis_prefix}"
        )
        for scope in sorted(set(self.workload.requests.values())):
            request_id = min(r for r, s in self.workload.requests.items() if s is scope)
            self.say(f"  a {scope.value} request: consent-stream report {request_id}")
        try:
            while not self.children.dead():
                time.sleep(1.0)
            self.say(f"stopping: {self.children.describe_dead()}")
        except KeyboardInterrupt:
            self.say("stopping")

    def close(self) -> None:
        self._progress_stop.set()
        if self.publisher is not None:
            self.publisher.close()
        self.redis.close()
