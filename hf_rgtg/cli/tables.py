"""The table of token rewards that `score` and `generate --show-rewards` print."""

from __future__ import annotations

from collections.abc import Sequence

from ..redistribution import TokenRewards


def token_rewards_table(
    result: TokenRewards, summary: bool = True, per_model: Sequence[TokenRewards] = ()
) -> list[str]:
    """The lines of `result`'s table: per token its number, its text (repr'd, as it appears in the decoded
    response, so a character split over tokens shows whole on the token that completes it), its credit `r_t` and
    the reward `R` of the prefix it ends, then (given `per_model`, the same response's token rewards under each of
    several reward models, whose weighted sum `result` is) each reward model's `R_1`, `R_2`, ...; with `summary`,
    a last line with `R(x)`, `R(x, y)` and the sum of the credits."""
    pieces = [repr(token) for token in result.tokens]
    width = max([len("token"), *map(len, pieces)])
    extra = "".join(f"  {f'R_{number}':>8}" for number in range(1, len(per_model) + 1))
    lines = [f"{'step':>5}  {'token':<{width}}  {'r_t':>8}  {'R':>8}{extra}"]
    columns = [each.prefix_rewards for each in per_model]
    for number, (piece, r_t, prefix, *others) in enumerate(
        zip(pieces, result.rewards, result.prefix_rewards, *columns, strict=True), start=1
    ):
        extra = "".join(f"  {other:>+8.4f}" for other in others)
        lines.append(f"{number:>5}  {piece:<{width}}  {r_t:>+8.4f}  {prefix:>+8.4f}{extra}")
    if summary:
        lines.append(
            f"R(x) {result.prompt_reward:+.4f}  R(x, y) {result.reward:+.4f}  sum r_t {result.total:+.4f}"
        )
    return lines


__all__ = ["token_rewards_table"]
