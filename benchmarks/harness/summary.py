"""The runs of one (config, batch, new tokens) reduced to medians, spreads and peaks: a `Cell`."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from harness.bench import RunResult
from harness.paths import MIB


@dataclass
class Cell:
    """Aggregates of one (config, batch, new tokens)."""

    ms: dict[str, float] = field(default_factory=dict)  # median ms per token per method, and "floor"
    runs: dict[str, int] = field(default_factory=dict)
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)  # min, max ms per token
    delta_mib: dict[str, float] = field(default_factory=dict)  # max over runs of peak - baseline
    peak_mib: dict[str, float] = field(default_factory=dict)  # max over runs of the absolute peak
    foreign_load: float = 0.0  # the most cores other processes used during any run of the cell


Cells = dict[tuple[str, int, int], Cell]  # by (config, batch, new tokens)

#: Times summed from the medians of the methods named, each where all of them were measured. `floor`: what a
#: guided step costs at least, one LM step plus one RM forward of k tokens on top of a cache; `floor-2`, the same
#: with two reward models of the RM's shape (the second's forward costs what the first's does); `floor-vocab`, one
#: LM step plus one 1-token step of a separate all-token reward model on its cache.
DERIVED: dict[str, tuple[str, ...]] = {
    "floor": ("plain", "rm-loop"),
    "floor-2": ("plain", "rm-loop", "rm-loop"),
    "floor-vocab": ("plain", "vocab-loop"),
}


def summarise(results: list[RunResult]) -> Cells:
    per: dict[tuple[str, int, int, str], list[RunResult]] = defaultdict(list)
    for result in results:
        for n in result.seconds:
            per[(result.config, result.batch, n, result.method)].append(result)
    cells: dict[tuple[str, int, int], Cell] = defaultdict(Cell)
    for (config, batch, n, method), runs in per.items():
        cell = cells[(config, batch, n)]
        ms = [r.seconds[n] / n * 1e3 for r in runs]
        cell.ms[method] = statistics.median(ms)
        cell.spread[method] = (min(ms), max(ms))
        cell.runs[method] = len(runs)
        cell.delta_mib[method] = max(r.peak_rss[n] - r.baseline_rss for r in runs) / MIB
        cell.peak_mib[method] = max(r.peak_rss[n] for r in runs) / MIB
        cell.foreign_load = max(cell.foreign_load, *(r.foreign_load for r in runs))
    for cell in cells.values():
        # Sums of medians: robust to a disturbed run of any of them (a sum per repetition is not).
        for name, parts in DERIVED.items():
            if all(part in cell.ms for part in parts):
                cell.ms[name] = sum(cell.ms[part] for part in parts)
    return dict(sorted(cells.items()))


def ratio(cell: Cell, a: str, b: str) -> float | None:
    if a in cell.ms and b in cell.ms and cell.ms[b] > 0:
        return cell.ms[a] / cell.ms[b]
    return None
