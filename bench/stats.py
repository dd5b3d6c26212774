# SPDX-License-Identifier: Apache-2.0
"""Pure helpers of the harness: medians with their spread, percentiles, budget
verdicts and the markdown table. Standard library only; unit-tested."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """A median with the range it came from."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 3, unit: str = "") -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f} to {self.high:.{digits}f}, n={self.n})"


def spread(values: Sequence[float]) -> Spread:
    """Median and min-max of `values` (n/a when empty)."""
    if not values:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.median(values), min(values), max(values), len(values))


def ratios(with_: Sequence[float], without: Sequence[float]) -> list[float]:
    """Per-round ratios with/without (rounds paired in order)."""
    return [w / o for w, o in zip(with_, without, strict=True) if o > 0]


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile (pct in 0..100) of `values`; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def cpu_share(cpu_s: float, wall_s: float) -> float:
    """Share of one core (0.05 is 5 %)."""
    return cpu_s / wall_s if wall_s > 0 else math.nan


def verdict(met: bool | None, why: str = "") -> str:
    """The budget column: met, missed (with the reason) or reported only."""
    if met is None:
        return "reported" + (f": {why}" if why else "")
    return ("met" if met else "**missed**") + (f": {why}" if why else "")


@dataclass(frozen=True)
class Row:
    figure: str
    condition: str
    measured: str
    budget: str
    verdict: str


HEADER = ("figure", "condition", "measured", "budget", "verdict")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: Sequence[Row]) -> str:
    """One markdown table, a row per figure and condition."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = (r.figure, r.condition, r.measured, r.budget, r.verdict)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def fmt_ns(ns: float) -> str:
    return "n/a" if math.isnan(ns) else f"{ns:,.0f} ns"


def fmt_pct(share: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(share) else f"{share * 100:.{digits}f} %"
