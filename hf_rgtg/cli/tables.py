"""The table of token rewards that `score` and `generate --show-rewards` print."""

from __future__ import annotations

from ..redistribution import TokenRewards


def token_rewards_table(result: TokenRewards, summary: bool = True) -> list[str]:
    """The lines of `result`'s table: per token its number, its text (repr'd, as it appears in the decoded
    response, so a character split over tokens shows whole on the token that completes it), its credit `r_t` and
    the reward `R` of the prefix it ends; with `summary`, a last line with `R(x)`, `R(x, y)` and the sum of the
    credits."""
    pieces = [repr(token) for token in result.tokens]
    width = max([len("token"), *map(len, pieces)])
    lines = [f"{'step':>5}  {'token':<{width}}  {'r_t':>8}  {'R':>8}"]
    for number, (piece, r_t, prefix) in enumerate(
        zip(pieces, result.rewards, result.prefix_rewards, strict=True), start=1
    ):
        lines.append(f"{number:>5}  {piece:<{width}}  {r_t:>+8.4f}  {prefix:>+8.4f}")
    if summary:
        lines.append(
            f"R(x) {result.prompt_reward:+.4f}  R(x, y) {result.reward:+.4f}  sum r_t {result.total:+.4f}"
        )
    return lines


__all__ = ["token_rewards_table"]
