"""Latency samples and phase results: percentiles, the JSON form, the printed table, the plot."""

from __future__ import annotations

import importlib
import math
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
    """Durations of one kind of operation, in seconds."""

    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

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
            **self.extra,
        }


def table(phases: list[PhaseResult]) -> str:
    """A short fixed-width table: one row per phase and latency kind."""
    header = (f"{'phase':<18} {'latency':<10} {'ops':>7} {'rate/s':>9} {'p50 ms':>8} "
              f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}")
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
            )
    return "\n".join(rows)


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def matplotlib_missing() -> str | None:
    """Why ``--plot`` cannot work here, or None when matplotlib imports."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return ("--plot needs matplotlib, which is not installed in this environment "
                "(it is not a project dependency: `pip install matplotlib` into the venv "
                "that runs the benchmark)")
    return None


def plot(phases: list[PhaseResult], path: Path, title: str,
         skip: tuple[str, ...] = ("assign_probe", "cleanup")) -> None:
    """Latency distributions as CDFs on a log axis: each phase's headline latency on the
    left, the hardware nodes' calls (drain) on the right. Values at or below zero (a
    node can receive a job before its submitter has the answer) are left out."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    figure, (headline, nodes) = pyplot.subplots(1, 2, figsize=(14, 6), sharey=True)
    colours = pyplot.get_cmap("tab10")
    shown = [p for p in phases if p.name not in skip]
    for i, phase in enumerate(shown):
        _cdf(headline, phase.latencies.get(phase.primary, Samples()),
             f"{phase.name}: {phase.primary}", colours(i % 10))
    drain = next((p for p in phases if p.name == "drain"), None)
    for i, (kind, samples) in enumerate(sorted(drain.latencies.items()) if drain else []):
        _cdf(nodes, samples, f"drain: {kind}", colours(i % 10))
    for axis, name in ((headline, title), (nodes, "hardware nodes during drain")):
        axis.set_xscale("log")
        axis.set_xlabel("latency (ms, log scale)")
        axis.set_title(name)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small", loc="lower right")
    headline.set_ylabel("fraction of operations at or below")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def _cdf(axis: Any, samples: Samples, label: str, colour: Any) -> None:
    ms = sorted(v * 1000 for v in samples.values if v > 0)
    if len(ms) >= 2:
        axis.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], color=colour,
                  label=f"{label} (n={len(ms)})")
