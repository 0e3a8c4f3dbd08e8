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
from .bridging import text_bridge
from .configuration import RewardGuidanceConfig
from .modeling import PrefixRewardModel
from .processing import RewardGuidedLogitsProcessor
from .redistribution import score_sequences, through_first_eos
from .scoring import make_scorer, whole_text_rewards
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


class RewardGuidance:
    r"""
    Builds the [`RewardGuidedLogitsProcessor`] and the stopping criteria for `generate()`, over one scorer and one
    row tracker, and reads the results afterwards.

    Args:
        reward_model ([`PrefixRewardModel`] or `str`): the reward model, or a name/path to load with
            [`AutoModelForPrefixReward`].
        tokenizer (`PreTrainedTokenizerBase`, *optional*): the language model's tokenizer; its EOS and pad ids are
            used when `eos_token_id`/`pad_token_id` are not given.
        reward_tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*): the reward model's tokenizer (or its
            name/folder); by default the one saved with the reward model, when it was loaded by name or from a
            folder. When its vocabulary is the language model's (compared token by token, not by size), the reward
            model reads the language model's ids; otherwise each candidate is decoded to text and re-encoded with
            it (see "Choosing a reward model" in the docs), which needs `tokenizer` too.
        reward_prompt_template (`str`, *optional*): how a reward model with another tokenizer and no chat template
            sees the prompt, e.g. `"Question: {prompt}\nAnswer: "` (see [`~bridging.TextBridge`]).
        config ([`RewardGuidanceConfig`], *optional*): the settings; or give them as keyword arguments (`beta`,
            `top_k`, and every other field of [`RewardGuidanceConfig`]).
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
        reward_tokenizer: PreTrainedTokenizerBase | str | None = None,
        reward_prompt_template: str | None = None,
        config: RewardGuidanceConfig | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        **config_kwargs: Any,
    ):
        self.config = guidance_config(config, config_kwargs)
        check_tokenizer(tokenizer)
        self.reward_model = resolve_reward_model(reward_model)
        reward_tokenizer = resolve_reward_tokenizer(reward_model, reward_tokenizer)
        if tokenizer is not None and reward_tokenizer is None:
            logger.warning(
                "The reward model's tokenizer is unknown, so the reward model is taken to read the language model's "
                "token ids. Pass `reward_tokenizer=` to have that checked (token by token, not by vocabulary size) "
                "and, should the two differ, the text bridged between them."
            )
        self.bridge = text_bridge(tokenizer, reward_tokenizer, reward_prompt_template)
        self.scorer = make_scorer(self.reward_model, self.config.scorer, self.bridge)
        self.scorer.check_candidates(self.config.top_k)
        self.eos_token_id, self.pad_token_id = special_token_ids(
            tokenizer, eos_token_id, pad_token_id, default_eos_token_id=self.scorer.default_eos_token_id
        )
        self.scorer.check_token_ids("eos_token_id", self.eos_token_id or [])
        self.scorer.check_token_ids("pad_token_id", [] if self.pad_token_id is None else [self.pad_token_id])
        self.tracker = RowTracker(
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            reward_threshold=self.config.reward_threshold,
            record_candidates=self.config.record_candidates,
        )
        self.logits_processor = RewardGuidedLogitsProcessor(self.scorer, self.tracker, self.config)
        self.stopping_criteria = reward_stopping_criteria(self.tracker, self.scorer, self.config)

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
        self.scorer.check_candidates(self.config.top_k, lm_vocab)

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
        prompts: Sequence[Prompt] | None = None,
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
            prompts (list of `str` or of chat messages, *optional*): for a reward model with another tokenizer, the
                prompts as text (as given to `generate_kwargs`); without them, the prompt tokens are decoded.

        Returns:
            `torch.FloatTensor` of shape `(rows,)`.
        """
        if self.bridge is not None:
            return self._bridged_rewards(
                output_sequences(sequences), prompt_length, prompt_attention_mask, prompts
            )
        return score_sequences(
            self.reward_model,
            sequences,
            prompt_length,
            prompt_attention_mask=prompt_attention_mask,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            batch_size=batch_size,
        )

    def _bridged_rewards(
        self,
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
        bridge = self.bridge
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
        return whole_text_rewards(self.reward_model, rows)


__all__ = ["RewardGuidance", "guidance_config"]
