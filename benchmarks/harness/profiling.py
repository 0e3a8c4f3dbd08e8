"""Where the time of guided decoding goes: wrapped timers, cProfile and torch.profiler over one guided run."""

from __future__ import annotations

import cProfile
import datetime
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import transformers

from harness.bench import Bench, Job
from harness.configuration import Config
from harness.environment import environment
from harness.measure import PeakRss

Timings = dict[str, list[float]]  # seconds of every call, by the name of what was called


def profile(args, config: Config) -> str:
    """The profile of `args.profile_tokens` tokens of the guided path `args.profile_method` at `args.profile_batch`
    rows on `config`, as markdown."""
    batch, n, method = args.profile_batch, args.profile_tokens, args.profile_method
    setup = config.build(batch, args.prompt_length, n, args.seed)
    rss = PeakRss()
    bench = Bench(setup, args.top_k, args.beta, rss)
    if method not in bench.guidance:
        raise SystemExit(f"({args.profile_config}) does not run the {method} path; profile it on (a).")
    job = Job(method, batch, n, [n], 1)
    for warm in ("plain", method, "rm-loop"):
        bench.run(Job(warm, batch, 8, [8], 1), -1)
    plain = bench.run(Job("plain", batch, n, [n], 1), 0).seconds[n]
    loop = bench.run(Job("rm-loop", batch, n, [n], 1), 0).seconds[n]

    # 1. Wall-clock split of the guided run by wrapping the pieces on this process's objects.
    store: Timings = defaultdict(list)
    with _timers(bench, store, method):
        total = bench.run(job, 0).seconds[n]
    split = [
        f"## Wall-clock split of one {method} run on ({args.profile_config}), batch {batch}, {n} new tokens",
        "",
        f"plain run {plain / n * 1e3:.1f} ms/token, RM loop {loop / n * 1e3:.1f} ms/token, floor "
        f"{(plain + loop) / n * 1e3:.1f} ms/token; guided run (timers on) {total / n * 1e3:.1f} ms/token.",
        "",
        *_split_table(store, total, n),
    ]
    return _document(args, rss, split, _cprofile(bench, job), _torch_operators(bench, job))


def _timed(store: Timings, name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name].append(time.perf_counter() - start)

    return wrapper


@contextmanager
def _timers(bench: Bench, store: Timings, method: str) -> Iterator[None]:
    """Time every call of the pieces of a step of the guided path `method` into `store` while the block runs."""
    guidance = bench.guidance[method]
    tracker, scorer = guidance.tracker, guidance.scorer
    on_instances = {
        "lm.forward": (bench.setup.lm, "forward"),
        "scorer.score (RM forward of k tokens)": (scorer, "score"),
        "scorer.advance (keep the chosen token)": (scorer, "advance"),
        "tracker.commit (trace, parents)": (tracker, "commit"),
        "tracker.record (trace)": (tracker, "record"),
    }
    # generate() calls the processor and the criteria as objects, which looks __call__ up on their classes.
    on_classes = [("logits processor (total)", type(guidance.logits_processor))]
    on_classes += [("stopping criteria", type(criterion)) for criterion in guidance.stopping_criteria]
    for name, (obj, attr) in on_instances.items():
        setattr(obj, attr, _timed(store, name, getattr(obj, attr)))
    calls = {cls: cls.__call__ for _, cls in on_classes}
    for name, cls in on_classes:
        cls.__call__ = _timed(store, name, calls[cls])
    try:
        yield
    finally:
        for cls, call in calls.items():
            cls.__call__ = call
        for obj, attr in on_instances.values():
            obj.__dict__.pop(attr, None)


def _split_table(store: Timings, total: float, n: int) -> list[str]:
    lines = [
        "| piece | calls | ms per token | share of the guided run |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, times in store.items():
        lines.append(f"| {name} | {len(times)} | {sum(times) / n * 1e3:.2f} | {sum(times) / total:.0%} |")
    processor_time = sum(store["logits processor (total)"])
    inside = sum(
        sum(store[name])
        for name in (
            "scorer.score (RM forward of k tokens)",
            "scorer.advance (keep the chosen token)",
            "tracker.commit (trace, parents)",
            "tracker.record (trace)",
        )
    )
    lines.append(
        f"| processor minus score, advance, commit and record (log_softmax, topk, scatter, checks) | | "
        f"{(processor_time - inside) / n * 1e3:.2f} | {(processor_time - inside) / total:.0%} |"
    )
    rest = total - processor_time - sum(store["lm.forward"]) - sum(store["stopping criteria"])
    lines.append(f"| generate() itself (the rest) | | {rest / n * 1e3:.2f} | {rest / total:.0%} |")
    return lines


def _cprofile(bench: Bench, job: Job) -> str:
    """cProfile of one run of `job`, the top 25 functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    bench.run(job, 0)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    return stream.getvalue()


def _torch_operators(bench: Bench, job: Job) -> str:
    """torch.profiler over one run of `job`: the top 25 CPU operators by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.run(job, 0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)


def _document(args, rss: PeakRss, split: list[str], cprofile_text: str, ops: str) -> str:
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
