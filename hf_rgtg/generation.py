"""`RewardGuidance`, the façade of reward-guided decoding: it builds the scorer, the row tracker, the logits
processor and the stopping criteria for `generate()`, and reads the results afterwards."""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList
from transformers.utils import ModelOutput

from .auto import resolve_reward_model, resolve_reward_tokenizer
from .bridging import TextBridge, text_bridge
from .configuration import RewardGuidanceConfig
from .modeling import PrefixRewardModel
from .processing import RewardGuidedLogitsProcessor
from .redistribution import score_sequences, through_first_eos
from .scorer_set import ScorerSet, reward_model_name
from .scoring import CandidateScorer, make_scorer, whole_text_rewards
from .stopping import reward_stopping_criteria
from .tokenization import Prompt, check_tokenizer, special_token_ids
from .trace import GuidanceTrace, output_sequences
from .tracking import RowTracker, require_prompt_ids

logger = logging.getLogger(__name__)


def guidance_config(config: RewardGuidanceConfig | None, settings: dict[str, Any]) -> RewardGuidanceConfig:
    """The settings of a [`RewardGuidance`]: `config`, or a new one from `settings` (keyword arguments), each
    refused by name when it is not a setting."""
    if config is not None and settings:
        raise ValueError(
            f"Pass either `config` or settings as keyword arguments ({sorted(settings)}), not both."
        )
    if config is not None and not isinstance(config, RewardGuidanceConfig):
        hint = (
            " Pass the settings as keyword arguments: `RewardGuidance(rm, **config)`."
            if isinstance(config, dict)
            else ""
        )
        raise TypeError(f"`config` has to be a RewardGuidanceConfig, got {type(config).__name__}.{hint}")
    names = [setting.name for setting in dataclasses.fields(RewardGuidanceConfig)]
    for unknown in sorted(set(settings) - set(names)):
        close = difflib.get_close_matches(unknown, names, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise TypeError(f"RewardGuidance has no setting `{unknown}`.{hint} The settings are {names}.")
    return config if config is not None else RewardGuidanceConfig(**settings)


#: What `reward_model=` takes: one reward model (or its name or folder), or a list of them.
RewardModels = PrefixRewardModel | str | Sequence[PrefixRewardModel | str]


def resolve_reward_models(reward_model: RewardModels) -> tuple[PrefixRewardModel, ...]:
    """The reward models of `reward_model=`: one (a model, a name or a folder) or a list or tuple of them, each
    resolved with [`resolve_reward_model`]. With several, a refusal names the one at fault (`reward_model[1]`)."""
    if not isinstance(reward_model, (list, tuple)):
        return (resolve_reward_model(reward_model),)
    if not reward_model:
        raise ValueError(
            "`reward_model` is an empty list: give a reward model, or a list of them with one `beta` each (or one "
            "`beta` for all), e.g. `reward_model=[rm1, rm2], beta=[1.0, 0.5]`."
        )
    models = []
    for index, item in enumerate(reward_model):
        try:
            models.append(resolve_reward_model(item))
        except (ValueError, OSError) as error:
            raise type(error)(f"{reward_model_name(index, len(reward_model))}: {error}") from error
    return tuple(models)


def scorer_for(
    reward_model: PrefixRewardModel,
    kind: str,
    bridge: TextBridge | None = None,
    language_model: PreTrainedModel | None = None,
) -> CandidateScorer:
    """The scorer of one reward model: the one place where guidance builds a scorer, once per reward model (with
    several, each gets its own, of the same `kind`), reading text through `bridge` when it has another tokenizer
    than the language model, and, for an all-token head, the `language_model`'s own hidden states when its weights
    are the head's base."""
    return make_scorer(reward_model, kind, bridge, language_model)


def reward_tokenizers(
    given: RewardModels, reward_tokenizer: Any, count: int
) -> list[PreTrainedTokenizerBase | None]:
    """Each of the `count` reward models' tokenizer: `reward_tokenizer` (one for all, or one per reward model, each
    a tokenizer, a name or `None`), else the one saved with the reward model as `given` (a name or a folder), else
    `None`."""
    givens = list(given) if isinstance(given, (list, tuple)) else [given]
    tokenizers = (
        list(reward_tokenizer) if isinstance(reward_tokenizer, (list, tuple)) else [reward_tokenizer] * count
    )
    if len(tokenizers) != count:
        raise ValueError(
            f"`reward_tokenizer` has {len(tokenizers)} tokenizers for {count} reward models; give one per reward "
            "model, in the same order (None for one whose saved tokenizer is to be used)."
        )
    return [
        resolve_reward_tokenizer(source, tokenizer)
        for source, tokenizer in zip(givens, tokenizers, strict=True)
    ]


def reward_bridges(
    given: RewardModels,
    reward_models: Sequence[PrefixRewardModel],
    tokenizer: PreTrainedTokenizerBase | None,
    reward_tokenizer: Any,
    prompt_template: str | None,
) -> list[TextBridge | None]:
    """Each reward model's [`~bridging.text_bridge`] to the language model's `tokenizer`, from its
    [`reward_tokenizers`]. Warns once for each reward model whose tokenizer is unknown while the language model's
    is given."""
    count = len(reward_models)
    tokenizers = reward_tokenizers(given, reward_tokenizer, count)
    bridges = []
    for index, resolved in enumerate(tokenizers):
        if tokenizer is not None and resolved is None:
            name = "the reward model" if count == 1 else f"`reward_model[{index}]`"
            logger.warning(
                f"The tokenizer of {name} is unknown, so it is taken to read the language model's token ids. Pass "
                "`reward_tokenizer=` to have that checked (token by token, not by vocabulary size) and, should the "
                "two differ, the text bridged between them."
            )
        bridges.append(text_bridge(tokenizer, resolved, prompt_template))
    return bridges


class RewardGuidance:
    r"""
    Builds the [`RewardGuidedLogitsProcessor`] and the stopping criteria for `generate()`, over one scorer per
    reward model and one row tracker, and reads the results afterwards.

    Several reward models (`reward_model=[rm1, rm2]`, multi-objective guidance as in GenARM and controlled decoding)
    score every candidate side by side, each with its own scorer, and the candidate's score is
    `log p + sum_i beta_i * transform_i(r_i)`: `beta`, `reward_transform` and `standardize_rewards` take one value
    per reward model, or one for all. What reads rewards back reports their combination `sum_i beta_i * r_i` of
    the raw rewards ([`RewardGuidanceConfig.combine_rewards`]; the trace's `reward`, `reward_threshold`,
    [`~RewardGuidance.sequence_rewards`]) and each reward model's own (`sequence_rewards(..., per_model=True)`,
    the trace's `rewards_per_model`). With one reward model, everything is as it has always been: the reward is
    that model's.

    Args:
        reward_model ([`PrefixRewardModel`] or `str`, or a list of them): the reward model, or a name/path to load
            with [`AutoModelForPrefixReward`]; or a list of them, one per objective.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): the language model's tokenizer; its EOS and pad ids are
            used when `eos_token_id`/`pad_token_id` are not given.
        reward_tokenizer (`PreTrainedTokenizerBase` or `str`, or a list of them, *optional*): the reward model's
            tokenizer (or its name/folder), one per reward model; by default the one saved with the reward model,
            when it was loaded by name or from a folder. When its vocabulary is the language model's (compared
            token by token, not by size), the reward model reads the language model's ids; otherwise each
            candidate is decoded to text and re-encoded with it (see "Choosing a reward model" in the docs), which
            needs `tokenizer` too.
        reward_prompt_template (`str`, *optional*): how a reward model with another tokenizer and no chat template
            sees the prompt, e.g. `"Question: {prompt}\nAnswer: "` (see [`~bridging.TextBridge`]).
        config ([`RewardGuidanceConfig`], *optional*): the settings; or give them as keyword arguments (`beta`,
            `top_k`, and every other field of [`RewardGuidanceConfig`]).
        eos_token_id (`int` or list of `int`, *optional*): the language model's end-of-sequence ids.
        pad_token_id (`int`, *optional*): the padding id, to recognise left padding in prompts.
        language_model (`PreTrainedModel`, *optional*): the language model whose `generate()` is to be guided. An
            all-token (`head_kind="vocab"`) reward model whose backbone, up to its head's layer, holds this
            language model's weights (the same tensors, or the same content hash) is then scored from the language
            model's own hidden state, with no reward-model forward at all (`scorer="backbone"`); ways 2 and 3 pass it
            themselves. Call [`close`] afterwards to remove the forward hook this adds to the language model.

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

    Two reward models, the second weighed half as much as the first:

    >>> rm2 = AutoModelForPrefixReward.from_config(config).eval()
    >>> both = RewardGuidance([rm, rm2], beta=[1.0, 0.5], top_k=8, eos_token_id=0, pad_token_id=0)
    >>> out = lm.generate(prompt, max_new_tokens=5, do_sample=False, **both.generate_kwargs())
    >>> per_model = both.sequence_rewards(out, prompt_length=3, per_model=True)  # (rows, reward models)
    >>> per_model.shape
    torch.Size([1, 2])
    >>> torch.allclose(both.sequence_rewards(out, prompt_length=3), per_model[:, 0] + 0.5 * per_model[:, 1])
    True
    >>> len(both.trace.steps(out[0], prompt_length=3)[0].rewards_per_model)
    2
    ```
    """

    def __init__(
        self,
        reward_model: RewardModels,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        reward_tokenizer: PreTrainedTokenizerBase | str | None = None,
        reward_prompt_template: str | None = None,
        config: RewardGuidanceConfig | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        language_model: PreTrainedModel | None = None,
        **config_kwargs: Any,
    ):
        self.config = guidance_config(config, config_kwargs)
        check_tokenizer(tokenizer)
        #: Every reward model, in the order given (one, without a list).
        self.reward_models = resolve_reward_models(reward_model)
        self.config.check_num_models(len(self.reward_models))
        #: How each reward model reads the language model's output: `None` (its ids) or a `TextBridge`.
        self.bridges = reward_bridges(
            reward_model, self.reward_models, tokenizer, reward_tokenizer, reward_prompt_template
        )
        #: One scorer per reward model, driven together.
        self.scorers = ScorerSet(
            [
                scorer_for(model, self.config.scorer, bridge, language_model)
                for model, bridge in zip(self.reward_models, self.bridges, strict=True)
            ]
        )
        self.scorers.check_candidates(self.config.top_k)
        self.eos_token_id, self.pad_token_id = special_token_ids(
            tokenizer, eos_token_id, pad_token_id, default_eos_token_id=self.scorers.default_eos_token_id
        )
        self.scorers.check_token_ids("eos_token_id", self.eos_token_id or [])
        self.scorers.check_token_ids("pad_token_id", [] if self.pad_token_id is None else [self.pad_token_id])
        self.tracker = RowTracker(
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            reward_threshold=self.config.reward_threshold,
            record_candidates=self.config.record_candidates,
        )
        self.logits_processor = RewardGuidedLogitsProcessor(self.scorers, self.tracker, self.config)
        self.stopping_criteria = reward_stopping_criteria(self.tracker, self.scorers, self.config)

    def close(self) -> None:
        """Release what the scorers hold outside themselves: the forward hook a backbone scorer adds to the language
        model (removed anyway once the guidance is garbage-collected)."""
        for scorer in self.scorers:
            scorer.close()

    def _the_one(self, what: str, items: Sequence[Any]) -> Any:
        if len(items) > 1:
            raise ValueError(
                f"This RewardGuidance has {len(items)} reward models, so it has no single `{what}`: read "
                f"`{what}s` (one per reward model), and `sequence_rewards(..., per_model=True)` for each one's rewards."
            )
        return items[0]

    @property
    def reward_model(self) -> PrefixRewardModel:
        """The reward model, when there is one (with several, read `reward_models`)."""
        return self._the_one("reward_model", self.reward_models)

    @property
    def scorer(self) -> CandidateScorer:
        """The reward model's scorer, when there is one reward model (with several, read `scorers`)."""
        return self._the_one("scorer", self.scorers.scorers)

    @property
    def bridge(self) -> TextBridge | None:
        """How the reward model reads the language model's output, when there is one reward model (with several,
        read `bridges`): `None` for its ids, else the [`~bridging.TextBridge`] of the two tokenizers."""
        return self._the_one("bridge", self.bridges)

    @property
    def state(self) -> RowTracker:
        """The row tracker (the state the processor and the criteria share); `tracker` is the same object."""
        return self.tracker

    @property
    def trace(self) -> GuidanceTrace:
        """The trace of the last `generate()` call."""
        return self.tracker.trace

    def check_language_model(self, model: PreTrainedModel, input_ids: torch.Tensor) -> None:
        """Refuse a language model this guidance cannot steer: an encoder-decoder, a prompt given only as
        embeddings (`input_ids` empty), or a vocabulary that is not the reward model's.

        Args:
            model (`PreTrainedModel`): the language model whose `generate()` is to be guided.
            input_ids (`torch.LongTensor`): the prompts.
        """
        if model.config.is_encoder_decoder:
            raise ValueError(
                f"Reward-guided generation steers decoder-only (causal) language models; {type(model).__name__} is "
                "an encoder-decoder model, whose generated tokens the reward model would score without the prompt."
            )
        require_prompt_ids(input_ids)
        output_embeddings = model.get_output_embeddings()
        lm_vocab = (
            getattr(output_embeddings, "out_features", None) or model.config.get_text_config().vocab_size
        )
        self.scorers.check_candidates(self.config.top_k, lm_vocab)

    def generate_kwargs(
        self, attention_mask: torch.Tensor | None = None, prompts: Sequence[Prompt] | None = None
    ) -> dict[str, Any]:
        """`{"logits_processor": ..., "stopping_criteria": ...}` for `model.generate(**inputs, **kwargs)`.

        Args:
            attention_mask (`torch.Tensor`, *optional*): the prompts' attention mask. Without it, the prompts' left
                padding is recognised as their leading run of pad tokens, which is wrong only when a prompt really
                starts with the pad token (a tokenizer whose BOS is its pad token); pass the mask then.
            prompts (list of `str` or of chat messages, *optional*): the batch's prompts as text, one per prompt
                row of `input_ids`, for a reward model with another tokenizer, which then sees them in its own
                format. Without them it sees the prompts' tokens decoded, a chat template's markup included.
        """
        self.tracker.prepare(attention_mask, prompts)
        return {
            "logits_processor": LogitsProcessorList([self.logits_processor]),
            "stopping_criteria": StoppingCriteriaList(self.stopping_criteria),
        }

    def sequence_rewards(
        self,
        sequences: torch.Tensor | ModelOutput,
        prompt_length: int,
        prompt_attention_mask: torch.Tensor | None = None,
        batch_size: int = 32,
        per_model: bool = False,
        prompts: Sequence[Prompt] | None = None,
    ) -> torch.Tensor:
        """The reward of each sequence `generate()` returned, read at its last real token; with several reward
        models, their combination `sum_i beta_i * r_i` ([`RewardGuidanceConfig.combine_rewards`]), or with
        `per_model=True` each one's.

        The prompt's left padding is masked (from `prompt_attention_mask` or the pad id), and so is everything
        after a sequence's first end-of-sequence token (the padding `generate()` appends to finished rows).

        Args:
            sequences (`torch.LongTensor` of shape `(rows, length)`): the output of `generate()` (or the object it
                returns with `return_dict_in_generate=True`).
            prompt_length (`int`): the prompt's length in `sequences` (`input_ids.shape[1]`).
            prompt_attention_mask (`torch.Tensor`, *optional*): the prompts' mask, `(rows, prompt_length)` or
                `(batch, prompt_length)` when each prompt was expanded into several rows.
            batch_size (`int`, *optional*, defaults to 32): rows per reward-model forward.
            per_model (`bool`, *optional*, defaults to `False`): return every reward model's reward instead of
                their combination.
            prompts (list of `str` or of chat messages, *optional*): for a reward model with another tokenizer, the
                prompts as text (as given to `generate_kwargs`); without them, the prompt tokens are decoded.

        Returns:
            `torch.FloatTensor` of shape `(rows,)`, or `(rows, reward models)` with `per_model=True` (in the order
            of `reward_model=[...]`).
        """
        rewards = [
            score_sequences(
                model,
                sequences,
                prompt_length,
                prompt_attention_mask=prompt_attention_mask,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                batch_size=batch_size,
            ).float()
            if bridge is None
            else self._bridged_rewards(
                model, bridge, output_sequences(sequences), prompt_length, prompt_attention_mask, prompts
            )
            for model, bridge in zip(self.reward_models, self.bridges, strict=True)
        ]
        rewards = torch.stack(rewards, dim=-1)
        return rewards if per_model else self.config.combine_rewards(rewards)

    def _bridged_rewards(
        self,
        reward_model: PrefixRewardModel,
        bridge: TextBridge,
        sequences: torch.Tensor,
        prompt_length: int,
        prompt_attention_mask: torch.Tensor | None,
        prompts: Sequence[Prompt] | None,
    ) -> torch.Tensor:
        """Each sequence's reward through the bridge: its response's text (through its first EOS) re-encoded after
        its prompt in the reward model's format."""
        prompt_ids = sequences[:, :prompt_length]
        mask = prompt_attention_mask if prompt_attention_mask is not None else torch.ones_like(prompt_ids)
        mask = mask.repeat_interleave(len(sequences) // len(mask), dim=0)
        rows = []
        for index, (prompt, row) in enumerate(
            zip(
                bridge.prompts_of(prompt_ids, mask, prompts),
                sequences[:, prompt_length:].tolist(),
                strict=True,
            )
        ):
            response = bridge.response_ids(through_first_eos(row, self.eos_token_id))
            rows.append(bridge.prompt_ids(prompt, index) + response)
        return whole_text_rewards(reward_model, rows)


__all__ = [
    "RewardGuidance",
    "RewardModels",
    "guidance_config",
    "resolve_reward_models",
    "reward_bridges",
    "reward_tokenizers",
    "scorer_for",
]
