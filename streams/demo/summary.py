"""The demo's progress line and final summary, from plain figures (pure formatting)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from streams.demo.latency import Samples

__all__ = [
    "Progress",
    "RunFacts",
    "WarmupReport",
    "format_seconds",
    "processed",
    "progress_line",
    "summary_lines",
    "warmup_line",
]

EVENTS = "consent_events_total"
DEADLETTERS = "consent_deadletters_total"
INSTRUCTIONS = "consent_instructions_total"
ACKS = "consent_acknowledgements_total"
PUBLISH_TO_STORE = "consent_publish_to_store_seconds"
PUBLISH_TO_PARTNER = "consent_publish_to_partner_topic_seconds"
INSTRUCTION_TO_ACK = "consent_instruction_to_ack_seconds"


@dataclass(frozen=True, slots=True)
class Progress:
    elapsed_s: float
    published: int
    total: int
    processed: int
    instructions: int
    acks: int
    requests_final: int
    requests_total: int


def processed(samples: Samples) -> float:
    """Events the workers are done with: handled (any outcome) or dead-lettered."""
    return samples.total(EVENTS) + samples.total(DEADLETTERS)


def progress_line(p: Progress) -> str:
    return (
        f"[{p.elapsed_s:6.1f}s] published {p.published}/{p.total} | processed {p.processed}"
        f" | instructions {p.instructions} | acks {p.acks}"
        f" | requests final {p.requests_final}/{p.requests_total}"
        f" (open {p.requests_total - p.requests_final})"
    )


@dataclass(frozen=True, slots=True)
class WarmupReport:
    """What the warm-up before the workload took (seconds from the children's start)."""

    answering_s: float  # every worker and partner answers HTTP
    joined_s: float  # every topic has its leaders, every consumer group its partitions
    probed_s: float  # every probe went through the store and every partner's ack
    rounds: int
    subjects: int
    events: int
    partners: int
    empty: tuple[str, ...] = ()  # partitions read by a worker or partner that no probe reached


def warmup_line(w: WarmupReport) -> str:
    missed = f"; no probe reached {', '.join(w.empty)}" if w.empty else ""
    rounds = "1 round" if w.rounds == 1 else f"{w.rounds} rounds"
    return (
        f"warm-up: children answering in {w.answering_s:.1f} s, groups joined in "
        f"{w.joined_s - w.answering_s:.1f} s, {w.subjects} probe subjects ({w.events} events, "
        f"{rounds}) through store and {w.partners} partners' acks in "
        f"{w.probed_s - w.joined_s:.1f} s{missed}"
    )


@dataclass(frozen=True)
class RunFacts:
    namespace: str
    workers: int
    partners: Sequence[str]
    subjects: int
    published: Mapping[str, int]
    probes: Mapping[str, int]  # warm-up probe events by type, in ``baseline``
    publish_s: float
    process_s: float | None
    target_rate: float
    wall_s: float
    samples: Samples
    requests_by_status: Mapping[str, int]
    requests_by_scope: Mapping[str, int]
    log_dir: str
    logs: Sequence[str] = field(default_factory=tuple)
    failure: str | None = None
    note: str | None = None
    baseline: Samples = field(default_factory=Samples)  # the workers' metrics after warm-up
    webhook: Sequence[str] = ()  # the webhook section (``streams.demo.webhook``), if any


def format_seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    if value < 10:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s"


def _counts(counts: Mapping[str, float] | Counter[str]) -> str:
    parts = [f"{k} {int(v)}" for k, v in sorted(counts.items()) if v]
    return ", ".join(parts) or "none"


def _events(f: RunFacts, s: Samples) -> list[str]:
    outcomes = s.by(EVENTS, "type", "outcome")
    names = sorted({o for _, o in outcomes})
    lines = [f"  {'type':<20} {'published':>9}  " + "  ".join(f"{n:>13}" for n in names)]
    for etype in sorted(set(f.published) | {t for t, _ in outcomes}):
        cells = "  ".join(f"{int(outcomes.get((etype, n), 0)):>13}" for n in names)
        lines.append(f"  {etype:<20} {f.published.get(etype, 0):>9}  {cells}")
    dead = {k[0]: v for k, v in s.by(DEADLETTERS, "reason").items()}
    lines.append(f"  dead letters: {int(sum(dead.values()))} ({_counts(dead)})")
    if f.probes:
        lines.append(
            f"  not counted above: {sum(f.probes.values())} warm-up probe events "
            f"({_counts(f.probes)})"
        )
    return lines


def _partners(f: RunFacts, s: Samples) -> list[str]:
    sent = s.by(INSTRUCTIONS, "partner", "action")
    acked = s.by(ACKS, "partner", "status")
    lines = []
    for partner in f.partners:
        actions = {a: v for (p, a), v in sent.items() if p == partner}
        statuses = {s: v for (p, s), v in acked.items() if p == partner}
        lines.append(
            f"  {partner:<10} instructions {int(sum(actions.values())):>6} ({_counts(actions)})"
        )
        lines.append(
            f"  {'':<10} acks         {int(sum(statuses.values())):>6} ({_counts(statuses)})"
        )
    warm = (int(f.baseline.total(INSTRUCTIONS)), int(f.baseline.total(ACKS)))
    if any(warm):
        lines.append(f"  not counted above: {warm[0]} warm-up instructions, {warm[1]} acks")
    return lines


def _webhook(f: RunFacts) -> list[str]:
    if not f.webhook:
        return []
    title = "webhook delivery (the bridges' and the simulated receivers' metrics, after warm-up)"
    return [title, *f.webhook, ""]


def _requests(f: RunFacts) -> list[str]:
    total = sum(f.requests_by_scope.values())
    return [
        f"  {total} requests ({_counts(f.requests_by_scope)})",
        f"  by status: {_counts(f.requests_by_status)}",
    ]


def _hop(s: Samples, label: str, histogram: str, **labels: str) -> str:
    count = int(s.total(f"{histogram}_count", **labels))
    p50 = format_seconds(s.quantile(0.5, histogram, **labels))
    p99 = format_seconds(s.quantile(0.99, histogram, **labels))
    return f"  {label:<36} {p50:>10} {p99:>10} {count:>8}"


def _latency(f: RunFacts, s: Samples) -> list[str]:
    lines = [
        f"  {'hop':<36} {'p50':>10} {'p99':>10} {'count':>8}",
        _hop(s, "publish -> store", PUBLISH_TO_STORE),
        _hop(s, "publish -> partner topic (all)", PUBLISH_TO_PARTNER),
    ]
    lines += [
        _hop(s, f"publish -> partner topic  {p}", PUBLISH_TO_PARTNER, partner=p) for p in f.partners
    ]
    lines.append(_hop(s, "instruction -> ack (all)", INSTRUCTION_TO_ACK))
    lines += [
        _hop(s, f"instruction -> ack  {p}", INSTRUCTION_TO_ACK, partner=p) for p in f.partners
    ]
    return lines


def _processing(f: RunFacts, published: int) -> str:
    if f.process_s is None or f.process_s <= 0:
        return "processing: not every event was processed"
    return (
        f"processing: every event processed {f.process_s:.1f} s after the first was published "
        f"({published / f.process_s:.0f} events/s)"
    )


def summary_lines(f: RunFacts) -> list[str]:
    """The summary; the workers' figures count from ``f.baseline`` (the end of the warm-up)."""
    s = f.samples.since(f.baseline)
    published = sum(f.published.values())
    rate = published / f.publish_s if f.publish_s > 0 else math.inf
    target = f"{f.target_rate:.0f}/s" if f.target_rate > 0 else "as fast as possible"
    return [
        "",
        "=== consent-stream demo: summary ===",
        f"namespace {f.namespace}: {f.workers} worker(s), partners {', '.join(f.partners)}",
        f"workload: {f.subjects} subjects, {published} events published in "
        f"{f.publish_s:.1f} s ({rate:.0f} events/s; target {target}); wall time {f.wall_s:.1f} s",
        _processing(f, published),
        "",
        "events by type and outcome (workers' consent_events_total)",
        *_events(f, s),
        "",
        "partner instructions (by action) and acknowledgements (by status)",
        *_partners(f, s),
        "",
        *_webhook(f),
        "deletion requests",
        *_requests(f),
        "",
        "latency per hop (estimated from the workers' histogram buckets, after the warm-up)",
        *_latency(f, s),
        "",
        f"logs: {f.log_dir}/ ({', '.join(f.logs)})",
        *([f"note: {f.note}"] if f.note else []),
        f"result: FAILED - {f.failure}"
        if f.failure
        else "result: OK - every deletion request reached a final status",
    ]
