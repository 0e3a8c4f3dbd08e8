#!/usr/bin/env python
"""The token-rewards example of the docs: SmolLM2 (the embedded default LM) answers two prompts, greedily, the
default reward model scores each reply token by token, and the heatmap is rendered by headless chromium and
drawn again with matplotlib.

Writes docs/images/token-rewards.html, docs/images/token-rewards.png (the page's screenshot, where chromium is
installed) and docs/images/token-rewards-matplotlib.png (token_rewards_png; needs the `plot` extra), and prints
the markdown table of the largest and smallest token rewards that docs/token-rewards.md shows.

    python scripts/render_token_rewards_example.py
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch

from hf_rgtg import encode_prompt, load_default_lm, load_default_rm, token_rewards
from hf_rgtg.visualization import token_rewards_html, token_rewards_png

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
QUESTIONS = ["What do you think of rainy days?", "How was your weekend?"]


def replies(max_new_tokens: int = 40) -> list[str]:
    lm, tokenizer = load_default_lm()
    texts = []
    for question in QUESTIONS:
        inputs = encode_prompt(tokenizer, question)
        with torch.no_grad():
            out = lm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts.append(
            tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        )
    return texts


def main() -> None:
    _, tokenizer = load_default_lm()
    rm = load_default_rm()
    answers = replies()
    results = [
        token_rewards(rm, tokenizer, [{"role": "user", "content": q}], a)
        for q, a in zip(QUESTIONS, answers, strict=True)
    ]
    title = "Default reward model, token by token"
    page = token_rewards_html(results, labels=QUESTIONS, title=title)
    IMAGES.mkdir(parents=True, exist_ok=True)
    token_rewards_png(
        results, IMAGES / "token-rewards-matplotlib.png", labels=QUESTIONS, title=title, width=1100
    )
    html_path = IMAGES / "token-rewards.html"
    html_path.write_text(page, encoding="utf-8")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is not None:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1100,420",
                f"--screenshot={IMAGES / 'token-rewards.png'}",
                html_path.as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    rows = [
        (r_t, token, question)
        for question, result in zip(QUESTIONS, results, strict=True)
        for token, r_t in zip(result.tokens, result.rewards, strict=True)
    ]
    rows.sort(key=lambda row: row[0])
    print("| token | r_t | reply to |\n| --- | ---: | --- |")
    for r_t, token, question in [*rows[::-1][:5], *rows[:5]]:
        print(f"| `{token!r}` | {r_t:+.3f} | {question} |")
    for question, result in zip(QUESTIONS, results, strict=True):
        print(
            f"\n{question}: R(x) {result.prompt_reward:+.3f}, R(x, y) {result.reward:+.3f}, total {result.total:+.3f}"
        )


if __name__ == "__main__":
    main()
