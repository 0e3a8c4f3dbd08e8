#!/usr/bin/env python
"""Decoding speed of reward-guided generation against plain greedy decoding, on CPU.

For each configuration, batch size and number of new tokens it measures, in one process and alternating between
the methods in every repetition (so that all of them see the same machine load):

- ``plain``: greedy ``lm.generate()``;
- ``fast``: greedy ``lm.generate()`` guided by ``RewardGuidance(..., scorer="cached")``;
- ``two-rms``: guided by two reward models of the RM's shape and vocabulary at once (``reward_model=[rm, rm2]``),
  each on its own cache; the target is at most 1.1x ``floor-2 = plain + 2 x rm-loop``;
- ``vocab-backbone``: an all-token (vocab) head over the LM's own final hidden state (``scorer="backbone"``: a
  hook keeps the LM's hidden state, the k candidates are k dot products, no RM forward); the target is at most
  1.10x ``plain``;
- ``vocab``: a separate all-token RM of the LM's size (``scorer="vocab"``: one 1-token forward per step on its
  cache); the target is at most 1.15x ``floor-vocab = plain + vocab-loop``;
- ``reference``: the same with ``scorer="reference"`` (re-encodes every candidate prefix; slow, so only run where
  affordable, see ``--reference``);
- ``bridged``: guided by a reward model of the same shape with another tokenizer, ``scorer="bridged"``, the prompts
  given as text; the target is at most 1.5x the time per token of ``fast``;
- ``text``: the same pairing with ``scorer="text"`` (every candidate's whole text re-encoded; slow, like
  ``reference``), the bridged path's reference;
- ``encoder``: an encoder (BERT-shaped) reward model with the other tokenizer, ``scorer="auto"`` (the text
  scorer); slow, quoted against ``reference``;
- ``rm-loop``: a ``hf_rgtg.CachedScorer`` driven by hand over the same number of steps (one reward-model forward
  of k sibling tokens on top of the cache per step). ``floor = plain + rm-loop``: what a guided step costs at
  least when the reward model is as large as the language model;
- ``vocab-loop``: the same with a ``hf_rgtg.scoring.VocabScorer`` of the separate all-token RM (one 1-token forward
  per step, the candidates k dot products). ``floor-vocab = plain + vocab-loop``.

Before measuring a configuration, the paths that must agree (fast and reference, bridged and text) are checked to
give the same 16 greedy tokens at batch 2.

Configurations:

- ``a``: GPT-2 shaped language and reward models (4 layers, hidden size 256, 4 heads), random seeded weights, and
  a byte-level BPE vocabulary of 8,192 tokens trained once on the Python standard library's sources and cached in
  ``benchmarks/.cache``; prompts are held-out text (``/usr/share/common-licenses`` when present).
  For bridged, text and encoder, a second byte-level BPE vocabulary of 6,144 tokens is trained on the same corpus,
  read by a GPT-2 reward model of the same shape and by a BERT-shaped one (4 layers, hidden 256, 4 heads).
- ``b``: SmolLM2-135M-Instruct (``hf_rgtg.load_default_lm()``) and a reward model of the same architecture and
  weights (``AutoModelForPrefixReward.from_pretrained`` on the converted checkpoint, random head); prompts are
  chat-template prompts of exactly 32 real tokens. It has no reward model with another tokenizer.

Every run generates exactly N tokens (``min_new_tokens=max_new_tokens``). By default one run per method and
repetition generates the largest N, and the shorter lengths are read off the same run: a stopping criterion that
never stops records the wall time (and the peak RSS so far) when the N-th token has been appended. Pass
``--separate-lengths`` to run every length as its own ``generate()`` call instead.

Peak RSS is the kernel's high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` before each run,
or, where that is not possible, the maximum of a psutil sampling thread. "Delta" is the peak minus the RSS just
before the run (after ``gc.collect()`` and ``malloc_trim(0)``). The trim hands the pages of every free heap chunk
back to the kernel, so a run counts every heap page it touches, as a first run in a new process would; the
measure is strict (without the trim, a run reusing free heap the process already had counts nothing for it).

Usage::

    python benchmarks/decode_speed.py                  # full run (about 55 minutes on 2 quiet cores)
    python benchmarks/decode_speed.py --quick          # smoke run, a few minutes
    python benchmarks/decode_speed.py --configs a --batches 1 --lengths 64,256 --runs 7
    python benchmarks/decode_speed.py --configs a --methods plain,fast,bridged,rm-loop --lengths 256
    python benchmarks/decode_speed.py --profile        # where the time of a guided step goes (on (b); --profile-config a)
    python benchmarks/decode_speed.py --profile --profile-config a --profile-method bridged

The markdown table is printed and written to ``benchmarks/results/decode_speed.md`` (raw timings to
``decode_speed.json`` beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# First: the harness's __init__ sets HF_HUB_OFFLINE=1 (and TOKENIZERS_PARALLELISM), which transformers reads when it
# is imported.
import harness  # noqa: F401
import torch
import transformers
from configs import CONFIGS
from harness.bench import run_record
from harness.methods import GUIDED, METHODS
from harness.paths import RESULTS_DIR, repo_relative
from harness.profiling import profile
from harness.report import render
from harness.runner import parse_int_list, parse_reference, run_benchmark
from harness.summary import summarise


def parse_args(argv: list[str] | None = None):
    parser = _parser()
    args = parser.parse_args(argv)
    quick = args.quick
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from a, b")
    args.batches = parse_int_list(args.batches or ("1,2" if quick else "1,8"))
    args.lengths = parse_int_list(args.lengths or ("8,32" if quick else "64,256,512"))
    args.runs = args.runs or (2 if quick else 5)
    args.reference_runs = args.reference_runs or (2 if quick else 3)
    args.warmup_tokens = args.warmup_tokens or (4 if quick else 16)
    args.reference = parse_reference(args.reference or ("a:1:32,a:2:8" if quick else "a:1:256,a:8:64"))
    args.methods = (
        [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(METHODS)
    )
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {','.join(METHODS)}")
    if min(args.batches) < 1 or min(args.lengths) < 1 or args.runs < 1:
        parser.error("batches, lengths and runs have to be positive")
    return args


def _parser() -> argparse.ArgumentParser:
    """The options; the defaults left at None depend on --quick and are filled in by `parse_args`.

    Longer than most functions here: one call per option, kept together so that `--help` reads as the code does.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: batches 1,2, lengths 8,32, 2 runs")
    parser.add_argument("--configs", default="a,b", help="comma-separated subset of a,b (default a,b)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8)")
    parser.add_argument(
        "--lengths", default=None, help="comma-separated numbers of new tokens (default 64,256,512)"
    )
    parser.add_argument(
        "--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)} (default all)"
    )
    parser.add_argument("--runs", type=int, default=None, help="measured runs per method (default 5)")
    parser.add_argument(
        "--reference",
        default=None,
        help="where to run the slow paths (reference, text, encoder: each re-encodes every candidate's whole "
        "text or prefix at every step), as config:batch:max_new_tokens items, or 'none' (default a:1:256,a:8:64)",
    )
    parser.add_argument("--reference-runs", type=int, default=None, help="runs of each slow path (default 3)")
    parser.add_argument(
        "--warmup-tokens", type=int, default=None, help="length of the warm-up runs (default 16)"
    )
    parser.add_argument(
        "--separate-lengths",
        action="store_true",
        help="one generate() call per length instead of checkpoints",
    )
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.5,
        help="a run during which other processes kept more cores than this busy is run again (default 0.5)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="how often to rerun a disturbed run (default 2)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="seconds to wait for a quiet machine before a rerun"
    )
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "decode_speed.md")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile guided decoding (on --profile-config) instead of benchmarking",
    )
    parser.add_argument("--profile-config", choices=tuple(CONFIGS), default="b")
    parser.add_argument(
        "--profile-method",
        choices=tuple(GUIDED),
        default="fast",
        help="the guided path to profile (default fast)",
    )
    parser.add_argument("--profile-batch", type=int, default=1)
    parser.add_argument("--profile-tokens", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.profile:
        return profile_main(args)
    return benchmark_main(args)


def profile_main(args) -> int:
    """--profile: write the profile beside --output, as decode_speed_profile_<config>.md (with `_<method>` after
    the config for a path other than fast)."""
    text = profile(args, CONFIGS[args.profile_config])
    suffix = "" if args.profile_method == "fast" else f"_{args.profile_method}"
    path = args.output.with_name(f"{args.output.stem}_profile_{args.profile_config}{suffix}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"Wrote {repo_relative(path)}")
    return 0


def benchmark_main(args) -> int:
    """The benchmark: write --output and the raw runs beside it as JSON."""
    info, results, elapsed = run_benchmark(args, CONFIGS)
    cells = summarise(results)
    text = render(args, info, cells, elapsed, {key: config.label for key, config in CONFIGS.items()})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    raw = {
        "environment": info,
        "runs": [run_record(r) for r in results],
    }
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text)
    print(f"Wrote {repo_relative(args.output)} and {repo_relative(args.output.with_suffix('.json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
