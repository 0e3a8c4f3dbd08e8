"""Entry points of reward-guided decoding: the `RewardGuidance` façade, the `custom_generate` callable, and the
explicit, reversible opt-in that adds `reward_model=`/`beta=` to `generate()`."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation import GenerationMixin
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
from transformers.utils import ModelOutput

from .auto import AutoModelForPrefixReward, looks_like_local_path
from .modeling import PrefixRewardModel
from .processing import (
    GuidanceState,
    GuidanceTrace,
    RewardGuidanceConfig,
    RewardGuidedLogitsProcessor,
    RewardStoppingCriteria,
    checked_prompt_length,
    checked_token_id,
    checked_token_ids,
    leading_padding_mask,
    output_sequences,
    require_prompt_ids,
)

# Processors that `generate()` places after user-given ones; the guidance processor goes before them.
_AFTER_CUSTOM_PROCESSORS = (
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


def resolve_reward_model(reward_model: Any) -> PrefixRewardModel:
    """Accept a [`PrefixRewardModel`] or a name/path to load with [`AutoModelForPrefixReward`]."""
    if isinstance(reward_model, (str, os.PathLike)):
        name = os.fspath(reward_model)
        local = isinstance(reward_model, os.PathLike) or looks_like_local_path(name)
        if local and not os.path.isdir(os.path.expanduser(name)):
            raise ValueError(
                f"`reward_model` ({name!r}) is not a folder. Give the folder a reward model was saved to (with "
                "`save_pretrained`), or a Hub id such as 'org/name'."
            )
        try:
            return AutoModelForPrefixReward.from_pretrained(os.path.expanduser(name)).eval()
        except OSError as error:
            raise OSError(f"Could not load `reward_model` {name!r}: {error}") from error
    if isinstance(reward_model, PrefixRewardModel):
        return reward_model
    if isinstance(reward_model, PreTrainedModel):
        raise ValueError(
            f"`reward_model` is a {type(reward_model).__name__}, not a PrefixRewardModel. Load it with "
            "`AutoModelForPrefixReward.from_pretrained(<its name or folder>)`, which turns causal-LM and "
            "sequence-classification checkpoints into prefix reward models."
        )
    raise ValueError(
        f"`reward_model` has to be a PrefixRewardModel or the name/path of one, got {type(reward_model).__name__}. "
        "Load one with `AutoModelForPrefixReward.from_pretrained(...)`."
    )


class RewardGuidance:
    r"""
    Builds the [`RewardGuidedLogitsProcessor`] and [`RewardStoppingCriteria`] pair for `generate()`, sharing one
    [`GuidanceState`], and reads the results afterwards.

    Args:
        reward_model ([`PrefixRewardModel`] or `str`): the reward model, or a name/path to load with
            [`AutoModelForPrefixReward`]. It must share the language model's tokenizer.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): the shared tokenizer; its EOS and pad ids are used when
            `eos_token_id`/`pad_token_id` are not given.
        config ([`RewardGuidanceConfig`], *optional*): the settings; or give them as keyword arguments (`beta`,
            `top_k`, `score_with`, `reward_transform`, `standardize_rewards`, `reward_threshold`,
            `max_reward_calls`, `max_time`, `record_candidates`, `scorer`).
        eos_token_id (`int` or list of `int`, *optional*): the language model's end-of-sequence ids.
        pad_token_id (`int`, *optional*): the padding id, to recognise left padding in prompts.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward, RewardGuidance

    >>> config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, eos_token_id=0, pad_token_id=0)
    >>> _ = torch.manual_seed(0)
    >>> lm = AutoModelForCausalLM.from_config(config).eval()
    >>> rm = AutoModelForPrefixReward.from_config(config).eval()
    >>> guidance = RewardGuidance(rm, beta=2.0, top_k=8, eos_token_id=0, pad_token_id=0)
    >>> prompt = torch.tensor([[5, 6, 7]])
    >>> out = lm.generate(prompt, max_new_tokens=5, do_sample=True, **guidance.generate_kwargs())
    >>> guidance.sequence_rewards(out, prompt_length=3).shape
    torch.Size([1])
    ```
    """

    def __init__(
        self,
        reward_model: PrefixRewardModel | str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        config: RewardGuidanceConfig | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        **config_kwargs: Any,
    ):
        if config is not None and config_kwargs:
            raise ValueError(
                f"Pass either `config` or settings as keyword arguments ({sorted(config_kwargs)}), not both."
            )
        if config is not None and not isinstance(config, RewardGuidanceConfig):
            hint = (
                " Pass the settings as keyword arguments: `RewardGuidance(rm, **config)`."
                if isinstance(config, dict)
                else ""
            )
            raise TypeError(f"`config` has to be a RewardGuidanceConfig, got {type(config).__name__}.{hint}")
        if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                f"`tokenizer` has to be the language model's tokenizer (a PreTrainedTokenizerBase), got "
                f"{type(tokenizer).__name__} ({tokenizer!r}). Give ids directly with `eos_token_id=`/`pad_token_id=`."
            )
        names = [setting.name for setting in dataclasses.fields(RewardGuidanceConfig)]
        for unknown in sorted(set(config_kwargs) - set(names)):
            close = difflib.get_close_matches(unknown, names, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise TypeError(f"RewardGuidance has no setting `{unknown}`.{hint} The settings are {names}.")
        self.config = config if config is not None else RewardGuidanceConfig(**config_kwargs)
        self.reward_model = resolve_reward_model(reward_model)
        text_config = self.reward_model.config.text_config.get_text_config()
        vocab_size = text_config.vocab_size
        if self.config.top_k > vocab_size:
            raise ValueError(
                f"`top_k` (={self.config.top_k}) is larger than the reward model's vocabulary ({vocab_size} tokens); "
                f"use at most {vocab_size}."
            )
        if eos_token_id is None:
            eos_token_id = (
                tokenizer.eos_token_id
                if tokenizer is not None
                else getattr(text_config, "eos_token_id", None)
            )
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        self.eos_token_id = checked_token_ids("eos_token_id", eos_token_id)
        self.pad_token_id = checked_token_id("pad_token_id", pad_token_id)
        pad = [] if self.pad_token_id is None else [self.pad_token_id]
        for name, ids in (("eos_token_id", self.eos_token_id or []), ("pad_token_id", pad)):
            outside = [token for token in ids if token >= vocab_size]
            if outside:
                raise ValueError(
                    f"`{name}` ({outside[0]}) lies outside the reward model's vocabulary ({vocab_size} tokens). Give "
                    "the language model's ids, which the reward model shares, or resize both models' embeddings "
                    "after adding a token."
                )
        self.state = GuidanceState(
            self.reward_model, self.config, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id
        )
        self.logits_processor = RewardGuidedLogitsProcessor(self.state)
        self.stopping_criteria = RewardStoppingCriteria(self.state)

    @property
    def trace(self) -> GuidanceTrace:
        """The trace of the last `generate()` call."""
        return self.state.trace

    def generate_kwargs(self, attention_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """`{"logits_processor": ..., "stopping_criteria": ...}` for `model.generate(**inputs, **kwargs)`.

        Args:
            attention_mask (`torch.Tensor`, *optional*): the prompts' attention mask. Without it, the prompts' left
                padding is recognised as their leading run of pad tokens, which is wrong only when a prompt really
                starts with the pad token (a tokenizer whose BOS is its pad token); pass the mask then.
        """
        self.state.prepare(attention_mask)
        return {
            "logits_processor": LogitsProcessorList([self.logits_processor]),
            "stopping_criteria": StoppingCriteriaList([self.stopping_criteria]),
        }

    @torch.no_grad()
    def sequence_rewards(
        self,
        sequences: torch.Tensor | ModelOutput,
        prompt_length: int,
        prompt_attention_mask: torch.Tensor | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """The reward of each sequence `generate()` returned, read at its last real token.

        The prompt's left padding is masked (from `prompt_attention_mask` or the pad id), and so is everything
        after a sequence's first end-of-sequence token (the padding `generate()` appends to finished rows).

        Args:
            sequences (`torch.LongTensor` of shape `(rows, length)`): the output of `generate()` (or the object it
                returns with `return_dict_in_generate=True`).
            prompt_length (`int`): the prompt's length in `sequences` (`input_ids.shape[1]`).
            prompt_attention_mask (`torch.Tensor`, *optional*): the prompts' mask, `(rows, prompt_length)` or
                `(batch, prompt_length)` when each prompt was expanded into several rows.
            batch_size (`int`, *optional*, defaults to 32): rows per reward-model forward.

        Returns:
            `torch.FloatTensor` of shape `(rows,)`.
        """
        return score_sequences(
            self.reward_model,
            sequences,
            prompt_length,
            prompt_attention_mask=prompt_attention_mask,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            batch_size=batch_size,
        )


def generated_attention_mask(
    sequences: torch.Tensor,
    prompt_length: int,
    prompt_attention_mask: torch.Tensor | None,
    eos_token_id: Sequence[int] | None,
    pad_token_id: int | None,
) -> torch.Tensor:
    """The attention mask of `generate()`'s output: prompt padding masked, and everything after the first EOS."""
    prompt = sequences[:, :prompt_length]
    if prompt_attention_mask is None:
        prompt_mask = leading_padding_mask(prompt, pad_token_id)
    else:
        prompt_mask = prompt_attention_mask.to(sequences.device, torch.long)
        if prompt_mask.shape[0] != sequences.shape[0]:
            prompt_mask = prompt_mask.repeat_interleave(sequences.shape[0] // prompt_mask.shape[0], dim=0)
    generated = sequences[:, prompt_length:]
    if eos_token_id:
        is_eos = torch.isin(generated, torch.tensor(eos_token_id, device=sequences.device)).long()
        # A position is kept while no EOS came strictly before it.
        before = is_eos.cumsum(-1) - is_eos
        generated_mask = (before == 0).long()
    else:
        generated_mask = torch.ones_like(generated)
    return torch.cat([prompt_mask, generated_mask], dim=1)


@torch.no_grad()
def score_sequences(
    reward_model: PrefixRewardModel,
    sequences: torch.Tensor | ModelOutput,
    prompt_length: int,
    prompt_attention_mask: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """The reward of each of `generate()`'s output sequences at its last real token. See
    [`RewardGuidance.sequence_rewards`]."""
    sequences = output_sequences(sequences)
    prompt_length = checked_prompt_length(prompt_length, sequences.shape[1])
    mask = generated_attention_mask(
        sequences,
        prompt_length,
        prompt_attention_mask,
        checked_token_ids("eos_token_id", eos_token_id),
        checked_token_id("pad_token_id", pad_token_id),
    )
    device = reward_model.device
    rewards = [
        reward_model(
            sequences[i : i + batch_size].to(device),
            attention_mask=mask[i : i + batch_size].to(device),
            return_dict=True,
        ).reward
        for i in range(0, len(sequences), batch_size)
    ]
    return torch.cat(rewards).cpu()


def _check_against_model(
    model: PreTrainedModel, guidance: RewardGuidance, input_ids, generation_config, attention_mask
) -> None:
    if model.config.is_encoder_decoder:
        raise ValueError(
            f"Reward-guided generation steers decoder-only (causal) language models; {type(model).__name__} is an "
            "encoder-decoder model, whose generated tokens the reward model would score without the prompt."
        )
    require_prompt_ids(input_ids)
    output_embeddings = model.get_output_embeddings()
    lm_vocab = getattr(output_embeddings, "out_features", None) or model.config.get_text_config().vocab_size
    guidance.logits_processor._check_vocabulary(lm_vocab)
    max_positions = guidance.reward_model.max_positions
    if max_positions is None or generation_config.max_length is None:
        return
    prompt_tokens = int(attention_mask.sum(-1).max()) if attention_mask is not None else input_ids.shape[1]
    if prompt_tokens >= max_positions:
        raise ValueError(
            f"The prompt has {prompt_tokens} tokens, but the reward model has at most {max_positions} positions "
            "(`max_position_embeddings`) and the first new token needs one more. Shorten the prompt."
        )
    new_tokens = generation_config.max_length - input_ids.shape[1]
    if prompt_tokens + new_tokens > max_positions:
        fits = max_positions - prompt_tokens
        fix = (
            f"set `max_new_tokens` to at most {fits}"
            if generation_config.max_new_tokens is not None
            else f"set `max_length` to at most {input_ids.shape[1] + fits}"
        )
        raise ValueError(
            f"The prompt ({prompt_tokens} tokens) plus {new_tokens} new tokens needs {prompt_tokens + new_tokens} "
            f"positions, but the reward model has at most {max_positions} (`max_position_embeddings`). Shorten the "
            f"prompt or {fix}."
        )


def reward_guided_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config,
    synced_gpus: bool = False,
    streamer=None,
    reward_model: PrefixRewardModel | str | None = None,
    reward_guidance: RewardGuidance | None = None,
    beta: float | None = None,
    top_k: int | None = None,
    score_with: str | None = None,
    reward_transform: str | None = None,
    standardize_rewards: bool | None = None,
    reward_threshold: float | None = None,
    max_reward_calls: int | None = None,
    record_candidates: bool | None = None,
    reward_scorer: str | None = None,
    guided_streamer=None,
    **model_kwargs,
):
    r"""
    The decoding loop of reward-guided generation, for `generate(custom_generate=...)`.

    transformers 5 accepts a callable as `custom_generate`; the parameters below that `generate()` does not know
    are taken out of its keyword arguments and handed here. The callable builds the guidance pair, places it where
    `generate()` places user processors (before the sampling warpers), and runs the standard greedy/sampling or
    beam-search loop.

    Args:
        reward_model ([`PrefixRewardModel`] or `str`): the reward model (or give `reward_guidance`).
        reward_guidance ([`RewardGuidance`]): a ready façade, to read its trace afterwards.
        beta (`float`, *optional*): see [`RewardGuidanceConfig`], as are `top_k`, `score_with`,
            `reward_transform`, `standardize_rewards`, `reward_threshold`, `max_reward_calls` and
            `record_candidates`; `reward_scorer` is its `scorer`.
        guided_streamer (`BaseStreamer`, *optional*): the streamer, given again. transformers 5 drops
            `streamer`, `tokenizer` and `assistant_model` on the way to a callable `custom_generate` (it keeps only
            the callable's own arguments), so a `streamer=` alone would receive the prompt and nothing else. Pass
            `streamer=s, guided_streamer=s`, or use [`enable_reward_guided_generate`], whose `generate()` does this
            (and handles `stop_strings`) for you.

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
    settings = {
        "beta": beta,
        "top_k": top_k,
        "score_with": score_with,
        "reward_transform": reward_transform,
        "standardize_rewards": standardize_rewards,
        "reward_threshold": reward_threshold,
        "max_reward_calls": max_reward_calls,
        "record_candidates": record_candidates,
        "scorer": reward_scorer,
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    if reward_guidance is None:
        if reward_model is None:
            raise ValueError(
                "Reward-guided generation needs `reward_model=` (or a ready `reward_guidance=`)."
            )
        eos = generation_config._eos_token_tensor
        pad = generation_config._pad_token_tensor
        reward_guidance = RewardGuidance(
            reward_model,
            eos_token_id=eos,
            pad_token_id=None if pad is None else int(pad),
            **settings,
        )
    elif not isinstance(reward_guidance, RewardGuidance):
        raise TypeError(
            f"`reward_guidance` has to be a RewardGuidance, got {type(reward_guidance).__name__}. Build one with "
            "`RewardGuidance(reward_model, tokenizer, ...)`, or pass `reward_model=` instead."
        )
    elif reward_model is not None or settings:
        raise ValueError(
            "`reward_guidance` already holds the reward model and the settings; do not also pass "
            f"{['reward_model'] * (reward_model is not None) + sorted(settings)}."
        )
    attention_mask = model_kwargs.get("attention_mask")
    _check_against_model(model, reward_guidance, input_ids, generation_config, attention_mask)
    if attention_mask is None:  # `generate()` drops an all-ones mask; nothing is padding then
        attention_mask = torch.ones_like(input_ids)

    reward_guidance.state.prepare(attention_mask)
    processors = list(logits_processor)
    position = next(
        (i for i, p in enumerate(processors) if isinstance(p, _AFTER_CUSTOM_PROCESSORS)), len(processors)
    )
    processors.insert(position, reward_guidance.logits_processor)
    criteria = StoppingCriteriaList([*stopping_criteria, reward_guidance.stopping_criteria])

    method = GENERATION_MODES_MAPPING[generation_config.get_generation_mode()]
    if method not in ("_sample", "_beam_search"):
        raise ValueError(
            f"Reward-guided generation supports greedy decoding, sampling and beam search, not {method.strip('_')}."
        )
    streamer = streamer if streamer is not None else guided_streamer
    if streamer is not None and method != "_sample":
        raise ValueError("`streamer` cannot be used with beam search (`num_beams` > 1), as in `generate()`.")
    extra = {"streamer": streamer} if method == "_sample" else {}
    return getattr(type(model), method)(
        model,
        input_ids,
        logits_processor=LogitsProcessorList(processors),
        stopping_criteria=criteria,
        generation_config=generation_config,
        synced_gpus=synced_gpus,
        **extra,
        **model_kwargs,
    )


_GUIDANCE_KEYS = ("reward_model", "reward_guidance")


def _guided_generate_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate()` keyword arguments that reach `reward_guided_generate` whole.

    transformers 5 keeps only a callable `custom_generate`'s own arguments for it: the streamer goes again as
    `guided_streamer`, and stop strings become a `StopStringCriteria` here, since `generate()` would build theirs
    with the tokenizer it has just dropped."""
    kwargs = dict(kwargs)
    if kwargs.pop("custom_generate", None) not in (None, reward_guided_generate):
        raise ValueError("`reward_model=` cannot be combined with another `custom_generate`.")
    for name in ("assistant_model", "prompt_lookup_num_tokens"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"Reward-guided generation does not support assisted decoding (`{name}`): every token is chosen "
                "from the reward-scored candidates of the main model."
            )
    if kwargs.get("streamer") is not None:
        kwargs["guided_streamer"] = kwargs["streamer"]
    stop_strings = kwargs.pop("stop_strings", None)
    if stop_strings is not None:
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None:
            raise ValueError("`stop_strings` needs the model's tokenizer: pass `tokenizer=` as well.")
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [
                *(kwargs.get("stopping_criteria") or []),
                StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings),
            ]
        )
    return {**kwargs, "custom_generate": reward_guided_generate}


def _guided(generate):
    @functools.wraps(generate)
    def generate_with_reward_guidance(self, *args, **kwargs):
        if all(kwargs.get(key) is None for key in _GUIDANCE_KEYS):
            for key in _GUIDANCE_KEYS:
                kwargs.pop(key, None)
            return generate(self, *args, **kwargs)
        return generate(self, *args, **_guided_generate_kwargs(kwargs))

    generate_with_reward_guidance.__wrapped_generate__ = generate
    return generate_with_reward_guidance


def enable_reward_guided_generate(model: PreTrainedModel | None = None) -> None:
    """Let `generate()` take `reward_model=`, `beta=`, `top_k=`, ... directly. Explicit and reversible.

    Importing hf_rgtg patches nothing; this call does. Without `reward_model` (or `reward_guidance`), `generate`
    behaves exactly as before. Undo it with [`disable_reward_guided_generate`].

    Args:
        model (`PreTrainedModel`, *optional*): patch only this model. By default every model that inherits
            `GenerationMixin.generate` is patched.

    Examples:

    ```python
    >>> from hf_rgtg import enable_reward_guided_generate, disable_reward_guided_generate
    >>> enable_reward_guided_generate()
    >>> # model.generate(**inputs, reward_model=rm, beta=2.0, top_k=10, do_sample=True)
    >>> disable_reward_guided_generate()
    ```
    """
    if model is not None:
        if "generate" not in vars(model):  # an opt-in of its own, which outlives a global one
            plain = type(model).generate
            model.generate = _guided(getattr(plain, "__wrapped_generate__", plain)).__get__(model)
        return
    if not hasattr(GenerationMixin.generate, "__wrapped_generate__"):
        GenerationMixin.generate = _guided(GenerationMixin.generate)


def disable_reward_guided_generate(model: PreTrainedModel | None = None) -> None:
    """Undo [`enable_reward_guided_generate`] (for `model`, or globally)."""
    if model is not None:
        if "generate" in vars(model) and hasattr(model.generate, "__wrapped_generate__"):
            del model.generate
        return
    if hasattr(GenerationMixin.generate, "__wrapped_generate__"):
        GenerationMixin.generate = GenerationMixin.generate.__wrapped_generate__


def reward_guided_generate_enabled(model: PreTrainedModel | None = None) -> bool:
    """Whether `generate()` currently accepts `reward_model=` (for `model`, or globally)."""
    target = model.generate if model is not None else GenerationMixin.generate
    return hasattr(target, "__wrapped_generate__")


__all__ = [
    "RewardGuidance",
    "disable_reward_guided_generate",
    "enable_reward_guided_generate",
    "resolve_reward_model",
    "reward_guided_generate",
    "reward_guided_generate_enabled",
    "score_sequences",
]
