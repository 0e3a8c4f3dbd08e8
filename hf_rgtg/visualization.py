"""Heatmaps of token rewards: self-contained HTML pages (no script, no network fetch) in which each response token
is coloured by its credit `r_t` on a diverging scale centred at 0, with its value, its prefix reward `R` and its id
on hover, and each response's total beside it; and PNG images of the same view, drawn with matplotlib (the `plot`
extra, imported only when a PNG is drawn)."""

from __future__ import annotations

import html
import importlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from transformers import PreTrainedTokenizerBase

from .redistribution import TokenRewards, token_texts
from .trace import GuidanceTrace, StepRecord, output_sequences
from .validation import checked_positive_int, checked_prompt_length

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
    results = _as_list(results)
    return _page(results, labels, [None] * len(results), prompt, title)


def _as_list(results: TokenRewards | Sequence[TokenRewards]) -> list[TokenRewards]:
    return [results] if isinstance(results, TokenRewards) else list(results)


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
    return steps, [trace.prompt_reward(row, prompt_length) for row in rows]


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


# ---------------------------------------------------------------------------------------------------------------
# PNG: the same view drawn with matplotlib's Agg renderer, on a layout computed in pixels

#: The PNG's background: a light grey, so that the box of a token of zero credit (white) still shows.
PAGE_RGB = (247, 247, 247)
#: How a token of whitespace alone shows its characters; in any other token only tabs and newlines are replaced.
VISIBLE_WHITESPACE = {" ": "\u2423", "\t": "\u21e5", "\n": "\u21b5", "\r": "\u240d"}
#: The default width of a PNG, in pixels; long responses wrap within it.
PNG_WIDTH = 1000

_INK_RGB, _GREY_RGB, _RULE_RGB = (34, 34, 34), (85, 85, 85), (221, 221, 221)
# The first installed of these draws each character; the last draws a placeholder for any that none of them has.
_FONTS = ("DejaVu Sans", "Noto Sans CJK JP", "Last Resort High-Efficiency")
_DPI, _SIZE, _TITLE_SIZE = 100, 10, 14  # points at 100 dots per inch
# In pixels: the margin, the label and total columns beside the tokens, a box's padding, the gaps between boxes.
_MARGIN, _LABEL_WIDTH, _TOTAL_WIDTH, _COLUMN_GAP = 16, 170, 150, 12
_PAD_X, _PAD_Y, _BOX_GAP, _LINE_GAP, _ROW_PAD = 3, 4, 2, 4, 6
_LEGEND_WIDTH, _LEGEND_HEIGHT, _LEGEND_TICKS = 300, 12, 26
_MIN_WIDTH = 2 * (_MARGIN + _COLUMN_GAP) + _LABEL_WIDTH + _TOTAL_WIDTH + 100


@dataclass(frozen=True)
class PngText:
    """A line of text in a PNG heatmap: it starts (or, with `align="right"`, ends) at column `x` and sits on row
    `baseline`, in pixels from the image's top-left corner; `size` is in points."""

    x: int
    baseline: int
    text: str
    size: float = _SIZE
    rgb: tuple[int, int, int] = _INK_RGB
    align: str = "left"


@dataclass(frozen=True)
class TokenBox:
    """A token's box in a PNG heatmap: pixel columns `x0` up to `x1` and rows `y0` up to `y1` (ends excluded),
    from the image's top-left corner, filled with `rgb`, with the token's text in it (`text.text`: whitespace
    shown as [`VISIBLE_WHITESPACE`], a token too long for a line cut with "…")."""

    x0: int
    y0: int
    x1: int
    y1: int
    rgb: tuple[int, int, int]
    text: PngText


@dataclass(frozen=True)
class HeatmapLayout:
    """Where [`token_rewards_png`] draws everything, in pixels from the image's top-left corner.

    Args:
        width (`int`), height (`int`): the image's size.
        scale (`float`): the colour scale all rows share, the largest `|r_t|` among them.
        rows (list of lists of [`TokenBox`]): per response, one box per token, in order; a response wraps onto
            as many lines as it needs.
        texts (list of [`PngText`]): the title, the prompt's lines, each row's label and totals, the legend's
            caption.
        rules (list of `int`): the row of the line drawn above each response.
        legend (`tuple[int, int, int, int]`): the colour bar's `(x0, y0, x1, y1)`.
    """

    width: int
    height: int
    scale: float
    rows: list[list[TokenBox]]
    texts: list[PngText]
    rules: list[int]
    legend: tuple[int, int, int, int]


#: The modules of matplotlib the PNGs are drawn with (no pyplot, so no global figure manager and no backend set).
_MATPLOTLIB_MODULES = ("backends.backend_agg", "cm", "colors", "figure", "font_manager", "patches")


def require_matplotlib() -> ModuleType:
    """matplotlib, with the modules the PNG heatmaps are drawn with imported; an `ImportError` that names the fix
    (`pip install 'hf_rgtg[plot]'`) when it is missing. The PNG functions call it; a caller that draws only after
    long work (the command line, before it loads a model) calls it first.

    Examples:

    ```python
    >>> from hf_rgtg.visualization import require_matplotlib
    >>> require_matplotlib().figure.Figure.__name__
    'Figure'
    ```
    """
    try:
        for name in _MATPLOTLIB_MODULES:
            importlib.import_module(f"matplotlib.{name}")
    except ImportError as error:
        raise ImportError(
            f"The PNG heatmaps are drawn with matplotlib, which did not import ({error}). Install it with "
            "`pip install 'hf_rgtg[plot]'`."
        ) from error
    return importlib.import_module("matplotlib")


class _Measure:
    """Text as the Agg renderer draws it at the PNG's resolution: widths in pixels, and the heights of a line."""

    def __init__(self, mpl: ModuleType):
        self.mpl = mpl
        installed = {font.name for font in mpl.font_manager.fontManager.ttflist}
        self.families = [name for name in _FONTS if name in installed] or ["sans-serif"]
        self._renderer = mpl.backends.backend_agg.FigureCanvasAgg(mpl.figure.Figure(dpi=_DPI)).get_renderer()
        self._fonts = {}
        self.ascent, self.descent = self.metrics(_SIZE)
        self.box_height = self.ascent + self.descent + 2 * _PAD_Y
        # From one line of boxes to the next, and from one line of a label (or of the prompt) to the next.
        self.pitch = self.box_height + _LINE_GAP
        self.text_pitch = self.ascent + self.descent + 4

    def font(self, size: float):
        if size not in self._fonts:
            self._fonts[size] = self.mpl.font_manager.FontProperties(family=self.families, size=size)
        return self._fonts[size]

    def width(self, text: str, size: float = _SIZE) -> int:
        return math.ceil(self._renderer.get_text_width_height_descent(text, self.font(size), ismath=False)[0])

    def metrics(self, size: float) -> tuple[int, int]:
        """The ascent and descent of a line at `size`, from tall and deep letters."""
        _, height, descent = self._renderer.get_text_width_height_descent(
            "ÁgjÉ|", self.font(size), ismath=False
        )
        return math.ceil(height - descent), math.ceil(descent)

    def fitted(self, text: str, width: int, size: float = _SIZE) -> str:
        """`text`, cut with "…" where it is wider than `width` pixels."""
        if self.width(text, size) <= width:
            return text
        while text and self.width(text + "…", size) > width:
            text = text[:-1]
        return text + "…"

    def wrapped(self, text: str, width: int) -> list[str]:
        """`text` broken at spaces (and at its newlines) into lines of at most `width` pixels."""
        lines = []
        for paragraph in text.split("\n"):
            line = ""
            for word in paragraph.split(" "):
                joined = f"{line} {word}" if line else word
                if line and self.width(joined) > width:
                    lines.append(line)
                    joined = word
                line = joined
            lines.append(self.fitted(line, width))
        return lines

    def lines(self, lines: list[str], x: int, baseline: int, **style) -> list[PngText]:
        return [PngText(x, baseline + i * self.text_pitch, line, **style) for i, line in enumerate(lines)]


def _visible(token: str) -> str:
    """The text a token's box shows: a token of whitespace alone shows each of its characters, any other its tabs
    and newlines (its spaces show as spaces)."""
    if token.strip():
        return "".join(VISIBLE_WHITESPACE[c] if c in "\t\n\r" else c for c in token)
    return "".join(VISIBLE_WHITESPACE.get(c, c) for c in token)


def _png_boxes(
    result: TokenRewards, left: int, right: int, top: int, scale: float, measure: _Measure
) -> list[TokenBox]:
    """One box per token, laid left to right from `left`, onto a new line where the next would pass `right` and
    after a token with a newline."""
    boxes, x, y = [], left, top
    for token, reward in zip(result.tokens, result.rewards, strict=True):
        shown = measure.fitted(_visible(token), right - left - 2 * _PAD_X)
        width = measure.width(shown) + 2 * _PAD_X
        if x > left and x + width > right:
            x, y = left, y + measure.pitch
        text = PngText(x + _PAD_X, y + _PAD_Y + measure.ascent, shown)
        boxes.append(TokenBox(x, y, x + width, y + measure.box_height, reward_color(reward, scale), text))
        x += width + _BOX_GAP
        if "\n" in token:
            x, y = left, y + measure.pitch
    return boxes


def _png_row(
    result: TokenRewards, label: str, top: int, scale: float, width: int, measure: _Measure
) -> tuple[list[TokenBox], list[PngText], int]:
    """A response's boxes, its label (left) and totals (right), their first lines level; and where it ends."""
    content = top + _ROW_PAD
    left = _MARGIN + _LABEL_WIDTH + _COLUMN_GAP
    right = width - _MARGIN - _TOTAL_WIDTH - _COLUMN_GAP
    boxes = _png_boxes(result, left, right, content, scale, measure)
    baseline = content + _PAD_Y + measure.ascent
    texts = measure.lines(measure.wrapped(label, _LABEL_WIDTH), _MARGIN, baseline, rgb=_GREY_RGB)
    totals = [f"\u03a3 r_t = {result.total:+.3f}", f"R = {result.reward:+.3f}"]
    texts += measure.lines(totals, width - _MARGIN, baseline, align="right")
    bottom = max([content + measure.box_height, *(box.y1 for box in boxes)])
    return boxes, texts, max(bottom, *(text.baseline + measure.descent for text in texts)) + _ROW_PAD


def _png_layout(
    results: list[TokenRewards],
    prompt: str | None,
    labels: Sequence[str] | None,
    title: str,
    width: int,
    measure: _Measure,
) -> HeatmapLayout:
    """The layout of `results` stacked under the title and the prompt, with the legend below."""
    width = checked_positive_int("width", width, f"the image's width in pixels (default {PNG_WIDTH})")
    if width < _MIN_WIDTH:
        raise ValueError(
            f"`width` (={width}) has to be at least {_MIN_WIDTH} pixels, to fit the label, the tokens "
            "and the totals side by side."
        )
    labels, scale = _labels(labels, results), _scale(results)
    ascent, descent = measure.metrics(_TITLE_SIZE)
    heading = measure.fitted(title, width - 2 * _MARGIN, _TITLE_SIZE)
    texts = [PngText(_MARGIN, _MARGIN + ascent, heading, _TITLE_SIZE)]
    y = _MARGIN + ascent + descent + 8
    if prompt is not None:
        lines = measure.wrapped(prompt, width - 2 * _MARGIN)
        texts += measure.lines(lines, _MARGIN, y + measure.ascent, rgb=_GREY_RGB)
        y += len(lines) * measure.text_pitch + 4
    rows, rules = [], []
    for result, label in zip(results, labels, strict=True):
        rules.append(y)
        boxes, row_texts, y = _png_row(result, label, y, scale, width, measure)
        rows.append(boxes)
        texts += row_texts
    left, top = _MARGIN + _LABEL_WIDTH + _COLUMN_GAP, y + 10
    legend = (left, top, left + _LEGEND_WIDTH, top + _LEGEND_HEIGHT)
    baseline = top + (_LEGEND_HEIGHT + measure.ascent) // 2
    after = legend[2] + _COLUMN_GAP
    caption = "r_t = R(x, y\u2264t) \u2212 R(x, y<t); \u03a3 r_t = R(x, y) \u2212 R(x)"
    texts.append(PngText(_MARGIN, baseline, "r_t", rgb=_GREY_RGB))
    texts.append(PngText(after, baseline, measure.fitted(caption, width - _MARGIN - after), rgb=_GREY_RGB))
    height = legend[3] + _LEGEND_TICKS + _MARGIN
    return HeatmapLayout(width, height, scale, rows, texts, rules, legend)


def _rgb(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(channel / 255 for channel in rgb)


def _draw(layout: HeatmapLayout, path: str | os.PathLike[str], measure: _Measure) -> Path:
    """Draw `layout` and write it to `path` as a PNG of exactly `layout.width` by `layout.height` pixels."""
    mpl = measure.mpl
    figure = mpl.figure.Figure(
        figsize=(layout.width / _DPI, layout.height / _DPI), dpi=_DPI, facecolor=_rgb(PAGE_RGB)
    )
    canvas = mpl.backends.backend_agg.FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, layout.width)
    axes.set_ylim(layout.height, 0)  # rows counted down from the top, as in the image
    axes.set_axis_off()
    patches = [((_MARGIN, y, layout.width - _MARGIN, y + 1), _RULE_RGB) for y in layout.rules]
    patches += [((box.x0, box.y0, box.x1, box.y1), box.rgb) for row in layout.rows for box in row]
    for (x0, y0, x1, y1), rgb in patches:
        axes.add_patch(
            mpl.patches.Rectangle(
                (x0, y0), x1 - x0, y1 - y0, facecolor=_rgb(rgb), linewidth=0, antialiased=False
            )
        )
    for text in [*layout.texts, *(box.text for row in layout.rows for box in row)]:
        axes.text(
            text.x,
            text.baseline,
            text.text,
            fontproperties=measure.font(text.size),
            color=_rgb(text.rgb),
            ha=text.align,
            va="baseline",
            parse_math=False,
            usetex=False,
        )
    _colorbar(figure, layout, mpl)
    path = Path(path)
    canvas.print_png(path)
    return path


def _colorbar(figure, layout: HeatmapLayout, mpl: ModuleType) -> None:
    """The legend: the diverging scale of [`reward_color`] from `-scale` through 0 to `scale`."""
    x0, y0, x1, y1 = layout.legend
    axes = figure.add_axes(
        (x0 / layout.width, 1 - y1 / layout.height, (x1 - x0) / layout.width, (y1 - y0) / layout.height)
    )
    colours = [_rgb(NEGATIVE_RGB), _rgb(NEUTRAL_RGB), _rgb(POSITIVE_RGB)]
    cmap = mpl.colors.LinearSegmentedColormap.from_list("token_rewards", colours)
    bound = layout.scale if layout.scale > 0 else 1.0
    bar = figure.colorbar(
        mpl.cm.ScalarMappable(mpl.colors.Normalize(-bound, bound), cmap), cax=axes, orientation="horizontal"
    )
    ticks = [-layout.scale, 0.0, layout.scale] if layout.scale > 0 else [0.0]
    bar.set_ticks(ticks, labels=[f"{tick:+.3f}" if tick else "0" for tick in ticks])
    bar.ax.tick_params(labelsize=_SIZE - 1)
    bar.outline.set_linewidth(0.5)


def heatmap_layout(
    results: TokenRewards | Sequence[TokenRewards],
    *,
    prompt: str | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Token rewards",
    width: int = PNG_WIDTH,
) -> HeatmapLayout:
    """Where [`token_rewards_png`] puts every box and line of text for the same arguments, in pixels: to find a
    token in the image, or to test what was drawn.

    Examples:

    ```python
    >>> from hf_rgtg import TokenRewards
    >>> from hf_rgtg.visualization import heatmap_layout
    >>> result = TokenRewards([7, 8], ["Hi", "\\n"], [(0, 2), (2, 3)], [0.5, 1.25], [0.25, 0.75], prompt_reward=0.25)
    >>> layout = heatmap_layout(result)
    >>> [box.text.text for box in layout.rows[0]], layout.rows[0][1].rgb, layout.width
    (['Hi', '↵'], (26, 152, 80), 1000)
    ```
    """
    measure = _Measure(require_matplotlib())
    return _png_layout(_as_list(results), prompt, labels, title, width, measure)


def token_rewards_png(
    results: TokenRewards | Sequence[TokenRewards],
    path: str | os.PathLike[str],
    *,
    prompt: str | None = None,
    labels: Sequence[str] | None = None,
    title: str = "Token rewards",
    width: int = PNG_WIDTH,
) -> Path:
    """The view of [`token_rewards_html`] as a PNG image: each token a box coloured by its `r_t` on the same
    diverging scale (one for all rows, the largest `|r_t|` among them) with the token's text in it, the responses
    stacked with their label and totals (`Σ r_t` and `R`) beside them, and a colour bar for `r_t`.

    A response wraps onto as many lines as it needs within `width`; a token with a newline ends its line. A token
    of whitespace alone shows its characters as `␣`, `⇥` and `↵`. Drawn with matplotlib's Agg renderer, imported
    here (`pip install 'hf_rgtg[plot]'`); [`heatmap_layout`] tells where each box is.

    Args:
        results ([`TokenRewards`] or a list of them): from [`token_rewards`].
        path (`str` or `os.PathLike`): the `.png` file to write; its folder has to exist.
        prompt (`str`, *optional*): shown above the responses.
        labels (list of `str`, *optional*): one per response; "response 1", "response 2", ... by default.
        title (`str`, *optional*): the heading.
        width (`int`, *optional*, defaults to 1000): the image's width in pixels; its height follows.

    Returns:
        `pathlib.Path`: the file written.

    Examples:

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> from matplotlib.image import imread
    >>> from hf_rgtg import TokenRewards
    >>> from hf_rgtg.visualization import heatmap_layout, token_rewards_png
    >>> result = TokenRewards([7, 8], ["Hi", "!"], [(0, 2), (2, 3)], [0.5, 1.25], [0.25, 0.75], prompt_reward=0.25)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     image = imread(token_rewards_png(result, Path(folder) / "hi.png", prompt="Say hi"))
    >>> box = heatmap_layout(result, prompt="Say hi").rows[0][1]  # "!", the larger credit: the green end
    >>> image.shape, (image[box.y0 + 2, (box.x0 + box.x1) // 2, :3] * 255).round().astype(int).tolist()
    ((..., 1000, 4), [26, 152, 80])
    ```
    """
    measure = _Measure(require_matplotlib())
    return _draw(_png_layout(_as_list(results), prompt, labels, title, width, measure), path, measure)


def trace_png(
    trace: GuidanceTrace,
    sequences: torch.Tensor,
    prompt_length: int,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    title: str = "Reward-guided generation",
    width: int = PNG_WIDTH,
) -> Path:
    """The view of [`trace_html`] as a PNG, drawn as [`token_rewards_png`] draws token rewards: per sequence its
    chosen tokens, each coloured by how much it moved the prefix reward. (The candidates of the page's hover text
    are not drawn.) The arguments are those of [`trace_html`], with the file to write and the image's `width`.

    Examples:

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> from matplotlib.image import imread
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import GuidanceTrace
    >>> from hf_rgtg.visualization import trace_png
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    >>> trace = GuidanceTrace()
    >>> trace.add_candidates(trace.add_root((0,), reward=0.5), [1, 0], [2.0, -1.0])
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     image = imread(trace_png(trace, [[0, 1]], 1, tokenizer, Path(folder) / "trace.png"))
    >>> colours = (image[..., :3] * 255).round().astype(int).reshape(-1, 3).tolist()
    >>> image.shape[1], [26, 152, 80] in colours  # "b" moved the reward by +1.5, the scale's green end
    (1000, True)
    ```
    """
    steps, prompt_rewards = _trace_steps(trace, sequences, prompt_length)
    return steps_png(steps, prompt_rewards, tokenizer, path, labels=labels, title=title, width=width)


def steps_png(
    steps: Sequence[Sequence[StepRecord]],
    prompt_rewards: Sequence[float],
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    title: str = "Reward-guided generation",
    width: int = PNG_WIDTH,
) -> Path:
    """The PNG [`trace_png`] draws, from each sequence's [`StepRecord`] list and the reward of its prompt (as
    [`steps_html`] takes them).

    Examples:

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tokenizers import Tokenizer, models
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg import StepRecord
    >>> from hf_rgtg.visualization import steps_png
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = steps_png([[StepRecord(token=1, reward=2.0)]], [0.5], tokenizer, Path(folder) / "steps.png")
    ...     path.read_bytes()[1:4]
    b'PNG'
    ```
    """
    results = _step_results(steps, prompt_rewards, tokenizer)
    return token_rewards_png(results, path, labels=labels, title=title, width=width)


__all__ = [
    "NEGATIVE_RGB",
    "NEUTRAL_RGB",
    "PAGE_RGB",
    "PNG_WIDTH",
    "POSITIVE_RGB",
    "VISIBLE_WHITESPACE",
    "HeatmapLayout",
    "PngText",
    "TokenBox",
    "heatmap_layout",
    "require_matplotlib",
    "reward_color",
    "steps_html",
    "steps_png",
    "token_rewards_html",
    "token_rewards_png",
    "trace_html",
    "trace_png",
]
