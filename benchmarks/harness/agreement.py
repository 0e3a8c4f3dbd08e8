"""Before measuring: each fast path gives the greedy output of the reference it is exact against (`AGREEMENTS`)."""

from __future__ import annotations

from harness.bench import Bench
from harness.methods import AGREEMENTS


def check_agreements(bench: Bench, batch: int, new_tokens: int) -> list[str]:
    """One line per pair of `AGREEMENTS` the bench runs, saying that both paths generated the same `new_tokens`
    greedy tokens for `batch` prompts and how far apart the rows' prefix rewards at the last step were; a pair that
    disagrees raises `RuntimeError`: its timings would not be worth comparing."""
    return [
        _agreement(bench, fast, reference, batch, new_tokens)
        for fast, reference in AGREEMENTS
        if fast in bench.guidance and reference in bench.guidance
    ]


def _agreement(bench: Bench, fast: str, reference: str, batch: int, new_tokens: int) -> str:
    out = bench.greedy(fast, batch, new_tokens)
    rewards = list(bench.guidance[fast].tracker.last_rewards)
    expected = bench.greedy(reference, batch, new_tokens)
    expected_rewards = bench.guidance[reference].tracker.last_rewards
    if not out.equal(expected):
        raise RuntimeError(
            f"({bench.setup.key}) {fast} and {reference} generated different greedy tokens at batch {batch}: "
            f"{out[:, -new_tokens:].tolist()} vs {expected[:, -new_tokens:].tolist()}."
        )
    gap = max(abs(a - b) for a, b in zip(rewards, expected_rewards, strict=True))
    return (
        f"{fast} = {reference}: the same {new_tokens} greedy tokens at batch {batch}; the rows' prefix rewards at the "
        f"last step differ by at most {gap:.1e} ({', '.join(f'{r:+.3f}' for r in rewards)})."
    )
