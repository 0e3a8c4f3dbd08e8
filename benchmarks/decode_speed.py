#!/usr/bin/env python
"""Decoding speed of reward-guided generation against plain greedy decoding, on CPU.

For each configuration, batch size and number of new tokens it measures, in one process and alternating between
the methods in every repetition (so that all of them see the same machine load):

- ``plain``: greedy ``lm.generate()``;
- ``fast``: greedy ``lm.generate()`` guided by ``RewardGuidance(..., scorer="cached")``;
- ``reference``: the same with ``scorer="reference"`` (re-encodes every candidate prefix; slow, so only run where
  affordable, see ``--reference``);
- ``rm-loop``: a ``hf_rgtg.CachedScorer`` driven by hand over the same number of steps (one reward-model forward
  of k sibling tokens on top of the cache per step). ``floor = plain + rm-loop``: what a guided step costs at
  least when the reward model is as large as the language model.

Configurations:

- ``a``: GPT-2 shaped language and reward models (4 layers, hidden size 256, 4 heads), random seeded weights, and
  a byte-level BPE vocabulary of 8,192 tokens trained once on the Python standard library's sources and cached in
  ``benchmarks/.cache``; prompts are held-out text (``/usr/share/common-licenses`` when present).
- ``b``: SmolLM2-135M-Instruct (``hf_rgtg.load_default_lm()``) and a reward model of the same architecture and
  weights (``AutoModelForPrefixReward.from_pretrained`` on the converted checkpoint, random head); prompts are
  chat-template prompts of exactly 32 real tokens.

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

    python benchmarks/decode_speed.py                  # full run (about 35 minutes on 2 cores)
    python benchmarks/decode_speed.py --quick          # smoke run, a few minutes
    python benchmarks/decode_speed.py --configs a --batches 1 --lengths 64,256 --runs 7
    python benchmarks/decode_speed.py --profile        # where the time of a guided step goes (on (b); --profile-config a)

The markdown table is printed and written to ``benchmarks/results/decode_speed.md`` (raw timings to
``decode_speed.json`` beside it).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import json
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil
import torch
import transformers
from configs import CONFIGS
from harness.configuration import Setup
from harness.measure import LoadMeter, PeakRss, StepClock
from harness.paths import MIB, REPO, RESULTS_DIR, repo_relative
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteriaList

import hf_rgtg
from hf_rgtg import CachedScorer, RewardGuidance

METHODS = ("plain", "fast", "reference", "rm-loop")

# --------------------------------------------------------------------------------------------------------------
# One measured run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One method at one batch size, generating `new_tokens` tokens and reporting at `checkpoints`."""

    method: str
    batch: int
    new_tokens: int
    checkpoints: list[int]
    runs: int


@dataclass
class RunResult:
    config: str
    method: str
    batch: int
    run: int
    baseline_rss: int
    foreign_load: float  # cores kept busy by other processes during the run
    seconds: dict[int, float]
    peak_rss: dict[int, int]


class Bench:
    def __init__(self, setup: Setup, top_k: int, beta: float, rss: PeakRss):
        self.setup = setup
        self.load = LoadMeter()
        self.top_k = top_k
        self.rss = rss
        self.guidance = {
            name: RewardGuidance(
                setup.rm,
                beta=beta,
                top_k=top_k,
                eos_token_id=setup.eos_token_id,
                pad_token_id=setup.pad_token_id,
                scorer=scorer,
            )
            for name, scorer in (("fast", "cached"), ("reference", "reference"))
        }
        self.scorer_types = {name: type(g.state.scorer).__name__ for name, g in self.guidance.items()}
        setup.lm.generation_config = GenerationConfig(
            do_sample=False, eos_token_id=setup.eos_token_id, pad_token_id=setup.pad_token_id
        )

    def run(self, job: Job, run: int) -> RunResult:
        clock = StepClock(self.setup.prompts.shape[1], job.checkpoints, self.rss)
        self.load.start()
        if job.method == "rm-loop":
            seconds_end = self._rm_loop(job, clock)
        else:
            seconds_end = self._generate(job, clock)
        final_peak = self.rss.stop()
        foreign_load = self.load.stop()
        start, end = seconds_end
        clock.times[job.new_tokens] = end
        clock.peaks[job.new_tokens] = final_peak
        return RunResult(
            config=self.setup.key,
            method=job.method,
            batch=job.batch,
            run=run,
            baseline_rss=self.rss.baseline,
            foreign_load=foreign_load,
            seconds={n: clock.times[n] - start for n in job.checkpoints},
            peak_rss={n: clock.peaks[n] for n in job.checkpoints},
        )

    def _generate(self, job: Job, clock: StepClock) -> tuple[float, float]:
        lm = self.setup.lm
        ids, mask = self.setup.prompt(job.batch)
        guidance = self.guidance.get(job.method)
        if guidance is None:
            kwargs = {"stopping_criteria": StoppingCriteriaList()}
        else:
            kwargs = guidance.generate_kwargs()
        kwargs["stopping_criteria"].append(clock)
        self.rss.start()
        with torch.no_grad():
            start = time.perf_counter()
            out = lm.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=job.new_tokens,
                min_new_tokens=job.new_tokens,
                do_sample=False,
                **kwargs,
            )
            end = time.perf_counter()
        if out.shape != (job.batch, ids.shape[1] + job.new_tokens):
            raise RuntimeError(
                f"{job.method} generated shape {tuple(out.shape)}, expected {job.new_tokens} tokens."
            )
        if guidance is not None and guidance.state.reward_calls != job.new_tokens:
            raise RuntimeError(
                f"{job.method}: {guidance.state.reward_calls} reward calls for {job.new_tokens} tokens."
            )
        return start, end

    def _rm_loop(self, job: Job, clock: StepClock) -> tuple[float, float]:
        """One CachedScorer step per new token: score k candidates on the cache, keep one."""
        ids, mask = self.setup.prompt(job.batch)
        k = self.top_k
        generator = torch.Generator().manual_seed(job.batch * 1000 + job.new_tokens)
        candidates = (
            torch.rand(job.new_tokens, job.batch, self.setup.vocab_size, generator=generator)
            .argsort(-1)[..., :k]
            .contiguous()
            if self.setup.vocab_size * job.new_tokens * job.batch <= 64 * MIB
            else torch.stack(
                [
                    torch.stack(
                        [
                            torch.randperm(self.setup.vocab_size, generator=generator)[:k]
                            for _ in range(job.batch)
                        ]
                    )
                    for _ in range(job.new_tokens)
                ]
            )
        )
        chosen = torch.randint(0, k, (job.new_tokens, job.batch), generator=generator)
        tokens = candidates.gather(2, chosen[..., None])[..., 0]
        scorer = CachedScorer(self.setup.rm)
        self.rss.start()
        with torch.no_grad():
            start = time.perf_counter()
            scorer.reset(ids, mask, k)
            for step in range(job.new_tokens):
                if step:
                    scorer.advance(tokens[step - 1], None, chosen[step - 1])
                scorer.score(candidates[step])
                clock.mark(step + 1)
            end = time.perf_counter()
        return start, end


# --------------------------------------------------------------------------------------------------------------
# Planning, running, summarising
# --------------------------------------------------------------------------------------------------------------


def parse_int_list(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def parse_reference(text: str) -> dict[tuple[str, int], int]:
    """`a:1:256,a:8:64` -> {("a", 1): 256, ("a", 8): 64}: the longest reference run per config and batch."""
    plan: dict[tuple[str, int], int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item or item == "none":
            continue
        config, batch, length = item.split(":")
        plan[(config, int(batch))] = int(length)
    return plan


def plan_jobs(config: str, args) -> list[Job]:
    jobs: list[Job] = []
    for batch in args.batches:
        per_method: dict[str, list[int]] = {m: list(args.lengths) for m in ("plain", "fast", "rm-loop")}
        ref_max = args.reference.get((config, batch))
        if ref_max is not None:
            per_method["reference"] = [n for n in args.lengths if n <= ref_max]
        for method in METHODS:
            lengths = per_method.get(method)
            if not lengths:
                continue
            runs = args.reference_runs if method == "reference" else args.runs
            if args.separate_lengths:
                jobs.extend(Job(method, batch, n, [n], runs) for n in lengths)
            else:
                jobs.append(Job(method, batch, max(lengths), lengths, runs))
    return jobs


def run_config(config: str, args, rss: PeakRss, bar: tqdm, all_results: list[RunResult], info: dict) -> None:
    bar.set_description(f"({config}) loading")
    setup = CONFIGS[config].build(max(args.batches), args.prompt_length, max(args.lengths), args.seed)
    bench = Bench(setup, args.top_k, args.beta, rss)
    info["configs"][config] = {
        "description": setup.description,
        "scorers": bench.scorer_types,
        "rm_weight_bytes": setup.rm_weight_bytes(),
        "rm_cache_bytes_per_row_token": setup.rm_cache_bytes(1, 1),
    }
    jobs = plan_jobs(config, args)
    for batch in args.batches:
        batch_jobs = [job for job in jobs if job.batch == batch]
        # Warm-up: a short run of every method at this batch size, not recorded.
        for method in dict.fromkeys(job.method for job in batch_jobs):
            bar.set_description(f"({config}) b={batch} warm-up {method}")
            bench.run(Job(method, batch, args.warmup_tokens, [args.warmup_tokens], 1), -1)
        for run in range(max(job.runs for job in batch_jobs)):
            # Alternate the methods within each repetition, rotating the order between repetitions.
            shift = run % len(batch_jobs)
            for job in batch_jobs[shift:] + batch_jobs[:shift]:
                if run >= job.runs:
                    continue
                bar.set_description(f"({config}) b={batch} {job.method} N={job.new_tokens} run {run + 1}")
                result = bench.run(job, run)
                for _ in range(args.retries):
                    if result.foreign_load <= args.max_foreign_load:
                        break
                    # Another process was busy: wait for a quiet moment and measure this run again.
                    info["discarded"].append(_run_record(result))
                    bar.write(
                        f"  ({config}) b={batch} {job.method} run {run + 1}: other processes used "
                        f"{result.foreign_load:.2f} cores; discarded, waiting for a quiet machine and running it again"
                    )
                    bench.load.wait_quiet(args.max_foreign_load / 2, args.quiet_wait)
                    result = bench.run(job, run)
                all_results.append(result)
                bar.update(job.new_tokens * job.batch)
                done = " ".join(f"{n}:{result.seconds[n] / n * 1e3:.1f}" for n in job.checkpoints)
                bar.write(
                    f"  ({config}) b={batch} {job.method:9s} run {run + 1}: ms/token {done} "
                    f"(other load {result.foreign_load:.2f} cores)"
                )
    del bench, setup
    gc.collect()


def _run_record(r: RunResult) -> dict:
    return {
        "config": r.config,
        "method": r.method,
        "batch": r.batch,
        "run": r.run,
        "baseline_rss": r.baseline_rss,
        "foreign_load": round(r.foreign_load, 3),
        "seconds": r.seconds,
        "peak_rss": r.peak_rss,
    }


def total_work(args) -> int:
    total = 0
    for config in args.configs:
        for job in plan_jobs(config, args):
            total += job.new_tokens * job.batch * job.runs
    return total


@dataclass
class Cell:
    """Aggregates of one (config, batch, new tokens)."""

    ms: dict[str, float] = field(default_factory=dict)  # median ms per token per method, and "floor"
    runs: dict[str, int] = field(default_factory=dict)
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)  # min, max ms per token
    delta_mib: dict[str, float] = field(default_factory=dict)  # max over runs of peak - baseline
    peak_mib: dict[str, float] = field(default_factory=dict)  # max over runs of the absolute peak
    foreign_load: float = 0.0  # the most cores other processes used during any run of the cell


def summarise(results: list[RunResult]) -> dict[tuple[str, int, int], Cell]:
    per: dict[tuple[str, int, int, str], list[RunResult]] = defaultdict(list)
    for result in results:
        for n in result.seconds:
            per[(result.config, result.batch, n, result.method)].append(result)
    cells: dict[tuple[str, int, int], Cell] = defaultdict(Cell)
    for (config, batch, n, method), runs in per.items():
        cell = cells[(config, batch, n)]
        ms = [r.seconds[n] / n * 1e3 for r in runs]
        cell.ms[method] = statistics.median(ms)
        cell.spread[method] = (min(ms), max(ms))
        cell.runs[method] = len(runs)
        cell.delta_mib[method] = max(r.peak_rss[n] - r.baseline_rss for r in runs) / MIB
        cell.peak_mib[method] = max(r.peak_rss[n] for r in runs) / MIB
        cell.foreign_load = max(cell.foreign_load, *(r.foreign_load for r in runs))
    for cell in cells.values():
        # The sum of the two medians: robust to a disturbed run of either (a sum per repetition is not).
        if "plain" in cell.ms and "rm-loop" in cell.ms:
            cell.ms["floor"] = cell.ms["plain"] + cell.ms["rm-loop"]
    return dict(sorted(cells.items()))


def _ratio(cell: Cell, a: str, b: str) -> float | None:
    if a in cell.ms and b in cell.ms and cell.ms[b] > 0:
        return cell.ms[a] / cell.ms[b]
    return None


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def timing_table(cells: dict[tuple[str, int, int], Cell]) -> str:
    lines = [
        "| config | batch | new tokens | plain | fast | reference | RM loop | floor | fast/plain | fast/floor "
        "| ref/fast | runs (ref) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        runs = str(cell.runs.get("fast", cell.runs.get("plain", 0)))
        if "reference" in cell.runs:
            runs += f" ({cell.runs['reference']})"
        lines.append(
            f"| ({config}) | {batch} | {n} | {_fmt(cell.ms.get('plain'))} | {_fmt(cell.ms.get('fast'))} | "
            f"{_fmt(cell.ms.get('reference'))} | {_fmt(cell.ms.get('rm-loop'))} | {_fmt(cell.ms.get('floor'))} | "
            f"{_fmt(_ratio(cell, 'fast', 'plain'), '.2f', '×')} | {_fmt(_ratio(cell, 'fast', 'floor'), '.2f', '×')} | "
            f"{_fmt(_ratio(cell, 'reference', 'fast'), '.1f', '×')} | {runs} |"
        )
    return "\n".join(lines)


def spread_table(cells: dict[tuple[str, int, int], Cell]) -> str:
    lines = [
        "| config | batch | new tokens | plain | fast | reference | RM loop | most cores used by other processes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        parts = []
        for method in ("plain", "fast", "reference", "rm-loop"):
            lo_hi = cell.spread.get(method)
            parts.append("–" if lo_hi is None else f"{lo_hi[0]:.2f}–{lo_hi[1]:.2f}")
        lines.append(f"| ({config}) | {batch} | {n} | " + " | ".join(parts) + f" | {cell.foreign_load:.2f} |")
    return "\n".join(lines)


def memory_table(cells: dict[tuple[str, int, int], Cell], info: dict, prompt_length: int) -> str:
    lines = [
        "| config | batch | new tokens | plain Δ | fast Δ | reference Δ | RM loop Δ | fast Δ − plain Δ | RM cache "
        "| 1.5 × RM cache | plain peak | fast peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (config, batch, n), cell in cells.items():
        cache = _rm_cache_mib(info, config, batch, prompt_length + n)
        extra = (
            cell.delta_mib["fast"] - cell.delta_mib["plain"]
            if "fast" in cell.delta_mib and "plain" in cell.delta_mib
            else None
        )
        lines.append(
            f"| ({config}) | {batch} | {n} | {_fmt(cell.delta_mib.get('plain'), '.1f')} | "
            f"{_fmt(cell.delta_mib.get('fast'), '.1f')} | {_fmt(cell.delta_mib.get('reference'), '.1f')} | "
            f"{_fmt(cell.delta_mib.get('rm-loop'), '.1f')} | {_fmt(extra, '.1f')} | {cache:.1f} | {1.5 * cache:.1f} | "
            f"{_fmt(cell.peak_mib.get('plain'), '.0f')} | {_fmt(cell.peak_mib.get('fast'), '.0f')} |"
        )
    return "\n".join(lines)


def _rm_cache_mib(info: dict, config: str, batch: int, length: int) -> float:
    return info["configs"][config]["rm_cache_bytes_per_row_token"] * batch * length / MIB


def evaluate_targets(cells: dict[tuple[str, int, int], Cell], info: dict, prompt_length: int) -> list[str]:
    lines: list[str] = []

    def verdict(label: str, checks: list[tuple[str, bool]]) -> None:
        if not checks:
            lines.append(f"- **NOT MEASURED**: {label}")
            return
        ok = all(passed for _, passed in checks)
        lines.append(f"- **{'PASS' if ok else 'FAIL'}**: {label}: " + "; ".join(text for text, _ in checks))

    def by(config: str, batch: int) -> list[tuple[int, Cell]]:
        return [(n, cell) for (c, b, n), cell in cells.items() if c == config and b == batch]

    for batch, limit in ((1, 2.0), (8, 2.5)):
        checks = []
        for n, cell in by("a", batch):
            ratio = _ratio(cell, "fast", "plain")
            if ratio is not None:
                checks.append((f"{ratio:.2f}× at {n}", ratio <= limit))
        verdict(f"fast path ≤ {limit}× plain greedy at batch {batch} on (a)", checks)

    for config in ("a", "b"):
        for batch in (1, 8):
            checks = []
            for n, cell in by(config, batch):
                ratio = _ratio(cell, "fast", "floor")
                if ratio is not None:
                    checks.append((f"{ratio:.2f}× at {n}", ratio <= 1.15))
            verdict(f"fast path ≤ 1.15× the floor (plain + RM loop) on ({config}) at batch {batch}", checks)

    for config in ("a", "b"):
        for batch in (1, 8):
            lookup = dict(by(config, batch))
            checks = []
            if 64 in lookup and 512 in lookup and "fast" in lookup[64].ms and "fast" in lookup[512].ms:
                ratio = lookup[512].ms["fast"] / lookup[64].ms["fast"]
                checks.append(
                    (
                        f"{lookup[512].ms['fast']:.2f} vs {lookup[64].ms['fast']:.2f} ms/token = {ratio:.2f}×",
                        ratio <= 1.3,
                    )
                )
            verdict(
                f"fast path time per token at 512 new tokens ≤ 1.3× that at 64, ({config}) batch {batch}",
                checks,
            )

    checks = []
    for (config, batch, n), cell in cells.items():
        ratio = _ratio(cell, "reference", "fast")
        if n == 256 and ratio is not None:
            checks.append((f"({config}) batch {batch}: {ratio:.1f}×", ratio >= 10))
    verdict("fast path ≥ 10× faster than the reference path at 256 new tokens", checks)

    checks = []
    for (config, batch, n), cell in cells.items():
        if "fast" in cell.delta_mib and "plain" in cell.delta_mib:
            extra = cell.delta_mib["fast"] - cell.delta_mib["plain"]
            budget = 1.5 * _rm_cache_mib(info, config, batch, prompt_length + n)
            checks.append((f"({config}) b{batch} N{n}: +{extra:.1f} ≤ {budget:.1f} MiB", extra <= budget))
    verdict(
        "peak RSS of guided decoding ≤ plain decoding + RM weights + 1.5× one RM cache (the RM weights are resident "
        "before both runs, so the check is fast Δ − plain Δ ≤ 1.5 × RM cache)",
        checks,
    )
    return lines


def environment(args, rss: PeakRss) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "hf_rgtg"], capture_output=True, text=True
        ).stdout.strip()
        commit += " (hf_rgtg/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + shlex.join([repo_relative(Path(sys.argv[0]))] + sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hf_rgtg": f"{hf_rgtg.__version__} (git {commit})",
        "threads": f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op (torch defaults"
        + (")" if args.threads is None else f", overridden by --threads {args.threads})"),
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 1024**3:.1f} GiB",
        "rss": rss.mode,
        "configs": {},
        "discarded": [],
    }


def _load_note(args, info: dict) -> str:
    discarded = info["discarded"]
    text = (
        "The machine may be shared: during every run the script measures how many cores other processes kept "
        "busy (system-wide busy CPU time minus this process's, over the wall time). A run that saw more than "
        f"{args.max_foreign_load:g} cores of other load was discarded and run again after waiting for a quiet "
        f"moment (at most {args.retries} times). "
    )
    if not discarded:
        return text + "No run was discarded."
    kinds = defaultdict(int)
    for record in discarded:
        kinds[f"({record['config']}) batch {record['batch']} {record['method']}"] += 1
    listed = ", ".join(f"{name} ×{count}" for name, count in sorted(kinds.items()))
    return text + f"Discarded {len(discarded)} run(s): {listed}."


def render(args, info: dict, cells: dict[tuple[str, int, int], Cell], elapsed: float) -> str:
    targets = evaluate_targets(cells, info, args.prompt_length)
    ref_plan = ", ".join(f"({c}) batch {b} up to {n} tokens" for (c, b), n in sorted(args.reference.items()))
    out = [
        "# Decoding speed: reward-guided vs plain greedy decoding",
        "",
        "Generated by `benchmarks/decode_speed.py`; rerun it to refresh this file.",
        "",
        "## Environment",
        "",
        "| | |",
        "| --- | --- |",
    ]
    for key in (
        "date",
        "command",
        "python",
        "torch",
        "transformers",
        "hf_rgtg",
        "threads",
        "cpu",
        "memory",
        "rss",
    ):
        value = f"`{info[key]}`" if key == "command" else info[key]
        out.append(f"| {key} | {value} |")
    out.append(f"| wall time | {elapsed / 60:.1f} min |")
    out += ["", "## Setup", ""]
    out.append(
        f"Prompt of {args.prompt_length} real tokens per row, top_k={args.top_k}, beta={args.beta}, greedy, fp32, "
        f"`torch.no_grad()`. Every run generates exactly N tokens (`min_new_tokens=max_new_tokens`). One warm-up "
        f"run of {args.warmup_tokens} tokens per method and batch size, then {args.runs} repetitions; in each "
        "repetition the methods run one after the other (the order rotates between repetitions), so all of them "
        "see the same machine load."
    )
    out.append("")
    for config, details in info["configs"].items():
        out.append(f"- {CONFIGS[config].label}")
        for line in details["description"]:
            out.append(f"  - {line}")
        out.append(
            f"  - Scorers: fast = `{details['scorers']['fast']}`, reference = `{details['scorers']['reference']}`. "
            f"RM weights {details['rm_weight_bytes'] / MIB:.1f} MiB; RM cache "
            f"{details['rm_cache_bytes_per_row_token'] / 1024:.1f} KiB per row and token."
        )
    out += [
        "",
        "Methods:",
        "",
        "- **plain**: `lm.generate(..., do_sample=False)`.",
        '- **fast**: the same with `**RewardGuidance(rm, top_k=k, scorer="cached").generate_kwargs()`.',
        '- **reference**: the same with `scorer="reference"` (re-encodes rows × k prefixes every step). Run only '
        f"where affordable: {ref_plan or 'nowhere'}; {args.reference_runs} runs.",
        "- **RM loop**: `CachedScorer(rm)` driven directly: `reset(prompt)`, then per step `score(k random "
        "candidates)` and `advance(one of them)`; the RM's share of a guided step.",
        "- **floor** = median plain + median RM loop: a guided step cannot cost less than one LM step "
        "plus one RM forward of k tokens on top of a cache.",
        "",
        "## Time per generated token",
        "",
        "Milliseconds of wall time per new token (one step of all rows), median of the runs. "
        + (
            "Every length was its own `generate()` call."
            if args.separate_lengths
            else "Each repetition makes one run of the largest N per method; shorter lengths are read off the "
            "same run when their N-th token is appended (wall time from the `generate()` call, prefill included)."
        ),
        "",
        timing_table(cells),
        "",
        _load_note(args, info),
        "",
        "<details><summary>Fastest and slowest run (ms per token), and the load of other processes</summary>",
        "",
        spread_table(cells),
        "",
        "</details>",
        "",
        "## Peak RSS",
        "",
        "MiB. Δ = peak RSS during the run minus the RSS just before it (after `gc.collect()` and `malloc_trim(0)`), "
        "the largest over the runs; for a shorter length, the peak up to its last token. Both models are loaded, "
        "and their weights read once, before every run. RM cache = 2 × layers × KV heads × head dim × (prompt + N) × "
        "batch × 4 bytes.",
        "",
        memory_table(cells, info, args.prompt_length),
        "",
        "## Targets",
        "",
        *targets,
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# Profiling one guided step
# --------------------------------------------------------------------------------------------------------------


def _timed(store: dict[str, list[float]], name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name].append(time.perf_counter() - start)

    return wrapper


def profile(args) -> str:
    """Where the time of guided decoding goes: wrapped timers, cProfile and torch.profiler."""
    batch, n = args.profile_batch, args.profile_tokens
    setup = CONFIGS[args.profile_config].build(batch, args.prompt_length, n, args.seed)
    rss = PeakRss()
    bench = Bench(setup, args.top_k, args.beta, rss)
    guidance = bench.guidance["fast"]
    job = Job("fast", batch, n, [n], 1)
    for method in ("plain", "fast", "rm-loop"):
        bench.run(Job(method, batch, 8, [8], 1), -1)
    plain = bench.run(Job("plain", batch, n, [n], 1), 0).seconds[n]
    loop = bench.run(Job("rm-loop", batch, n, [n], 1), 0).seconds[n]

    # 1. Wall-clock split of the guided run by wrapping the pieces on this process's objects.
    store: dict[str, list[float]] = defaultdict(list)
    state, scorer, processor = guidance.state, guidance.state.scorer, guidance.logits_processor
    lm = setup.lm
    originals = {
        "lm.forward": (lm, "forward"),
        "scorer.score (RM forward of k tokens)": (scorer, "score"),
        "scorer.advance (keep the chosen token)": (scorer, "advance"),
        "state.commit (trace, parents)": (state, "commit"),
        "state.begin_step": (state, "begin_step"),
        "logits processor (total)": (processor, "__call__"),
        "stopping criteria": (guidance.stopping_criteria, "__call__"),
    }
    for name, (obj, attr) in originals.items():
        if attr == "__call__":
            continue
        setattr(obj, attr, _timed(store, name, getattr(obj, attr)))
    processor_cls_call = type(processor).__call__
    criteria_cls_call = type(guidance.stopping_criteria).__call__
    type(processor).__call__ = _timed(store, "logits processor (total)", processor_cls_call)
    type(guidance.stopping_criteria).__call__ = _timed(store, "stopping criteria", criteria_cls_call)
    try:
        total = bench.run(job, 0).seconds[n]
    finally:
        type(processor).__call__ = processor_cls_call
        type(guidance.stopping_criteria).__call__ = criteria_cls_call
        for _name, (obj, attr) in originals.items():
            obj.__dict__.pop(attr, None)
    split = [
        f"## Wall-clock split of one guided run on ({args.profile_config}), batch {batch}, {n} new tokens",
        "",
        f"plain run {plain / n * 1e3:.1f} ms/token, RM loop {loop / n * 1e3:.1f} ms/token, floor "
        f"{(plain + loop) / n * 1e3:.1f} ms/token; guided run (timers on) {total / n * 1e3:.1f} ms/token.",
        "",
        "| piece | calls | ms per token | share of the guided run |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, times in store.items():
        split.append(f"| {name} | {len(times)} | {sum(times) / n * 1e3:.2f} | {sum(times) / total:.0%} |")
    processor_time = sum(store["logits processor (total)"])
    inside = sum(store["scorer.score (RM forward of k tokens)"]) + sum(store["state.begin_step"])
    split.append(
        f"| processor minus score and begin_step (log_softmax, topk, scatter, checks) | | "
        f"{(processor_time - inside) / n * 1e3:.2f} | {(processor_time - inside) / total:.0%} |"
    )
    rest = total - processor_time - sum(store["lm.forward"]) - sum(store["stopping criteria"])
    split.append(f"| generate() itself (the rest) | | {rest / n * 1e3:.2f} | {rest / total:.0%} |")

    # 2. cProfile of the same run.
    profiler = cProfile.Profile()
    profiler.enable()
    bench.run(job, 0)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    cprofile_text = stream.getvalue()

    # 3. torch.profiler: the operators of the guided run.
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.run(job, 0)
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)

    return "\n".join(
        [
            "# Decoding speed: profile of a guided run",
            "",
            f"`{environment(args, rss)['command']}` — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
            f"UTC, torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} "
            "threads.",
            "",
            *split,
            "",
            "## cProfile (sorted by own time, top 25)",
            "",
            "```",
            cprofile_text.strip(),
            "```",
            "",
            "## torch.profiler (CPU operators by self time, top 25)",
            "",
            "```",
            ops.strip(),
            "```",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: batches 1,2, lengths 8,32, 2 runs")
    parser.add_argument("--configs", default="a,b", help="comma-separated subset of a,b (default a,b)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8)")
    parser.add_argument(
        "--lengths", default=None, help="comma-separated numbers of new tokens (default 64,256,512)"
    )
    parser.add_argument("--runs", type=int, default=None, help="measured runs per method (default 5)")
    parser.add_argument(
        "--reference",
        default=None,
        help="where to run the slow reference path, as config:batch:max_new_tokens items, or 'none' "
        "(default a:1:256,a:8:64)",
    )
    parser.add_argument(
        "--reference-runs", type=int, default=None, help="runs of the reference path (default 3)"
    )
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
    parser.add_argument("--profile-config", choices=("a", "b"), default="b")
    parser.add_argument("--profile-batch", type=int, default=1)
    parser.add_argument("--profile-tokens", type=int, default=64)
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
    if min(args.batches) < 1 or min(args.lengths) < 1 or args.runs < 1:
        parser.error("batches, lengths and runs have to be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.profile:
        text = profile(args)
        path = args.output.with_name(f"{args.output.stem}_profile_{args.profile_config}.md")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(text)
        print(f"Wrote {repo_relative(path)}")
        return 0

    rss = PeakRss()
    info = environment(args, rss)
    results: list[RunResult] = []
    started = time.perf_counter()
    with tqdm(
        total=total_work(args), unit="tok", desc="decode_speed", smoothing=0, dynamic_ncols=True
    ) as bar:
        for config in args.configs:
            run_config(config, args, rss, bar, results, info)
    elapsed = time.perf_counter() - started

    cells = summarise(results)
    text = render(args, info, cells, elapsed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    raw = {
        "environment": info,
        "runs": [_run_record(r) for r in results],
    }
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(text)
    print(f"Wrote {repo_relative(args.output)} and {repo_relative(args.output.with_suffix('.json'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
