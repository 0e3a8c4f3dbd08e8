"""The markdown tables of the results file: time per token, fastest and slowest run, peak RSS."""

from __future__ import annotations

from harness.methods import METHODS
from harness.paths import MIB
from harness.summary import Cells, ratio


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def label(method: str) -> str:
    """How a column names a method."""
    return {"rm-loop": "RM loop", "vocab-loop": "vocab loop"}.get(method, method)


def measured_methods(cells: Cells) -> list[str]:
    """The methods any cell has a time of, in the order of `METHODS`."""
    return [method for method in METHODS if any(method in cell.runs for cell in cells.values())]


def timing_table(cells: Cells) -> str:
    lines = [
        "| config | batch | new tokens | plain | fast | reference | RM loop | floor | fast/plain | fast/floor "
        "| ref/fast | runs (ref) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        runs = str(cell.runs.get("fast", cell.runs.get("plain", 0)))
        if "reference" in cell.runs:
            runs += f" ({cell.runs['reference']})"
        lines.append(
            f"| ({config}) | {batch} | {n} | {fmt(cell.ms.get('plain'))} | {fmt(cell.ms.get('fast'))} | "
            f"{fmt(cell.ms.get('reference'))} | {fmt(cell.ms.get('rm-loop'))} | {fmt(cell.ms.get('floor'))} | "
            f"{fmt(ratio(cell, 'fast', 'plain'), '.2f', '×')} | {fmt(ratio(cell, 'fast', 'floor'), '.2f', '×')} | "
            f"{fmt(ratio(cell, 'reference', 'fast'), '.1f', '×')} | {runs} |"
        )
    return "\n".join(lines)


#: The second timing table: each path beside the time it is quoted against, a method's or a `DERIVED` sum's.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("bridged", "fast"),
    ("two-rms", "floor-2"),
    ("vocab-backbone", "plain"),
    ("vocab", "floor-vocab"),
    ("text", "bridged"),
    ("encoder", "reference"),
)


def comparison_table(cells: Cells) -> str:
    """One row per pair of `COMPARISONS` measured in a cell; empty when none is."""
    lines = []
    for (config, batch, n), cell in cells.items():
        for method, baseline in COMPARISONS:
            value = ratio(cell, method, baseline)
            if value is not None:
                lines.append(
                    f"| ({config}) | {batch} | {n} | {method} | {cell.ms[method]:.2f} | {label(baseline)} | "
                    f"{cell.ms[baseline]:.2f} | {value:.2f}× | {cell.runs[method]} |"
                )
    if not lines:
        return ""
    return "\n".join(
        [
            "| config | batch | new tokens | path | ms/token | against | its ms/token | path/against | runs |",
            "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |",
            *lines,
        ]
    )


def spread_table(cells: Cells) -> str:
    methods = measured_methods(cells)
    lines = [
        "| config | batch | new tokens | "
        + " | ".join(label(m) for m in methods)
        + " | most cores used by other processes |",
        "| --- | ---: | ---: | " + "---: | " * len(methods) + "---: |",
    ]
    for (config, batch, n), cell in cells.items():
        parts = []
        for method in methods:
            lo_hi = cell.spread.get(method)
            parts.append("–" if lo_hi is None else f"{lo_hi[0]:.2f}–{lo_hi[1]:.2f}")
        lines.append(f"| ({config}) | {batch} | {n} | " + " | ".join(parts) + f" | {cell.foreign_load:.2f} |")
    return "\n".join(lines)


def memory_table(cells: Cells, info: dict, prompt_length: int) -> str:
    methods = measured_methods(cells)
    lines = [
        "| config | batch | new tokens | "
        + " | ".join(f"{label(m)} Δ" for m in methods)
        + " | fast Δ − plain Δ | RM cache | 1.5 × RM cache | plain peak | fast peak |",
        "| --- | ---: | ---: | " + "---: | " * len(methods) + "---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        cache = rm_cache_mib(info, config, batch, prompt_length + n)
        extra = (
            cell.delta_mib["fast"] - cell.delta_mib["plain"]
            if "fast" in cell.delta_mib and "plain" in cell.delta_mib
            else None
        )
        deltas = " | ".join(fmt(cell.delta_mib.get(m), ".1f") for m in methods)
        lines.append(
            f"| ({config}) | {batch} | {n} | {deltas} | {fmt(extra, '.1f')} | {cache:.1f} | {1.5 * cache:.1f} | "
            f"{fmt(cell.peak_mib.get('plain'), '.0f')} | {fmt(cell.peak_mib.get('fast'), '.0f')} |"
        )
    return "\n".join(lines)


def rm_cache_mib(info: dict, config: str, batch: int, length: int) -> float:
    return info["configs"][config]["rm_cache_bytes_per_row_token"] * batch * length / MIB
