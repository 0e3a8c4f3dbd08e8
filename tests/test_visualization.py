"""Heatmaps of token rewards (hf_rgtg/visualization.py): structure and values, the page as a real browser
renders it (headless chromium, where installed), and the PNG rendering read back pixel by pixel."""

import itertools
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from conftest import guided, left_padded, models, tiny_prefix_rm

from hf_rgtg import TokenRewards, token_rewards
from hf_rgtg.visualization import (
    NEGATIVE_RGB,
    NEUTRAL_RGB,
    PAGE_RGB,
    POSITIVE_RGB,
    heatmap_layout,
    reward_color,
    steps_png,
    token_rewards_html,
    token_rewards_png,
    trace_html,
    trace_png,
)

RESPONSES = ["What a great day to learn something new.", "I hate it.", "Thank you so much!"]


class Spans(HTMLParser):
    """The attributes and text of every token span, and each row's total."""

    def __init__(self):
        super().__init__()
        self.spans, self.totals, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and attrs.get("class") == "tok":
            self._open = {**attrs, "text": ""}
            self.spans.append(self._open)
        if "data-total" in attrs:
            self.totals.append(float(attrs["data-total"]))

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag):
        if tag == "span":
            self._open = None


def parsed(page):
    parser = Spans()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def results(tokenizer):
    return token_rewards(tiny_prefix_rm("gpt2", seed=11), tokenizer, "Tell me about your day.", RESPONSES)


def extremes(results):
    rewards = [r for result in results for r in result.rewards]
    return rewards.index(max(rewards)), rewards.index(min(rewards)), max(map(abs, rewards))


def test_every_token_is_a_span_with_its_values_and_the_totals_beside(results):
    page = token_rewards_html(results, prompt="Tell me about your day.", labels=["a", "b", "c"])
    spans = parsed(page)
    tokens = [token for result in results for token in result.tokens]
    rewards = [r for result in results for r in result.rewards]
    assert [span["text"] for span in spans.spans] == tokens
    assert [float(span["data-reward"]) for span in spans.spans] == pytest.approx(rewards, rel=1e-5)
    assert spans.totals == pytest.approx([result.total for result in results], rel=1e-5)
    first = results[0]
    assert spans.spans[0]["title"] == (
        f"r_t = {first.rewards[0]:+.4f} | R = {first.prefix_rewards[0]:+.4f} | id {first.token_ids[0]}"
    )
    # Self-contained: no script, nothing fetched.
    assert "<script" not in page and not re.search(r"(src|href)=|url\(|@import", page)


def test_colours_diverge_from_white_at_zero_on_one_shared_scale(results):
    spans = parsed(token_rewards_html(results)).spans
    top, bottom, scale = extremes(results)
    rewards = [r for result in results for r in result.rewards]
    for index in (top, bottom):
        expected = "rgb({}, {}, {})".format(*reward_color(rewards[index], scale))
        assert expected in spans[index]["style"]
    # The largest magnitude reaches its end of the scale; zero is white.
    assert reward_color(scale, scale) == POSITIVE_RGB and reward_color(-scale, scale) == NEGATIVE_RGB
    assert reward_color(0.0, scale) == (255, 255, 255) and reward_color(1.0, 0.0) == (255, 255, 255)


def test_one_result_and_bad_labels():
    result = TokenRewards([7], ["Hi"], [(0, 2)], [0.5], [0.25], prompt_reward=0.25)
    assert parsed(token_rewards_html(result)).totals == [0.25]
    with pytest.raises(ValueError, match="2 labels for 1 results"):
        token_rewards_html([result], labels=["a", "b"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Reads back what the browser rendered: each token span's computed background and hover text.
READ_BACK = """<script>
for (const span of document.querySelectorAll("span.tok")) {
  span.setAttribute("data-rendered-bg", getComputedStyle(span).backgroundColor);
  span.setAttribute("data-rendered-width", span.getBoundingClientRect().width > 0 ? "1" : "0");
}
document.body.setAttribute("data-spans", document.querySelectorAll("span.tok").length);
</script>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)"
)
def test_the_page_renders_in_a_headless_browser(results, tmp_path):
    page = token_rewards_html(results, prompt="Tell me about your day.")
    path = tmp_path / "heatmap.html"
    path.write_text(page.replace("</body>", READ_BACK + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    tokens = [token for result in results for token in result.tokens]
    assert re.search(r'data-spans="(\d+)"', dom).group(1) == str(len(tokens))
    spans = parsed(dom).spans
    top, bottom, scale = extremes(results)
    rewards = [r for result in results for r in result.rewards]
    for index in (top, bottom):
        assert spans[index]["data-rendered-bg"] == "rgb({}, {}, {})".format(
            *reward_color(rewards[index], scale)
        )
    assert spans[top]["title"].startswith(f"r_t = {rewards[top]:+.4f} | R = ")
    assert all(span["data-rendered-width"] == "1" for span in spans if span["text"])
    screenshot = tmp_path / "heatmap.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={screenshot}",
            path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_guided_generation_trace_is_drawn_with_its_candidates(tokenizer):
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=5, do_sample=False, top_k=3)
    page = trace_html(guidance.trace, out, ids.shape[1], tokenizer, labels=["a", "b", "c"])
    spans = parsed(page).spans
    steps = [step for row in out for step in guidance.trace.steps(row, ids.shape[1])]
    assert len(spans) == len(steps)
    assert [float(span["data-prefix-reward"]) for span in spans] == pytest.approx(
        [s.reward for s in steps], rel=1e-5
    )
    assert [int(span["data-token-id"]) for span in spans] == [s.token for s in steps]
    # Each hover lists the step's k candidates with their rewards.
    assert all(
        len(re.findall(r" [+-]\d+\.\d{3}(?:,|$)", span["title"].split("candidates: ")[1])) == 3
        for span in spans
    )
    # The first step's credit is measured from the prompt's own reward.
    root = guidance.trace.rewards[guidance.trace.roots[tuple(out[0, : ids.shape[1]].tolist())]]
    assert float(spans[0]["data-reward"]) == pytest.approx(steps[0].reward - root, rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The PNG rendering


def known(tokens, rewards, prompt_reward=0.0):
    """TokenRewards with the given texts and credits (ids and offsets made up)."""
    prefix = [prompt_reward + sum(rewards[: i + 1]) for i in range(len(rewards))]
    return TokenRewards(
        list(range(len(tokens))), tokens, [(0, 0)] * len(tokens), prefix, rewards, prompt_reward
    )


#: Two rows on one scale of 2: the ends of it, a zero, an empty token (a character's first bytes) between.
KNOWN = [known(["Good", " day", "", " indeed"], [2.0, 0.0, 0.25, -0.5]), known(["Bad", "!"], [-2.0, 0.5])]


def pixels(path):
    """The PNG at `path` as (height, width, 3) integer RGB."""
    from matplotlib.image import imread

    return (imread(path)[..., :3] * 255).round().astype(int)


def inside(image, box):
    """The colour inside `box`, above its text: its fill."""
    return tuple(image[box.y0 + 2, (box.x0 + box.x1) // 2].tolist())


def close(rgb, expected):
    return max(abs(a - b) for a, b in zip(rgb, expected, strict=True)) <= 1


def test_the_png_colours_every_token_box_on_the_shared_scale(tmp_path):
    path = token_rewards_png(KNOWN, str(tmp_path / "known.png"), prompt="Say something", labels=["a", "b"])
    assert path == tmp_path / "known.png"
    layout = heatmap_layout(KNOWN, prompt="Say something", labels=["a", "b"])
    image = pixels(path)
    assert image.shape == (layout.height, layout.width, 3) and layout.scale == 2.0
    boxes = [box for row in layout.rows for box in row]
    assert [len(row) for row in layout.rows] == [4, 2]
    colours = [inside(image, box) for box in boxes]
    assert close(colours[0], POSITIVE_RGB) and close(colours[4], NEGATIVE_RGB)  # "Good" +2, "Bad" -2
    assert close(colours[1], NEUTRAL_RGB) and NEUTRAL_RGB != PAGE_RGB  # " day" 0: white, on the grey page
    rewards = [r for result in KNOWN for r in result.rewards]
    assert all(close(c, reward_color(r, 2.0)) for c, r in zip(colours, rewards, strict=True))
    # Between two boxes of a line, the page shows.
    assert all(close(tuple(image[a.y0 + 2, a.x1].tolist()), PAGE_RGB) for a in boxes[:3])


def test_the_png_has_one_box_per_token_counted_in_the_image(tmp_path):
    rewards = [0.3, -0.1, 0.0, 0.7, -0.4, 0.0, 0.2]
    result = known(["A", " tiny", "", " test", ",", " ", "ok"], rewards)
    image = pixels(token_rewards_png(result, tmp_path / "count.png"))
    (row,) = heatmap_layout(result).rows
    line = image[row[0].y0 + 2, row[0].x0 - 1 : row[-1].x1 + 1]
    page = (line == PAGE_RGB).all(axis=1)
    starts = int((page[:-1] & ~page[1:]).sum())  # where the page gives way to a box
    assert starts == len(rewards)
    assert [box.text.text for box in row] == ["A", " tiny", "", " test", ",", "\u2423", "ok"]


def test_the_png_stacks_rows_and_wraps_a_long_response_within_its_width(tmp_path):
    one = pixels(token_rewards_png(KNOWN[:1], tmp_path / "one.png"))
    two = pixels(token_rewards_png(KNOWN, tmp_path / "two.png"))
    assert one.shape[1] == two.shape[1] == 1000 and two.shape[0] > one.shape[0]
    layout = heatmap_layout(KNOWN)
    assert layout.rules[0] < min(b.y0 for b in layout.rows[0]) <= max(b.y1 for b in layout.rows[0])
    assert max(b.y1 for b in layout.rows[0]) < layout.rules[1] < min(b.y0 for b in layout.rows[1])
    long = known([" word"] * 400, [(-1) ** i * (i % 7) / 7 for i in range(400)])
    lines = {}
    for width in (1000, 600):
        layout = heatmap_layout(long, width=width)
        (boxes,) = layout.rows
        tops = sorted({box.y0 for box in boxes})
        lines[width] = len(tops)
        assert layout.width == width and all(0 < box.x0 < box.x1 < width for box in boxes)
        # Each line starts at the same column; boxes follow one another, never overlapping.
        assert {min(b.x0 for b in boxes if b.y0 == top) for top in tops} == {boxes[0].x0}
        assert all(a.x1 < b.x0 or b.y0 > a.y0 for a, b in itertools.pairwise(boxes))
    assert 10 < lines[1000] < lines[600]
    image = pixels(token_rewards_png(long, tmp_path / "long.png"))
    assert image.shape[1] == 1000 and image.shape[0] == heatmap_layout(long).height


def test_the_png_shows_whitespace_newlines_and_multibyte_text(tmp_path):
    result = known([" ", "\n", "caf\u00e9", " \u65e5\u672c", "", "a\tb", " $x$", "\ttab"], [0.5] * 8)
    (boxes,) = heatmap_layout(result).rows
    assert [box.text.text for box in boxes] == [
        "\u2423",
        "\u21b5",
        "caf\u00e9",
        " \u65e5\u672c",
        "",
        "a\u21e5b",
        " $x$",
        "\u21e5tab",
    ]
    # A newline ends its line: the token after it starts the next one.
    assert boxes[2].y0 > boxes[1].y0 and boxes[2].x0 == boxes[0].x0
    assert boxes[3].x1 - boxes[3].x0 > boxes[2].x1 - boxes[2].x0 - 10  # the two ideographs take room
    image = pixels(token_rewards_png(result, tmp_path / "text.png"))
    assert all(close(inside(image, box), reward_color(0.5, 0.5)) for box in boxes)


def test_the_png_refuses_a_narrow_width():
    with pytest.raises(ValueError, match="`width` \\(=200\\) has to be at least"):
        heatmap_layout(KNOWN, width=200)


def test_without_matplotlib_the_png_names_the_extra(without_matplotlib, tmp_path):
    with pytest.raises(ImportError, match=re.escape("pip install 'hf_rgtg[plot]'")):
        token_rewards_png(KNOWN, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, hf_rgtg.visualization; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    assert out.stdout.strip() == "False"


def test_a_guided_trace_as_a_png_draws_the_same_rows_as_the_page(tokenizer, tmp_path):
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=5, do_sample=False, top_k=3)
    labels = ["a", "b", "c"]
    path = trace_png(guidance.trace, out, ids.shape[1], tokenizer, tmp_path / "trace.png", labels=labels)
    spans = parsed(trace_html(guidance.trace, out, ids.shape[1], tokenizer)).spans
    rewards = [float(span["data-reward"]) for span in spans]
    # The page's rows, rebuilt from its spans, lay out as the trace's PNG is drawn.
    rows, start = [], 0
    for row in out:
        count = len(guidance.trace.steps(row, ids.shape[1]))
        chunk = spans[start : start + count]
        rows.append(known([s["text"] for s in chunk], [float(s["data-reward"]) for s in chunk], 0.0))
        start += count
    layout = heatmap_layout(rows, labels=labels, title="Reward-guided generation")
    image = pixels(path)
    assert image.shape == (layout.height, layout.width, 3)
    scale = max(map(abs, rewards))
    boxes = [box for row in layout.rows for box in row]
    assert len(boxes) == len(spans)
    assert all(close(inside(image, b), reward_color(r, scale)) for b, r in zip(boxes, rewards, strict=True))
    # steps_png, from the steps and the prompts' rewards, draws the same image.
    steps = [guidance.trace.steps(row, ids.shape[1]) for row in out]
    roots = [guidance.trace.rewards[guidance.trace.roots[tuple(row[: ids.shape[1]].tolist())]] for row in out]
    again = pixels(steps_png(steps, roots, tokenizer, tmp_path / "steps.png", labels=labels))
    assert (again == image).all()
