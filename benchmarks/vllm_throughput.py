#!/usr/bin/env python
"""Throughput of reward-guided decoding inside vLLM against hf_rgtg's `generate()` path, on SmolLM2 with the default
reward model (fp32, CPU).

Four ways to generate the same 64 new tokens for each of 64 chat prompts (every request runs to exactly 64 tokens:
`min_tokens`/`ignore_eos` in vLLM, `min_new_tokens` in `generate()`), all greedy:

- **vLLM plain**: `LLM.generate` of all 64 requests, no guidance;
- **vLLM guided**: the same with `extra_args={"beta": 2.0, "top_k": 10}` through
  `hf_rgtg.integrations.vllm.v1:RewardGuidedProcessor` (the reward model in the engine's worker);
- each of them with vLLM's default CPU binding (its worker on 1 of the 2 cores) and with the worker on both
  (`VLLM_CPU_NUM_OF_RESERVED_CPU=0`);
- **generate() plain / guided, batch B**: `lm.generate` over the 64 prompts in batches of B (8 and 32), plain and
  with `RewardGuidance(load_default_rm(), beta=2.0, top_k=10)`.

Tokens per second = 64 x 64 new tokens / wall time of the whole pass (prefill included). vLLM runs first (two
warm-up requests, then each pass) in a process of its own; `generate()` runs after it, in another.

Usage::

    python benchmarks/vllm_throughput.py            # about 20 minutes on 2 cores
    python benchmarks/vllm_throughput.py --prompts 16 --new-tokens 16 --batches 8

It needs vLLM (docs/vllm.md), prints the table and writes ``benchmarks/results/vllm_throughput.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks directory is not a package
from configs.smollm2 import PROMPT_QUESTIONS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "vllm_throughput.md"
#: vLLM's CPU thread binding, by label: its default reserves one of the 2 cores for the engine's scheduler process
#: (the worker, which runs the model and the processor, gets the other); with 0 reserved, the worker gets both, as
#: `generate()` does. The environment of each vLLM part.
BINDING_NOTES = {
    "1-core": "vLLM's default CPU binding, one of the 2 cores reserved for its scheduler process and the worker (the "
    "language model and the reward model) bound to the other",
    "2-core": "`VLLM_CPU_NUM_OF_RESERVED_CPU=0`, the worker bound to both cores",
}
BINDINGS = {
    "1-core": {},
    "2-core": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
}
PROCESSOR = "hf_rgtg.integrations.vllm.v1:RewardGuidedProcessor"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="8,32", help="generate()'s batch sizes, comma-separated")
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--bindings", default=",".join(BINDINGS), help="vLLM's CPU bindings to run, comma-separated"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of generate() (1: like vLLM's worker under its default binding; on a loaded machine "
        "2 threads stall at every barrier)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--part", choices=[*BINDINGS, "generate"], help=argparse.SUPPRESS
    )  # one process per part
    parser.add_argument("--seconds-file", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def prompt_ids(tokenizer, count: int) -> list[list[int]]:
    """`count` chat prompts: configuration (b)'s questions, each with a request number so that no two are the
    same."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{PROMPT_QUESTIONS[i % len(PROMPT_QUESTIONS)]} (request {i})"}],
            add_generation_prompt=True,
            tokenize=True,
        )
        for i in range(count)
    ]


def as_ids(ids) -> list[int]:
    return list(getattr(ids, "input_ids", ids))


def run_vllm(args, prompts: list[list[int]], label: str) -> dict[str, float]:
    """Seconds of one pass of every request through vLLM, plain and guided, named `vLLM <label> plain/guided`."""
    from vllm import LLM, SamplingParams

    from hf_rgtg.defaults import default_lm_path

    llm = LLM(
        str(default_lm_path()),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        max_num_seqs=max(len(prompts), 1),
        kv_cache_memory_bytes=2 << 30,
        logits_processors=[PROCESSOR],
    )
    guidance = {"beta": args.beta, "top_k": args.top_k}

    def params(extra_args):
        n = args.new_tokens
        return SamplingParams(
            temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True, extra_args=extra_args
        )

    requests = [{"prompt_token_ids": ids} for ids in prompts]
    llm.generate(requests[:2], [params(None), params(guidance)], use_tqdm=False)  # warm-up
    seconds = {}
    for kind, extra_args in (("plain", None), ("guided", guidance)):
        name = f"vLLM {label} {kind}"
        start = time.perf_counter()
        outputs = llm.generate(requests, params(extra_args), use_tqdm=False)
        seconds[name] = time.perf_counter() - start
        assert all(len(out.outputs[0].token_ids) == args.new_tokens for out in outputs)
        print(f"{name}: {seconds[name]:.1f} s", flush=True)
    return seconds


def run_generate(args, prompts: list[list[int]], batches: list[int]) -> dict[str, float]:
    """Seconds of one pass of every prompt through `generate()`, plain and guided, at each batch size."""
    import torch

    from hf_rgtg import RewardGuidance, load_default_lm, load_default_rm

    lm, tokenizer = load_default_lm()
    rm = load_default_rm()
    pad = tokenizer.pad_token_id
    seconds = {}
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    def generate(rows: list[list[int]], guided: bool, new_tokens: int) -> None:
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
        extra = (
            RewardGuidance(
                rm, tokenizer, reward_tokenizer=tokenizer, beta=args.beta, top_k=args.top_k
            ).generate_kwargs(mask)
            if guided
            else {}
        )
        with torch.no_grad():
            lm.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                **extra,
            )

    generate(prompts[:2], True, 2)  # warm-up: the weights' pages come in
    for batch in batches:
        for guided in (False, True):
            name = f"generate() {'guided' if guided else 'plain'}, batch {batch}"
            start = time.perf_counter()
            for first in range(0, len(prompts), batch):
                generate(prompts[first : first + batch], guided, args.new_tokens)
            seconds[name] = time.perf_counter() - start
            print(f"{name}: {seconds[name]:.1f} s", flush=True)
    return seconds


def render(
    args, seconds: dict[str, float], batches: list[int], elapsed: float, load: tuple[float, float]
) -> str:
    import torch
    import transformers
    import vllm

    import hf_rgtg

    tokens = args.prompts * args.new_tokens
    rate = {name: tokens / value for name, value in seconds.items()}
    best = max(batches, key=lambda b: rate[f"generate() guided, batch {b}"])
    best_guided = rate[f"generate() guided, batch {best}"]
    lines = [
        "# Throughput: reward-guided decoding in vLLM against `generate()`",
        "",
        "Generated by `benchmarks/vllm_throughput.py`; rerun it to refresh this file.",
        "",
        "## Environment",
        "",
        "| | |",
        "| --- | --- |",
        f"| date | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC |",
        f"| command | `{shlex.join(['python', *sys.argv])}` |",
        f"| python | {platform.python_version()} |",
        f"| torch | {torch.__version__} |",
        f"| transformers | {transformers.__version__} |",
        f"| vllm | {vllm.__version__} (V1 model runner, `enforce_eager=True`) |",
        f"| hf_rgtg | {hf_rgtg.__version__} |",
        f"| cpu | {platform.machine()}, 2 logical cores (shared) |",
        f"| wall time | {elapsed / 60:.1f} min |",
        f"| load average (1 min) | {load[0]:.1f} at the start, {load[1]:.1f} at the end (the machine is shared) |",
        "",
        "## Setup",
        "",
        f"SmolLM2-135M-Instruct (the converted default LM) with the default reward model (a head over SmolLM2's layer "
        f"24), fp32, CPU. {args.prompts} chat prompts, exactly {args.new_tokens} new tokens each, greedy, "
        f"beta={args.beta}, top_k={args.top_k}. One pass per row; tokens/s = {tokens} new tokens / wall time. "
        f"`generate()` runs with {args.threads} torch thread(s).",
        "",
        "## Results",
        "",
        "| method | seconds | tokens/s | guided / plain |",
        "| --- | ---: | ---: | ---: |",
    ]
    pairs = [(f"vLLM {label} plain", f"vLLM {label} guided") for label in args.bindings.split(",")] + [
        (f"generate() plain, batch {b}", f"generate() guided, batch {b}") for b in batches
    ]
    for plain, guided in pairs:
        lines.append(f"| {plain} | {seconds[plain]:.1f} | {rate[plain]:.1f} | |")
        lines.append(
            f"| {guided} | {seconds[guided]:.1f} | {rate[guided]:.1f} | {rate[guided] / rate[plain]:.2f}x |"
        )
    lines += [
        "",
        " ".join(f"vLLM {label}: {BINDING_NOTES[label]}." for label in args.bindings.split(",")),
        "",
    ]
    plain_best = rate[f"generate() plain, batch {best}"]
    for label in args.bindings.split(","):
        ratio = rate[f"vLLM {label} guided"] / best_guided
        lines.append(
            f"- vLLM {label} guided / `generate()` guided at its best batch ({best}): **{ratio:.2f}x** (target >= 2x: "
            f"{'met' if ratio >= 2 else 'not met'}); guided / plain: vLLM {label} "
            f"{rate[f'vLLM {label} guided'] / rate[f'vLLM {label} plain']:.2f}x, `generate()` at batch {best} "
            f"{best_guided / plain_best:.2f}x."
        )
    lines.append("")
    return "\n".join(lines)


def run_part(args, part: str) -> dict[str, float]:
    """Run one part in a process of its own (vLLM's engine processes and thread settings stay out of the
    `generate()` timings) and return its seconds."""
    with tempfile.TemporaryDirectory() as folder:
        seconds_file = Path(folder) / "seconds.json"
        command = [sys.executable, __file__, "--part", part, "--seconds-file", str(seconds_file)]
        for name in ("prompts", "new_tokens", "batches", "beta", "top_k", "threads"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        subprocess.run(command, check=True, env={**os.environ, **BINDINGS.get(part, {})})
        return json.loads(seconds_file.read_text())


def main() -> None:
    args = parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.part is not None:
        from transformers import AutoTokenizer

        from hf_rgtg.defaults import default_lm_path

        tokenizer = AutoTokenizer.from_pretrained(default_lm_path())
        prompts = [as_ids(ids) for ids in prompt_ids(tokenizer, args.prompts)]
        if args.part == "generate":
            seconds = run_generate(args, prompts, batches)
        else:
            seconds = run_vllm(args, prompts, args.part)
        args.seconds_file.write_text(json.dumps(seconds))
        return
    start, load = time.perf_counter(), os.getloadavg()[0]
    seconds = {}
    for part in [*args.bindings.split(","), "generate"]:
        seconds.update(run_part(args, part))
    text = render(args, seconds, batches, time.perf_counter() - start, (load, os.getloadavg()[0]))
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
