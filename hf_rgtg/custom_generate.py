"""`reward_guided_generate`: the decoding loop of reward-guided generation, for `generate(custom_generate=...)`.

Its guidance options are the fields of [`RewardGuidanceConfig`], each under its `generate()` keyword
([`RewardGuidanceConfig.generate_names`]): the callable's signature is built from the dataclass, so that a new
setting is added in one place. transformers reads that signature to decide which of `generate()`'s keyword
arguments reach the callable.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from transformers import LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.utils import GENERATION_MODES_MAPPING

from .auto import resolve_reward_tokenizer
from .compat import dropped_generate_streamer, generation_special_tokens
from .configuration import RewardGuidanceConfig
from .generation import RewardGuidance, RewardModels, reward_tokenizers
from .validation import check_streamer, positions_problem

# Processors that `generate()` places after user-given ones; the guidance processor goes before them.
AFTER_CUSTOM_PROCESSORS = (
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    MinPLogitsWarper,
    TypicalLogitsWarper,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitNormalization,
)


def check_positions(
    guidance: RewardGuidance,
    input_ids: torch.Tensor,
    generation_config: Any,
    attention_mask: torch.Tensor | None,
) -> None:
    """Refuse a prompt plus `max_new_tokens` that the reward model's positions cannot hold, before generating."""
    if generation_config.max_length is None:
        return
    prompt_tokens = int(attention_mask.sum(-1).max()) if attention_mask is not None else input_ids.shape[1]
    new_tokens = generation_config.max_length - input_ids.shape[1]
    scorers = guidance.scorers
    max_positions = scorers.max_positions
    # Even a call that generates nothing scores its first candidates one position after the prompt.
    problem = positions_problem(prompt_tokens, max(new_tokens, 1), max_positions, scorers.positions_holder)
    if problem is None:
        return
    problem = f"{problem[0].upper()}{problem[1:]} (`max_position_embeddings`)"
    if prompt_tokens >= max_positions:
        raise ValueError(f"{problem}, and the first new token needs one more. Shorten the prompt.")
    fits = max_positions - prompt_tokens
    fix = (
        f"set `max_new_tokens` to at most {fits}"
        if generation_config.max_new_tokens is not None
        else f"set `max_length` to at most {input_ids.shape[1] + fits}"
    )
    raise ValueError(f"{problem}. Shorten the prompt or {fix}.")


def guidance_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the guidance options out of `kwargs` (by their `generate()` keywords); returns them by field name,
    without those left at `None`."""
    options = {}
    for name, keyword in RewardGuidanceConfig.generate_names().items():
        value = kwargs.pop(keyword, None)
        if value is not None:
            options[name] = value
    return options


def guidance_for_call(
    reward_model: RewardModels | None,
    reward_guidance: RewardGuidance | None,
    options: dict[str, Any],
    generation_config: Any,
    tokenizers: dict[str, Any] | None = None,
    language_model: PreTrainedModel | None = None,
) -> RewardGuidance:
    """The [`RewardGuidance`] of one call: the one given, or one built from `reward_model`, the options and the
    `tokenizers` (`RewardGuidance`'s `tokenizer`, `reward_tokenizer`, `reward_prompt_template`), with the EOS and
    pad ids `generate()` settled on, for the `language_model` that generates."""
    if reward_guidance is None:
        if reward_model is None:
            raise ValueError(
                "Reward-guided generation needs `reward_model=` (or a ready `reward_guidance=`)."
            )
        eos, pad = generation_special_tokens(generation_config)
        return RewardGuidance(
            reward_model,
            **(tokenizers or {}),
            eos_token_id=eos,
            pad_token_id=None if pad is None else int(pad),
            language_model=language_model,
            **options,
        )
    if not isinstance(reward_guidance, RewardGuidance):
        raise TypeError(
            f"`reward_guidance` has to be a RewardGuidance, got {type(reward_guidance).__name__}. Build one with "
            "`RewardGuidance(reward_model, tokenizer, ...)`, or pass `reward_model=` instead."
        )
    given_tokenizers = sorted(name for name, value in (tokenizers or {}).items() if value is not None)
    given_tokenizers = [name for name in given_tokenizers if name != "tokenizer"]
    if reward_model is not None or options or given_tokenizers:
        names = RewardGuidanceConfig.generate_names()
        given = ["reward_model"] * (reward_model is not None) + sorted(names[name] for name in options)
        given += given_tokenizers
        raise ValueError(
            f"`reward_guidance` already holds the reward model and the settings; do not also pass {given}."
        )
    return reward_guidance


def language_tokenizer(model: PreTrainedModel, given: Any, reward_tokenizers: list[Any]) -> Any:
    """The language model's tokenizer for this call, to compare with the reward models': the one `given`, else,
    when a reward model's is known, the one saved with the language model (by its name or folder); `None` when
    neither is known."""
    if given is not None or all(tokenizer is None for tokenizer in reward_tokenizers):
        return given
    return resolve_reward_tokenizer(model.name_or_path)


def decoding_method(generation_config: Any, streamer: Any) -> str:
    """The name of the `GenerationMixin` loop that runs this call: `_sample` (greedy or sampling) or
    `_beam_search`; anything else is refused."""
    method = GENERATION_MODES_MAPPING[generation_config.get_generation_mode()]
    if method not in ("_sample", "_beam_search"):
        raise ValueError(
            f"Reward-guided generation supports greedy decoding, sampling and beam search, not {method.strip('_')}."
        )
    # transformers says this to no callable `custom_generate`.
    check_streamer(streamer, beam_search=method == "_beam_search")
    return method


def call_streamer(streamer: Any, guided_streamer: Any, input_ids: torch.Tensor) -> Any:
    """The one streamer of this call, handed the prompt once, as `generate()` hands it to its streamer.

    `generate()` hands the prompt to its `streamer=` and then drops it on the way to a callable `custom_generate`;
    [`dropped_generate_streamer`] finds it again. A `guided_streamer=` that is not that streamer has not seen the
    prompt yet, so it gets it here (and `skip_prompt=True` skips it); the same streamer under both names is used
    once."""
    given = streamer if streamer is not None else dropped_generate_streamer()
    if guided_streamer is None or guided_streamer is given:
        return given
    if given is not None:
        raise ValueError(
            "`streamer` and `guided_streamer` are two different streamers; a call streams to one. Pass it as "
            "`streamer=`."
        )
    guided_streamer.put(input_ids.cpu())
    return guided_streamer


def reward_guided_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    reward_model: RewardModels | None = None,
    reward_guidance: RewardGuidance | None = None,
    guided_streamer=None,
    guided_tokenizer=None,
    reward_tokenizer=None,
    reward_prompts=None,
    reward_prompt_template: str | None = None,
    **kwargs,
):
    r"""
    The decoding loop of reward-guided generation, for `generate(custom_generate=...)`.

    transformers 5 accepts a callable as `custom_generate`; the parameters below that `generate()` does not know
    are taken out of its keyword arguments and handed here. The callable builds the guidance, places its processor
    where `generate()` places user processors (before the sampling warpers), and runs the standard
    greedy/sampling or beam-search loop.

    Args:
        reward_model ([`PrefixRewardModel`] or `str`, or a list of them): the reward model, or several, one per
            objective, with `beta=[...]` (one per reward model, or one for all); or give `reward_guidance`.
        reward_guidance ([`RewardGuidance`]): a ready façade, to read its trace afterwards.
        guided_tokenizer (`PreTrainedTokenizerBase`, *optional*): the language model's tokenizer, to compare with
            the reward model's. `generate()` takes `tokenizer=` out of its arguments before it calls a callable
            `custom_generate`, so it goes by this name here ([`enable_reward_guided_generate`] passes the
            `tokenizer=` of `generate()` on under it); without it, the one saved with the model is loaded when the
            reward model's tokenizer is known.
        reward_tokenizer (`PreTrainedTokenizerBase` or `str`, or a list of them, *optional*): the reward model's
            tokenizer (one per reward model), when it is not the language model's (see [`RewardGuidance`]); by
            default the one saved with it.
        reward_prompts (list of `str` or of chat messages, *optional*): the prompts as text, for a reward model
            with another tokenizer (see [`RewardGuidance.generate_kwargs`]).
        reward_prompt_template (`str`, *optional*): the prompt's format for such a reward model without a chat
            template.
        guided_streamer (`BaseStreamer`, *optional*): another name for the streamer; pass `streamer=` to
            `generate()` as usual. transformers 5 drops `streamer`, `tokenizer` and `assistant_model` on the way
            to a callable `custom_generate` (it keeps only the callable's own arguments), after handing the
            prompt to the streamer; this callable finds the streamer in the running `generate()` call and streams
            the new tokens to it, and ends it. A streamer given only as `guided_streamer=` is handed the prompt
            first, as `generate()` would, so `skip_prompt=True` works; given under both names it is used once.
            `stop_strings` still needs [`enable_reward_guided_generate`], since the tokenizer is dropped too.
        **kwargs (`Any`): the guidance options, every field of [`RewardGuidanceConfig`] under its `generate()` keyword
            (its own name, except `reward_scorer` for `scorer` and `reward_max_time` for `max_time`: `max_time=`
            stays transformers' own limit, counted from the start of `generate()`), and the model's keyword
            arguments, which go on to the decoding loop.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward, reward_guided_generate

    >>> config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, eos_token_id=0, pad_token_id=0)
    >>> _ = torch.manual_seed(0)
    >>> lm = AutoModelForCausalLM.from_config(config).eval()
    >>> rm = AutoModelForPrefixReward.from_config(config).eval()
    >>> out = lm.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, custom_generate=reward_guided_generate,
    ...                   reward_model=rm, beta=2.0, top_k=8)
    >>> out.shape
    torch.Size([1, 7])
    ```
    """
    options = guidance_options(kwargs)
    if reward_model is not None:
        count = len(reward_model) if isinstance(reward_model, (list, tuple)) else 1
        reward_tokenizer = reward_tokenizers(reward_model, reward_tokenizer, count)
    tokenizers = {
        "tokenizer": language_tokenizer(
            model,
            guided_tokenizer,
            reward_tokenizer if isinstance(reward_tokenizer, list) else [reward_tokenizer],
        ),
        "reward_tokenizer": reward_tokenizer,
        "reward_prompt_template": reward_prompt_template,
    }
    guidance = guidance_for_call(reward_model, reward_guidance, options, generation_config, tokenizers, model)
    try:
        return _guided_loop(
            model,
            input_ids,
            logits_processor,
            stopping_criteria,
            generation_config,
            synced_gpus,
            streamer,
            guidance,
            guided_streamer,
            reward_prompts,
            kwargs,
        )
    finally:
        if guidance is not reward_guidance:  # built for this call: its hooks go with it
            guidance.close()


def _guided_loop(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: Any,
    synced_gpus: bool,
    streamer: Any,
    guidance: RewardGuidance,
    guided_streamer: Any,
    reward_prompts: Any,
    kwargs: dict[str, Any],
) -> Any:
    """The checks of one guided call and its decoding loop, with the guidance processor and criteria in place."""
    attention_mask = kwargs.get("attention_mask")
    guidance.check_language_model(model, input_ids)
    check_positions(guidance, input_ids, generation_config, attention_mask)
    if attention_mask is None:  # `generate()` drops an all-ones mask; nothing is padding then
        attention_mask = torch.ones_like(input_ids)
    guidance.tracker.prepare(attention_mask, reward_prompts)
    processors = list(logits_processor)
    position = next(
        (i for i, p in enumerate(processors) if isinstance(p, AFTER_CUSTOM_PROCESSORS)), len(processors)
    )
    processors.insert(position, guidance.logits_processor)
    criteria = StoppingCriteriaList([*stopping_criteria, *guidance.stopping_criteria])
    streamer = call_streamer(streamer, guided_streamer, input_ids)
    method = decoding_method(generation_config, streamer)
    extra = {"streamer": streamer} if method == "_sample" else {}
    return getattr(type(model), method)(
        model,
        input_ids,
        logits_processor=LogitsProcessorList(processors),
        stopping_criteria=criteria,
        generation_config=generation_config,
        synced_gpus=synced_gpus,
        **extra,
        **kwargs,
    )


def _signature_with_options(function) -> inspect.Signature:
    """`function`'s signature with one keyword-only parameter per guidance option before its `**kwargs`."""
    parameters = list(inspect.signature(function).parameters.values())
    defaults = {item.name: item for item in dataclasses.fields(RewardGuidanceConfig)}
    options = [
        inspect.Parameter(
            keyword, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f"{defaults[name].type} | None"
        )
        for name, keyword in RewardGuidanceConfig.generate_names().items()
    ]
    return inspect.Signature([*parameters[:-1], *options, parameters[-1]])


reward_guided_generate.__signature__ = _signature_with_options(reward_guided_generate)

__all__ = [
    "AFTER_CUSTOM_PROCESSORS",
    "call_streamer",
    "check_positions",
    "decoding_method",
    "guidance_for_call",
    "guidance_options",
    "reward_guided_generate",
]
