"""Where the benchmarks live, read and write, and how a path is shown in a results file."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent
REPO = BENCHMARKS_DIR.parent
CACHE_DIR = BENCHMARKS_DIR / ".cache"
RESULTS_DIR = BENCHMARKS_DIR / "results"
MIB = 1024 * 1024


def repo_relative(path: Path) -> str:
    """`path` relative to the repository's root when it lies inside, else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
