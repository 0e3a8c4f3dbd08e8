"""Heatmaps of token rewards (hf_rgtg/visualization.py): structure and values, and the page as a real browser
renders it (headless chromium, where installed)."""

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from conftest import guided, left_padded, models, tiny_prefix_rm

from hf_rgtg import TokenRewards, token_rewards
from hf_rgtg.visualization import NEGATIVE_RGB, POSITIVE_RGB, reward_color, token_rewards_html, trace_html

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
