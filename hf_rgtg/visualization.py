"""Heatmaps of token rewards: self-contained HTML pages (no script, no network fetch) in which each response token
is coloured by its credit `r_t` on a diverging scale centred at 0, with its value, its prefix reward `R` and its id
on hover, and each response's total beside it."""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .redistribution import TokenRewards, token_texts
from .trace import GuidanceTrace, StepRecord, output_sequences
from .validation import checked_prompt_length

#: The ends of the diverging scale: the colour of the most negative and of the most positive credit (RGB).
NEGATIVE_RGB = (215, 48, 39)
POSITIVE_RGB = (26, 152, 80)
NEUTRAL_RGB = (255, 255, 255)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; }
.prompt { color: #555; white-space: pre-wrap; margin-bottom: 1em; }
.row { display: flex; gap: 1em; align-items: baseline; padding: .4em 0; border-top: 1px solid #ddd; }
.label { min-width: 8em; color: #555; }
.text { flex: 1; white-space: pre-wrap; line-height: 1.9; font-family: ui-monospace, monospace; }
.tok { padding: .1em 0; border-radius: 2px; }
.tok:hover { outline: 1px solid #222; }
.total { min-width: 11em; text-align: right; font-family: ui-monospace, monospace; }
.legend { margin-top: 1em; color: #555; font-size: .9em; }
.legend span { padding: .1em .5em; font-family: ui-monospace, monospace; }
"""


def reward_color(value: float, scale: float) -> tuple[int, int, int]:
    """The colour of credit `value` when `scale` is the largest credit's magnitude: white at 0, the negative or
    positive end at `-scale` and `scale`."""
    if scale <= 0:
        return NEUTRAL_RGB
    weight = min(abs(value) / scale, 1.0)
    end = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    return tuple(round(n + (e - n) * weight) for n, e in zip(NEUTRAL_RGB, end, strict=True))


def _css(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _token_span(
    token: str, token_id: int, reward: float, prefix_reward: float, scale: float, extra: str = ""
) -> str:
    hover = f"r_t = {reward:+.4f} | R = {prefix_reward:+.4f} | id {token_id}{extra}"
    return (
        f'<span class="tok" style="background-color: {_css(reward_color(reward, scale))}" '
        f'title="{html.escape(hover)}" data-reward="{reward:.6g}" data-prefix-reward="{prefix_reward:.6g}" '
        f'data-token-id="{token_id}">{html.escape(token)}</span>'
    )


def _row(result: TokenRewards, label: str, scale: float, extras: Sequence[str] | None = None) -> str:
    extras = extras if extras is not None else [""] * len(result.tokens)
    spans = "".join(
        _token_span(token, token_id, reward, prefix_reward, scale, extra)
        for token, token_id, reward, prefix_reward, extra in zip(
            result.tokens, result.token_ids, result.rewards, result.prefix_rewards, extras, strict=True
        )
    )
    total = f"&Sigma; r_t = {result.total:+.3f}<br>R = {result.reward:+.3f}"
    return (
        f'<div class="row"><div class="label">{html.escape(label)}</div><div class="text">{spans}</div>'
        f'<div class="total" data-total="{result.total:.6g}">{total}</div></div>'
    )


def token_rewards_html(
    results: TokenRewards | Sequence[TokenRewards],
    *,
    prompt: str | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Token rewards",
) -> str:
    """A self-contained HTML page of one or several responses' token rewards, stacked for comparison.

    All responses share one colour scale (the largest `|r_t|` among them), so colours compare across rows. The
    page has no script and fetches nothing.

    Args:
        results ([`TokenRewards`] or a list of them): from [`token_rewards`], e.g. several responses to one prompt.
        prompt (`str`, *optional*): shown above the responses.
        labels (list of `str`, *optional*): one per response; "response 1", "response 2", ... by default.
        title (`str`, *optional*): the page's title and heading.

    Returns:
        `str`: the page, to write to a `.html` file.

    Examples:

    ```python
    >>> from hf_rgtg import TokenRewards
    >>> from hf_rgtg.visualization import token_rewards_html
    >>> result = TokenRewards([7, 8], ["Hi", "!"], [(0, 2), (2, 3)], [0.5, 1.25], [0.25, 0.75], prompt_reward=0.25)
    >>> page = token_rewards_html(result, prompt="Say hi")
    >>> page.count('class="tok"'), "r_t = +0.7500 | R = +1.2500 | id 8" in page
    (2, True)
    ```
    """
    results = [results] if isinstance(results, TokenRewards) else list(results)
    return _page(results, labels, [None] * len(results), prompt, title)


def _labels(labels: Sequence[str] | None, results: list[TokenRewards]) -> list[str]:
    """One label per result: `labels`, or "response 1", "response 2", ..."""
    labels = list(labels) if labels is not None else [f"response {i + 1}" for i in range(len(results))]
    if len(labels) != len(results):
        raise ValueError(f"Got {len(labels)} labels for {len(results)} results; give one label per result.")
    return labels


def _scale(results: list[TokenRewards]) -> float:
    """The colour scale all rows share: the largest `|r_t|` among them (0 when there is none)."""
    return max((abs(r) for result in results for r in result.rewards), default=0.0)


def _page(
    results: list[TokenRewards],
    labels: Sequence[str] | None,
    extras: list[list[str] | None],
    prompt: str | None,
    title: str,
) -> str:
    """The page of `results` stacked, each token's hover text followed by its `extras` entry."""
    labels = _labels(labels, results)
    scale = _scale(results)
    rows = "".join(
        _row(result, label, scale, extra)
        for result, label, extra in zip(results, labels, extras, strict=True)
    )
    prompt_html = f'<div class="prompt">{html.escape(prompt)}</div>' if prompt is not None else ""
    legend = (
        f'<div class="legend">r_t from <span style="background-color: {_css(NEGATIVE_RGB)}">{-scale:+.3f}</span>'
        f' through <span style="background-color: {_css(NEUTRAL_RGB)}">0</span> to '
        f'<span style="background-color: {_css(POSITIVE_RGB)}">{scale:+.3f}</span>; hover a token for its '
        "credit r_t, its prefix reward R and its id.</div>"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{prompt_html}{rows}{legend}"
        "</body></html>\n"
    )


def trace_html(
    trace: GuidanceTrace,
    sequences: torch.Tensor,
    prompt_length: int,
    tokenizer: PreTrainedTokenizerBase,
    *,
    labels: Sequence[str] | None = None,
    title: str = "Reward-guided generation",
) -> str:
    """The page of a guided generation's trace, drawn as [`token_rewards_html`] draws token rewards: per step the
    chosen token, coloured by how much it moved the prefix reward (`r_t = R(y<=t) - R(y<t)`), with its prefix reward
    `R` and, when the guidance recorded them (`record_candidates=True`), the k candidates and their rewards on
    hover.

    Args:
        trace ([`GuidanceTrace`]): `RewardGuidance.trace` after the `generate()` call.
        sequences (`torch.LongTensor`): what that call returned (or its output object).
        prompt_length (`int`): the prompts' length in `sequences`.
        tokenizer (`PreTrainedTokenizerBase`): the language model's tokenizer.
        labels (list of `str`, *optional*): one per sequence.
        title (`str`, *optional*): the page's title.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import GuidanceTrace
    >>> from hf_rgtg.visualization import trace_html
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    >>> trace = GuidanceTrace(record_candidates=True)
    >>> trace.add_candidates(trace.add_root((0,), reward=0.5), [1, 0], [2.0, -1.0])
    >>> page = trace_html(trace, [[0, 1]], prompt_length=1, tokenizer=tokenizer)
    >>> "r_t = +1.5000 | R = +2.0000 | id 1 | candidates: &#x27;b&#x27; +2.000, &#x27;a&#x27; -1.000" in page
    True
    ```
    """
    steps, prompt_rewards = _trace_steps(trace, sequences, prompt_length)
    return steps_html(steps, prompt_rewards, tokenizer, labels=labels, title=title)


def _trace_steps(
    trace: GuidanceTrace, sequences: torch.Tensor, prompt_length: int
) -> tuple[list[list[StepRecord]], list[float]]:
    """Each sequence's steps in `trace` and the reward of its prompt."""
    sequences = output_sequences(sequences)
    prompt_length = checked_prompt_length(prompt_length, sequences.shape[1])
    rows = sequences.tolist()
    steps = [trace.steps(row, prompt_length) for row in rows]
    return steps, [trace.rewards[trace.roots[tuple(row[:prompt_length])]] for row in rows]


def steps_html(
    steps: Sequence[Sequence[StepRecord]],
    prompt_rewards: Sequence[float],
    tokenizer: PreTrainedTokenizerBase,
    *,
    labels: Sequence[str] | None = None,
    title: str = "Reward-guided generation",
) -> str:
    """The page [`trace_html`] draws, from each sequence's [`StepRecord`] list (as `GuidanceTrace.steps` or the
    guided pipeline's `return_trace=True` give them) and the reward of its prompt.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import StepRecord
    >>> from hf_rgtg.visualization import steps_html
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    >>> page = steps_html([[StepRecord(token=1, reward=2.0)]], [0.5], tokenizer)
    >>> "r_t = +1.5000 | R = +2.0000 | id 1" in page
    True
    ```
    """
    extras = [
        [_candidates_text(tokenizer, step.candidates, step.candidate_rewards) for step in row_steps]
        for row_steps in steps
    ]
    return _page(_step_results(steps, prompt_rewards, tokenizer), labels, extras, None, title)


def _step_results(
    steps: Sequence[Sequence[StepRecord]], prompt_rewards: Sequence[float], tokenizer: PreTrainedTokenizerBase
) -> list[TokenRewards]:
    """Each sequence's steps as the [`TokenRewards`] of its chosen tokens: `r_t` is how much each step moved the
    prefix reward, the first measured from the prompt's reward."""
    if len(prompt_rewards) != len(steps):
        raise ValueError(
            f"Got {len(prompt_rewards)} prompt rewards for {len(steps)} step lists; give one each."
        )
    results = []
    for row_steps, root_reward in zip(steps, prompt_rewards, strict=True):
        ids = [step.token for step in row_steps]
        prefix_rewards = [step.reward for step in row_steps]
        before = [root_reward, *prefix_rewards[:-1]]
        texts = token_texts(tokenizer, ids)
        ends = [sum(map(len, texts[: i + 1])) for i in range(len(texts))]
        offsets = list(zip([0, *ends[:-1]], ends, strict=True))
        rewards = [after - prior for after, prior in zip(prefix_rewards, before, strict=True)]
        results.append(TokenRewards(ids, texts, offsets, prefix_rewards, rewards, root_reward))
    return results


def _candidates_text(tokenizer: PreTrainedTokenizerBase, candidates, rewards) -> str:
    if candidates is None:
        return ""
    pieces = [
        f"{tokenizer.decode([token])!r} {reward:+.3f}"
        for token, reward in zip(candidates, rewards, strict=True)
    ]
    return " | candidates: " + ", ".join(pieces)


__all__ = [
    "NEGATIVE_RGB",
    "NEUTRAL_RGB",
    "POSITIVE_RGB",
    "reward_color",
    "steps_html",
    "token_rewards_html",
    "trace_html",
]
