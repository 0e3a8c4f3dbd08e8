"""Rewards of whole sequences and of their prefixes, read from a reward model's per-position head: one forward per
batch of sequences, no per-prefix re-encoding.

- [`score_sequences`]: the reward of each of `generate()`'s output sequences, read at its last real token;
- [`prefix_rewards`]: each generated token with the reward of the prefix it ends, `R(x, y<=t)`, from one forward
  pass of a causal reward model;
- [`sequence_reward`]: the reward of one whole continuation;
- [`GenerationResult`]: a continuation's text with both, as a caller shows them next to its text
  (`hf-rgtg generate --show-rewards`, a pipeline).

The last three read the reward model, the end-of-sequence ids and the pad id of a [`RewardGuidance`] (anything
with those three attributes), the guided run's or one built for scoring only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers.utils import ModelOutput

from .modeling import PrefixRewardModel
from .trace import output_sequences
from .tracking import leading_padding_mask
from .validation import checked_prompt_length, checked_token_id, checked_token_ids


class ScoringSettings(Protocol):
    """What the functions below read of a [`RewardGuidance`]."""

    reward_model: PrefixRewardModel
    eos_token_id: list[int] | None
    pad_token_id: int | None


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


@dataclass
class GenerationResult:
    """One generated continuation with its rewards, ready to show.

    It sits with the functions that compute its `steps` and `reward`, so that a caller gets all three from one
    module.

    Args:
        label (`str`): how the continuation was produced ("guided (beta=1.0, top-k=10)", "unguided").
        text (`str`): the decoded continuation, without special tokens.
        steps (`list[tuple[int, float]]`, *optional*): each generated token with the reward of the prefix it ends
            (from the guidance trace, or [`prefix_rewards`]); `None` when they are not known.
        reward (`float`): the reward model's score of the whole sequence ([`sequence_reward`]).

    Examples:

    ```python
    >>> from hf_rgtg.redistribution import GenerationResult
    >>> result = GenerationResult(label="unguided", text=" fine", steps=[(17, 0.25)], reward=0.25)
    >>> result.steps[-1][1] == result.reward
    True
    ```
    """

    label: str
    text: str
    steps: list[tuple[int, float]] | None
    reward: float


@torch.no_grad()
def prefix_rewards(
    guidance: ScoringSettings, sequence: torch.Tensor, prompt_length: int
) -> list[tuple[int, float]] | None:
    """Each generated token of `sequence` with the reward of the prefix it ends, up to and including the first
    end-of-sequence token (what follows it is padding).

    One forward pass of the reward model gives every prefix's reward, which only causal backbones compute
    (elsewhere every position sees the whole input); for the others this returns `None`. For a guided run the
    guidance trace already holds these rewards ([`GuidanceTrace.steps`]); this serves for any other sequence, an
    unguided one for instance.

    Args:
        guidance ([`RewardGuidance`]): gives the reward model and the end-of-sequence ids.
        sequence (`torch.LongTensor` of shape `(length,)`): one row of `generate()`'s output, prompt included.
        prompt_length (`int`): the prompt's length in `sequence`.

    Returns:
        `list[tuple[int, float]]` or `None`: `(token id, reward)` per generated token, `[]` when none was
        generated; `None` for a reward model that cannot score prefixes in one pass.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel, RewardGuidance, prefix_rewards

    >>> text_config = LlamaConfig(
    ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    ... )
    >>> rm = PrefixRewardModel(PrefixRewardConfig(text_config=text_config)).eval()
    >>> # A 3-token prompt, then 8 and 9, then the end-of-sequence token 0 and padding after it.
    >>> sequence = torch.tensor([5, 6, 7, 8, 9, 0, 0])
    >>> steps = prefix_rewards(RewardGuidance(rm, eos_token_id=0), sequence, prompt_length=3)
    >>> [token for token, _ in steps]
    [8, 9, 0]
    >>> abs(steps[1][1] - rm(sequence[None, :5]).reward.item()) < 1e-5  # the reward of the prefix 5 6 7 8 9
    True
    ```
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


def sequence_reward(
    guidance: ScoringSettings, sequences: torch.Tensor, inputs: Mapping[str, torch.Tensor]
) -> float:
    """The reward model's score of the first sequence `generate()` returned, read at its last real token (the
    prompt's padding and everything after the first end-of-sequence token are masked).

    Args:
        guidance ([`RewardGuidance`]): gives the reward model, the end-of-sequence ids and the pad id.
        sequences (`torch.LongTensor` of shape `(rows, length)`): the output of `generate()`.
        inputs (`Mapping[str, torch.Tensor]`): what `generate()` was given: `input_ids` and `attention_mask`, e.g.
            from [`encode_prompt`].

    Returns:
        `float`: the first row's reward ([`RewardGuidance.sequence_rewards`] gives every row's).

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward, RewardGuidance, sequence_reward

    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).eval()
    >>> # The prompt 5 6 7 after a pad token, then 8, the end-of-sequence token 0 and padding.
    >>> inputs = {"input_ids": torch.tensor([[0, 5, 6, 7]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    >>> sequences = torch.tensor([[0, 5, 6, 7, 8, 0, 0]])
    >>> reward = sequence_reward(RewardGuidance(rm, eos_token_id=0, pad_token_id=0), sequences, inputs)
    >>> abs(reward - rm(sequences[:, 1:6]).reward.item()) < 1e-5  # the reward of 5 6 7 8 and the EOS
    True
    ```
    """
    rewards = score_sequences(
        guidance.reward_model,
        sequences,
        prompt_length=inputs["input_ids"].shape[1],
        prompt_attention_mask=inputs["attention_mask"],
        eos_token_id=guidance.eos_token_id,
        pad_token_id=guidance.pad_token_id,
    )
    return float(rewards[0])


__all__ = [
    "GenerationResult",
    "ScoringSettings",
    "generated_attention_mask",
    "prefix_rewards",
    "score_sequences",
    "sequence_reward",
]
