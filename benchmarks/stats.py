"""Latency samples and phase results: percentiles, the JSON form, the printed table, the plot."""

from __future__ import annotations

import importlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERCENTILES = (50, 90, 99)


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0..100) of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Samples:
    """Durations of one kind of operation, in seconds, and when each one ended."""

    values: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # perf_counter at each completion

    def add(self, seconds: float, at: float | None = None) -> None:
        """One operation of ``seconds`` that completed ``at`` (default: now)."""
        self.values.append(seconds)
        self.ends.append(time.perf_counter() if at is None else at)

    def merge(self, other: Samples) -> None:
        self.values.extend(other.values)
        self.ends.extend(other.ends)

    def __len__(self) -> int:
        return len(self.values)

    def summary_ms(self) -> dict[str, float | int]:
        """count, min, mean, p50, p90, p99, p99.9 and max, in milliseconds."""
        ordered = sorted(self.values)
        if not ordered:
            return {"count": 0}
        ms = [v * 1000 for v in ordered]
        summary: dict[str, float | int] = {"count": len(ms), "min": _round(ms[0]),
                                           "mean": _round(sum(ms) / len(ms))}
        for q in PERCENTILES:
            summary[f"p{q}"] = _round(percentile(ms, q))
        summary["p99.9"] = _round(percentile(ms, 99.9))
        summary["max"] = _round(ms[-1])
        return summary

    def quantiles_ms(self) -> list[float]:
        """The 0th..100th percentiles in steps of 1, in milliseconds: a compact CDF."""
        ordered = sorted(self.values)
        if not ordered:
            return []
        return [_round(percentile(ordered, q) * 1000) for q in range(101)]


def _round(value: float) -> float:
    return round(value, 3)


@dataclass
class PhaseResult:
    """What one phase measured: successful operations over its duration, latencies, errors."""

    name: str
    primary: str  # the latency kind the table shows
    operations: int = 0
    duration_s: float = 0.0
    latencies: dict[str, Samples] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    store_calls: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # CPU seconds, share of a core and RSS per process (scheduler, moto, ...) over the phase.
    processes: dict[str, dict[str, float | None]] = field(default_factory=dict)
    started_at_s: float | None = None  # perf_counter when the phase began (rate plot)

    def samples(self, kind: str) -> Samples:
        return self.latencies.setdefault(kind, Samples())

    @property
    def rate_per_s(self) -> float:
        return self.operations / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "duration_s": round(self.duration_s, 3),
            "rate_per_s": round(self.rate_per_s, 1),
            "primary_latency": self.primary,
            "latency_ms": {kind: s.summary_ms() for kind, s in self.latencies.items()},
            "quantiles_ms": {kind: s.quantiles_ms() for kind, s in self.latencies.items()},
            "errors": dict(self.errors),
            "store_calls": self.store_calls,
            "processes": self.processes,
            **self.extra,
        }


def table(phases: list[PhaseResult]) -> str:
    """A short fixed-width table: one row per phase and latency kind, with the CPU seconds
    the scheduler process spent in the phase, its share of one core, its RSS at the end,
    and (AWS mode) moto's CPU seconds."""
    header = (f"{'phase':<18} {'latency':<10} {'ops':>7} {'rate/s':>9} {'p50 ms':>8} "
              f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6} "
              f"{'sched cpu s':>11} {'cores':>5} {'rss MB':>7} {'moto cpu s':>10}")
    rows = [header, "-" * len(header)]
    for phase in phases:
        kinds = [phase.primary, *sorted(k for k in phase.latencies if k != phase.primary)]
        for i, kind in enumerate(kinds):
            summary = phase.latencies.get(kind, Samples()).summary_ms()
            first = i == 0
            rows.append(
                f"{phase.name if first else '':<18} {kind:<10} "
                f"{phase.operations if first else '':>7} "
                f"{f'{phase.rate_per_s:.1f}' if first else '':>9} "
                + " ".join(f"{_cell(summary.get(k)):>8}" for k in ("p50", "p90", "p99", "max"))
                + f" {sum(phase.errors.values()) if first else '':>6}"
                + (_usage_cells(phase) if first else "")
            )
    return "\n".join(rows)


def _usage_cells(phase: PhaseResult) -> str:
    scheduler = phase.processes.get("scheduler", {})
    moto = phase.processes.get("moto", {})
    return (f" {_cell(scheduler.get('cpu_s')):>11} {_cell(scheduler.get('cpu_cores')):>5} "
            f"{_cell(scheduler.get('rss_mb')):>7} {_cell(moto.get('cpu_s')):>10}")


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn here, or None when matplotlib imports."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return ("matplotlib is not installed in this environment (a dev package: "
                "pipenv install --dev)")
    return None


RATE_BIN_S = 0.1  # the rate plot counts completions per 100 ms


def plot(phases: list[PhaseResult], stem: Path, title: str,
         skip: tuple[str, ...] = ("assign_probe", "cleanup")) -> list[Path]:
    """Draw ``<stem>-latency.png`` (latency CDFs per phase) and ``<stem>-rate.png``
    (operations completed per 100 ms through each phase); returns the two paths."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    shown = [p for p in phases if p.name not in skip]
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}-latency.png"), stem.with_name(f"{stem.name}-rate.png")]
    _latency_figure(pyplot, shown, title).savefig(paths[0], dpi=110)
    _rate_figure(pyplot, shown, title).savefig(paths[1], dpi=110)
    pyplot.close("all")
    return paths


def _latency_figure(pyplot: Any, phases: list[PhaseResult], title: str) -> Any:
    """One panel per phase: a CDF of each latency kind, on a log axis. Values at or below
    zero (a node can receive a job before its submitter has the answer) are left out."""
    columns = 3
    rows = max(1, math.ceil(len(phases) / columns))
    figure, axes = pyplot.subplots(rows, columns, figsize=(6 * columns, 4 * rows),
                                   squeeze=False)
    colours = pyplot.get_cmap("tab10")
    for axis, phase in zip(axes.flat, phases, strict=False):
        kinds = [phase.primary, *sorted(k for k in phase.latencies if k != phase.primary)]
        for i, kind in enumerate(kinds):
            _cdf(axis, phase.latencies[kind] if kind in phase.latencies else Samples(), kind,
                 colours(i % 10))
        axis.set_xscale("log")
        axis.tick_params(axis="x", which="minor", labelbottom=False)
        axis.set_xlabel("latency (ms, log scale)")
        axis.set_ylabel("fraction at or below")
        axis.set_title(phase.name)
        axis.grid(True, which="both", alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize="small", loc="lower right")
    for axis in list(axes.flat)[len(phases):]:
        axis.set_visible(False)
    figure.suptitle(f"{title}: latency CDFs")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def _rate_figure(pyplot: Any, phases: list[PhaseResult], title: str) -> Any:
    """One panel per phase: its headline operations completed per 100 ms, as a rate."""
    columns = 3
    rows = max(1, math.ceil(len(phases) / columns))
    figure, axes = pyplot.subplots(rows, columns, figsize=(6 * columns, 3 * rows),
                                   squeeze=False)
    for axis, phase in zip(axes.flat, phases, strict=False):
        times, rates = rate_series(phase)
        axis.step(times, rates, where="post")
        axis.set_xlabel("seconds into the phase")
        axis.set_ylabel(f"{phase.primary} per s")
        axis.set_ylim(bottom=0)
        axis.set_title(phase.name)
        axis.grid(True, alpha=0.3)
    for axis in list(axes.flat)[len(phases):]:
        axis.set_visible(False)
    figure.suptitle(f"{title}: completions per {RATE_BIN_S * 1000:g} ms, as a rate per second")
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def rate_series(phase: PhaseResult) -> tuple[list[float], list[float]]:
    """Bin starts (s into the phase) and the headline operations' completion rate per bin."""
    ends = phase.latencies[phase.primary].ends if phase.primary in phase.latencies else []
    if not ends:
        return [], []
    origin = phase.started_at_s if phase.started_at_s is not None else min(ends)
    bins = [0] * (int(max(0.0, max(ends) - origin) / RATE_BIN_S) + 1)
    for end in ends:
        bins[max(0, int((end - origin) / RATE_BIN_S))] += 1
    return [i * RATE_BIN_S for i in range(len(bins))], [n / RATE_BIN_S for n in bins]


def _cdf(axis: Any, samples: Samples, label: str, colour: Any) -> None:
    ms = sorted(v * 1000 for v in samples.values if v > 0)
    if len(ms) >= 2:
        axis.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], color=colour,
                  label=f"{label} (n={len(ms)})")
