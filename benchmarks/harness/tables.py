"""The markdown tables of the results file: time per token, fastest and slowest run, peak RSS."""

from __future__ import annotations

from harness.bench import METHODS
from harness.paths import MIB
from harness.summary import Cells, ratio


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


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


def spread_table(cells: Cells) -> str:
    lines = [
        "| config | batch | new tokens | plain | fast | reference | RM loop | most cores used by other processes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        parts = []
        for method in METHODS:
            lo_hi = cell.spread.get(method)
            parts.append("–" if lo_hi is None else f"{lo_hi[0]:.2f}–{lo_hi[1]:.2f}")
        lines.append(f"| ({config}) | {batch} | {n} | " + " | ".join(parts) + f" | {cell.foreign_load:.2f} |")
    return "\n".join(lines)


def memory_table(cells: Cells, info: dict, prompt_length: int) -> str:
    lines = [
        "| config | batch | new tokens | plain Δ | fast Δ | reference Δ | RM loop Δ | fast Δ − plain Δ | RM cache "
        "| 1.5 × RM cache | plain peak | fast peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        cache = rm_cache_mib(info, config, batch, prompt_length + n)
        extra = (
            cell.delta_mib["fast"] - cell.delta_mib["plain"]
            if "fast" in cell.delta_mib and "plain" in cell.delta_mib
            else None
        )
        lines.append(
            f"| ({config}) | {batch} | {n} | {fmt(cell.delta_mib.get('plain'), '.1f')} | "
            f"{fmt(cell.delta_mib.get('fast'), '.1f')} | {fmt(cell.delta_mib.get('reference'), '.1f')} | "
            f"{fmt(cell.delta_mib.get('rm-loop'), '.1f')} | {fmt(extra, '.1f')} | {cache:.1f} | {1.5 * cache:.1f} | "
            f"{fmt(cell.peak_mib.get('plain'), '.0f')} | {fmt(cell.peak_mib.get('fast'), '.0f')} |"
        )
    return "\n".join(lines)


def rm_cache_mib(info: dict, config: str, batch: int, length: int) -> float:
    return info["configs"][config]["rm_cache_bytes_per_row_token"] * batch * length / MIB
