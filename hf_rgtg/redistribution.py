"""Rewards of whole sequences and of their prefixes, read from a reward model's per-position head: one forward per
batch of sequences, no per-prefix re-encoding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.utils import ModelOutput

from .modeling import PrefixRewardModel
from .trace import output_sequences
from .tracking import leading_padding_mask
from .validation import checked_prompt_length, checked_token_id, checked_token_ids


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


__all__ = ["generated_attention_mask", "score_sequences"]
