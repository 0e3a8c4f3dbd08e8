"""Which runs a configuration makes, and making them: warm-up, methods alternating, disturbed runs rerun."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from harness.agreement import check_agreements
from harness.bench import Bench, Job, RunResult, run_record
from harness.configuration import Config
from harness.environment import environment
from harness.measure import PeakRss
from harness.methods import METHODS, is_slow

#: How many greedy tokens the paths of `AGREEMENTS` are checked to agree on before a configuration is measured.
AGREEMENT_TOKENS = 16


def parse_int_list(text: str) -> list[int]:
    """`64,8,64` -> [8, 64]."""
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


def plan_jobs(config: str, args, methods: Sequence[str] = METHODS) -> list[Job]:
    """The measured jobs of `methods` on `config` that `--methods` asks for: per batch size, one per method (or per
    method and length with `--separate-lengths`), the slow paths only up to the length `--reference` allows
    there."""
    jobs: list[Job] = []
    for batch in args.batches:
        for method in (m for m in methods if m in args.methods):
            lengths = _lengths(config, batch, method, args)
            if not lengths:
                continue
            runs = args.reference_runs if is_slow(method) else args.runs
            if args.separate_lengths:
                jobs.extend(Job(method, batch, n, [n], runs) for n in lengths)
            else:
                jobs.append(Job(method, batch, max(lengths), lengths, runs))
    return jobs


def _lengths(config: str, batch: int, method: str, args) -> list[int]:
    """The lengths `method` runs at on `config` at `batch`: all of them, or for a slow path those `--reference`
    allows there (none where it names no length)."""
    if not is_slow(method):
        return list(args.lengths)
    longest = args.reference.get((config, batch), 0)
    return [n for n in args.lengths if n <= longest]


def total_work(args) -> int:
    """Tokens of all measured runs (rows × new tokens) of every method, the length of the progress bar."""
    return sum(_work(plan_jobs(config, args)) for config in args.configs)


def _work(jobs: list[Job]) -> int:
    return sum(job.new_tokens * job.batch * job.runs for job in jobs)


def run_benchmark(args, configs: Mapping[str, Config]) -> tuple[dict, list[RunResult], float]:
    """Every configuration of `args.configs` in turn, under one progress bar.

    Returns the environment (filled in with what each configuration and every discarded run reported), the
    recorded runs and the wall time in seconds.
    """
    rss = PeakRss()
    info = environment(args, rss)
    results: list[RunResult] = []
    started = time.perf_counter()
    with tqdm(
        total=total_work(args), unit="tok", desc="decode_speed", smoothing=0, dynamic_ncols=True
    ) as bar:
        for key in args.configs:
            run_config(key, configs[key], args, rss, bar, results, info)
    return info, results, time.perf_counter() - started


def run_config(
    key: str, config: Config, args, rss: PeakRss, bar: tqdm, all_results: list[RunResult], info: dict
) -> None:
    """Build configuration `key`, then at each batch size warm every method up and make the repetitions."""
    bar.set_description(f"({key}) loading")
    setup = config.build(max(args.batches), args.prompt_length, max(args.lengths), args.seed)
    bench = Bench(setup, args.top_k, args.beta, rss)
    bar.set_description(f"({key}) checking that the paths agree")
    info["configs"][key] = _config_info(bench, args)
    jobs = plan_jobs(key, args, bench.methods)
    # The bar counted every method; take off those this configuration cannot run.
    bar.total -= _work(plan_jobs(key, args)) - _work(jobs)
    bar.refresh()
    for batch in args.batches:
        batch_jobs = [job for job in jobs if job.batch == batch]
        if batch_jobs:
            _warm_up(bench, batch_jobs, args, bar)
            _repetitions(bench, batch_jobs, args, bar, all_results, info)
    del bench, setup
    gc.collect()


def _config_info(bench: Bench, args) -> dict:
    """What the results file says of a configuration: its models, methods, scorers, RM sizes and agreements."""
    setup = bench.setup
    return {
        "description": setup.description,
        "methods": list(bench.methods),
        "scorers": bench.scorer_types,
        "rm_weight_bytes": setup.rm_weight_bytes(),
        "rm_cache_bytes_per_row_token": setup.rm_cache_bytes(1, 1),
        "agreements": check_agreements(bench, min(2, max(args.batches)), AGREEMENT_TOKENS),
    }


def _repetitions(
    bench: Bench, batch_jobs: list[Job], args, bar: tqdm, all_results: list[RunResult], info: dict
) -> None:
    """The measured runs of one batch size: the methods alternate within each repetition, and the order rotates
    between repetitions."""
    for run in range(max(job.runs for job in batch_jobs)):
        shift = run % len(batch_jobs)
        for job in batch_jobs[shift:] + batch_jobs[:shift]:
            if run >= job.runs:
                continue
            result = _measure(bench, job, run, args, bar, info)
            all_results.append(result)
            bar.update(job.new_tokens * job.batch)
            done = " ".join(f"{n}:{result.seconds[n] / n * 1e3:.1f}" for n in job.checkpoints)
            bar.write(
                f"  ({bench.setup.key}) b={job.batch} {job.method:9s} run {run + 1}: ms/token {done} "
                f"(other load {result.foreign_load:.2f} cores)"
            )


def _warm_up(bench: Bench, batch_jobs: list[Job], args, bar: tqdm) -> None:
    """A short run of every method at this batch size, not recorded."""
    key = bench.setup.key
    for method in dict.fromkeys(job.method for job in batch_jobs):
        bar.set_description(f"({key}) b={batch_jobs[0].batch} warm-up {method}")
        bench.run(Job(method, batch_jobs[0].batch, args.warmup_tokens, [args.warmup_tokens], 1), -1)


def _measure(bench: Bench, job: Job, run: int, args, bar: tqdm, info: dict) -> RunResult:
    """Repetition `run` of `job`, made again (up to `args.retries` times) while other processes were busy."""
    key, batch = bench.setup.key, job.batch
    bar.set_description(f"({key}) b={batch} {job.method} N={job.new_tokens} run {run + 1}")
    result = bench.run(job, run)
    for _ in range(args.retries):
        if result.foreign_load <= args.max_foreign_load:
            break
        # Another process was busy: wait for a quiet moment and measure this run again.
        info["discarded"].append(run_record(result))
        bar.write(
            f"  ({key}) b={batch} {job.method} run {run + 1}: other processes used "
            f"{result.foreign_load:.2f} cores; discarded, waiting for a quiet machine and running it again"
        )
        bench.load.wait_quiet(args.max_foreign_load / 2, args.quiet_wait)
        result = bench.run(job, run)
    return result
