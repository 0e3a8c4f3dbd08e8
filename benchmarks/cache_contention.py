#!/usr/bin/env python
"""How much slower the language model and the reward model run when their steps alternate, on configuration (a).

`decode_speed.py` measures the floor of a guided step as plain decoding plus the reward model's k-token step, each
timed on its own. When the two models run in turn, each one's weights and caches push the other's out of the CPU's
last-level cache, and both get slower; that part of the gap between the fast path and the floor belongs to the
machine, not to the guidance's bookkeeping. This script measures it without `generate()`, the logits processor or
the stopping criteria:

- ``LM``: one language-model forward of one token per row on its `DynamicCache` (what `generate()` calls), then
  the argmax;
- ``RM``: one `CachedScorer` step: `score` k random candidates per row on the cache, `advance` by one of them;
- ``LM+RM``: both, in turn, each timed separately;
- ``LM + touch``: the LM step with a sum over X MiB of unrelated memory between steps, which shows the size of the
  last-level cache the LM's step fits in.

Usage::

    python benchmarks/cache_contention.py                    # about 4 minutes on 2 cores
    python benchmarks/cache_contention.py --batches 1 --lengths 256 --runs 3

It prints the tables and writes ``benchmarks/results/cache_contention.md``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks directory is not a package
from configs.gpt2_bpe import setup_a  # noqa: E402
from harness.configuration import weight_bytes  # noqa: E402
from harness.paths import MIB  # noqa: E402
from harness.runner import parse_int_list  # noqa: E402

from hf_rgtg import CachedScorer  # noqa: E402
from hf_rgtg.compat import cache_kwargs  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cache_contention.md"


class Loops:
    """The LM and RM steps of configuration (a), timed on their own, in turn, or with memory touched in between."""

    def __init__(self, batch: int, prompt_length: int, max_new_tokens: int, top_k: int, seed: int):
        self.setup = setup_a(batch, prompt_length, max_new_tokens, seed)
        self.ids = self.setup.prompts[:batch]
        self.top_k = top_k
        self.batch = batch

    @torch.no_grad()
    def run(self, steps: int, lm: bool, rm: bool, touch_mib: int = 0) -> tuple[float, float]:
        """Milliseconds per step spent in the LM and in the RM (0 for a model that did not run)."""
        model, batch, k = self.setup.lm, self.batch, self.top_k
        junk = torch.ones(touch_mib * MIB // 4) if touch_mib else None
        generator = torch.Generator().manual_seed(steps)
        candidates = torch.randint(0, self.setup.vocab_size, (steps, batch, k), generator=generator)
        chosen = torch.zeros(batch, dtype=torch.long)
        lm_time = rm_time = 0.0
        if lm:
            cache = DynamicCache(config=model.config)
            token = (
                model(self.ids, use_cache=True, **cache_kwargs(cache)).logits[:, -1].argmax(-1, keepdim=True)
            )
        if rm:
            scorer = CachedScorer(self.setup.rm)
            scorer.reset(self.ids, torch.ones_like(self.ids), k)
        for step in range(steps):
            if lm:
                start = time.perf_counter()
                token = (
                    model(token, use_cache=True, **cache_kwargs(cache)).logits[:, -1].argmax(-1, keepdim=True)
                )
                lm_time += time.perf_counter() - start
            if rm:
                start = time.perf_counter()
                if step:
                    scorer.advance(candidates[step - 1, :, 0], None, chosen)
                scorer.score(candidates[step])
                rm_time += time.perf_counter() - start
            if junk is not None:
                junk.sum()
        return lm_time / steps * 1e3, rm_time / steps * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=parse_int_list, default=[1, 8])
    parser.add_argument("--lengths", type=parse_int_list, default=[64, 512])
    parser.add_argument("--touch", type=parse_int_list, default=[0, 8, 16, 32, 64])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    rows, touch_rows = [], []
    work = len(args.batches) * len(args.lengths) * args.runs * 3 + len(args.touch) * args.runs
    bar = tqdm(total=work, desc="cache contention", unit="run")
    for batch in args.batches:
        loops = Loops(batch, args.prompt_length, max(args.lengths), args.top_k, args.seed)
        loops.run(8, lm=True, rm=True)  # warm-up
        for steps in args.lengths:
            alone_lm, alone_rm, turn_lm, turn_rm = [], [], [], []
            for _ in range(args.runs):  # alternate the three loops so that all of them see the same load
                alone_lm.append(loops.run(steps, lm=True, rm=False)[0])
                alone_rm.append(loops.run(steps, lm=False, rm=True)[1])
                lm_ms, rm_ms = loops.run(steps, lm=True, rm=True)
                turn_lm.append(lm_ms)
                turn_rm.append(rm_ms)
                bar.update(3)
            rows.append(
                (batch, steps, *(statistics.median(x) for x in (alone_lm, alone_rm, turn_lm, turn_rm)))
            )
        if batch == args.batches[0]:
            steps = max(args.lengths)
            for mib in args.touch:
                touch_rows.append(
                    (
                        mib,
                        statistics.median(
                            loops.run(steps, lm=True, rm=False, touch_mib=mib)[0] for _ in range(args.runs)
                        ),
                    )
                )
                bar.update(args.runs)
    bar.close()

    setup = loops.setup
    weights = {name: weight_bytes(model) / MIB for name, model in (("LM", setup.lm), ("RM", setup.rm))}
    lines = [
        "# Cache contention: the LM and RM steps of configuration (a), alone and in turn",
        "",
        "Generated by `benchmarks/cache_contention.py`; rerun it to refresh this file.",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads. "
        f"Configuration (a) as in `decode_speed.py`: GPT-2 shaped LM and RM, 4 layers, hidden 256, vocabulary 8,192 "
        f"(LM weights {weights['LM']:.1f} MiB, RM weights {weights['RM']:.1f} MiB, fp32), prompt of {args.prompt_length} "
        f"tokens, top_k={args.top_k}. Milliseconds per step, median of {args.runs} runs; every step of a run is timed "
        "and averaged, prefill excluded.",
        "",
        "## Each model alone and in turn",
        "",
        "| batch | steps | LM alone | LM in turn | RM alone | RM in turn | LM+RM alone | LM+RM in turn | in turn / alone |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch, steps, lm_alone, rm_alone, lm_turn, rm_turn in rows:
        alone, turn = lm_alone + rm_alone, lm_turn + rm_turn
        lines.append(
            f"| {batch} | {steps} | {lm_alone:.2f} | {lm_turn:.2f} | {rm_alone:.2f} | {rm_turn:.2f} | {alone:.2f} | "
            f"{turn:.2f} | {turn / alone:.2f}× |"
        )
    lines += [
        "",
        f"## The LM step with unrelated memory read between steps (batch {args.batches[0]}, {max(args.lengths)} steps)",
        "",
        "| MiB read between steps | LM step (ms) | vs none |",
        "| ---: | ---: | ---: |",
    ]
    base = touch_rows[0][1] if touch_rows and touch_rows[0][0] == 0 else None
    for mib, ms in touch_rows:
        lines.append(f"| {mib} | {ms:.2f} | {'' if base is None else f'{ms / base:.2f}×'} |")
    lines += [
        "",
        "Reading: `LM+RM alone` is what `decode_speed.py` calls the floor (less `generate()`'s own loop); the `in "
        "turn` columns are the same steps when they alternate, as they do in guided decoding. The second table "
        "shows at what amount of other memory traffic the LM's step starts to slow down, i.e. the size of the last-"
        "level cache its weights (and the other model's) compete for.",
        "",
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
