"""The speed and memory targets of guided decoding, each judged PASS, FAIL or NOT MEASURED from the cells."""

from __future__ import annotations

from harness.summary import Cell, Cells, ratio
from harness.tables import rm_cache_mib

Check = tuple[str, bool]  # what was measured, as the line shows it, and whether it meets the target


def evaluate_targets(cells: Cells, info: dict, prompt_length: int) -> list[str]:
    """One markdown bullet per target, in the order of the results file."""
    lines = [
        _verdict(
            f"fast path ≤ {limit}× plain greedy at batch {batch} on (a)",
            _ratio_checks(cells, "a", batch, "plain", limit),
        )
        for batch, limit in ((1, 2.0), (8, 2.5))
    ]
    lines += _ratio_targets(
        cells,
        "fast path ≤ 1.15× the floor (plain + RM loop) on ({config}) at batch {batch}",
        "fast",
        "floor",
        1.15,
    )
    lines += [
        _verdict(
            f"fast path time per token at 512 new tokens ≤ 1.3× that at 64, ({config}) batch {batch}",
            _length_checks(cells, config, batch),
        )
        for config in ("a", "b")
        for batch in (1, 8)
    ]
    lines += _ratio_targets(
        cells,
        "bridged path (an RM with another tokenizer) ≤ 1.5× the fast path at 256 new tokens on ({config}) at batch "
        "{batch}",
        "bridged",
        "fast",
        1.5,
        configs=("a",),
        lengths=(256,),
    )
    lines += _ratio_targets(
        cells,
        "two reward models of the RM's shape ≤ 1.1× their floor (plain + 2 × RM loop, stricter than the sum of "
        "two single-RM floors, which counts plain twice) on ({config}) at batch {batch}",
        "two-rms",
        "floor-2",
        1.1,
        configs=("a",),
    )
    lines += _ratio_targets(
        cells,
        "vocab head on the LM's own backbone ≤ 1.10× plain greedy on ({config}) at batch {batch}",
        "vocab-backbone",
        "plain",
        1.10,
    )
    lines += _ratio_targets(
        cells,
        "separate vocab RM ≤ 1.15× its floor (plain + vocab loop) on ({config}) at batch {batch}",
        "vocab",
        "floor-vocab",
        1.15,
    )
    lines.append(
        _verdict("fast path ≥ 10× faster than the reference path at 256 new tokens", _reference_checks(cells))
    )
    lines.append(
        _verdict(
            "peak RSS of guided decoding ≤ plain decoding + RM weights + 1.5× one RM cache (the RM weights are "
            "resident before both runs, so the check is fast Δ − plain Δ ≤ 1.5 × RM cache)",
            _memory_checks(cells, info, prompt_length),
        )
    )
    return lines


def _ratio_targets(
    cells: Cells,
    label: str,
    method: str,
    baseline: str,
    limit: float,
    configs: tuple[str, ...] = ("a", "b"),
    lengths: tuple[int, ...] | None = None,
) -> list[str]:
    """The bullets of `method` / `baseline` ≤ `limit` for each of `configs` at batch 1 and 8; `label` is formatted
    with `config` and `batch`."""
    return [
        _verdict(
            label.format(config=config, batch=batch),
            _ratio_checks(cells, config, batch, baseline, limit, method=method, lengths=lengths),
        )
        for config in configs
        for batch in (1, 8)
    ]


def _verdict(label: str, checks: list[Check]) -> str:
    if not checks:
        return f"- **NOT MEASURED**: {label}"
    ok = all(passed for _, passed in checks)
    return f"- **{'PASS' if ok else 'FAIL'}**: {label}: " + "; ".join(text for text, _ in checks)


def _by(cells: Cells, config: str, batch: int) -> list[tuple[int, Cell]]:
    return [(n, cell) for (c, b, n), cell in cells.items() if c == config and b == batch]


def _ratio_checks(
    cells: Cells,
    config: str,
    batch: int,
    baseline: str,
    limit: float,
    method: str = "fast",
    lengths: tuple[int, ...] | None = None,
) -> list[Check]:
    """`method` / `baseline` ≤ `limit` at every length measured for `config` at `batch` (of `lengths`, if given)."""
    checks = []
    for n, cell in _by(cells, config, batch):
        value = ratio(cell, method, baseline)
        if value is not None and (lengths is None or n in lengths):
            checks.append((f"{value:.2f}× at {n}", value <= limit))
    return checks


def _length_checks(cells: Cells, config: str, batch: int) -> list[Check]:
    """The fast path's time per token at 512 new tokens ≤ 1.3× that at 64."""
    lookup = dict(_by(cells, config, batch))
    if not (64 in lookup and 512 in lookup and "fast" in lookup[64].ms and "fast" in lookup[512].ms):
        return []
    short, long = lookup[64].ms["fast"], lookup[512].ms["fast"]
    value = long / short
    return [(f"{long:.2f} vs {short:.2f} ms/token = {value:.2f}×", value <= 1.3)]


def _reference_checks(cells: Cells) -> list[Check]:
    checks = []
    for (config, batch, n), cell in cells.items():
        value = ratio(cell, "reference", "fast")
        if n == 256 and value is not None:
            checks.append((f"({config}) batch {batch}: {value:.1f}×", value >= 10))
    return checks


def _memory_checks(cells: Cells, info: dict, prompt_length: int) -> list[Check]:
    checks = []
    for (config, batch, n), cell in cells.items():
        if "fast" in cell.delta_mib and "plain" in cell.delta_mib:
            extra = cell.delta_mib["fast"] - cell.delta_mib["plain"]
            budget = 1.5 * rm_cache_mib(info, config, batch, prompt_length + n)
            checks.append((f"({config}) b{batch} N{n}: +{extra:.1f} ≤ {budget:.1f} MiB", extra <= budget))
    return checks
