"""The reference scorer: every candidate prefix re-encoded from scratch, the ground truth of every fast scorer."""

from __future__ import annotations

import torch

from ..modeling import PrefixRewardModel
from .base import CandidateScorer


class ReferenceScorer(CandidateScorer):
    """Re-encodes every candidate prefix from scratch: `rows * k` sequences per step, no cache.

    Slow (quadratic in the length) but obviously correct; it is what the cached scorer is tested against, and the
    fallback for reward models that cannot be scored incrementally (encoder backbones).

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model.
        max_batch_size (`int`, *optional*, defaults to 64): how many sequences go through one forward.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward, ReferenceScorer

    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).eval()
    >>> scorer = ReferenceScorer(rm)
    >>> scorer.reset(torch.tensor([[1, 2, 3]]), torch.ones(1, 3)).shape
    torch.Size([1])
    >>> scorer.score(torch.tensor([[4, 5, 6]])).shape
    torch.Size([1, 3])
    ```
    """

    description = "reference scorer, which re-encodes every prefix (slower, always exact)"

    def __init__(self, reward_model: PrefixRewardModel, max_batch_size: int = 64):
        super().__init__(reward_model)
        self.max_batch_size = max_batch_size

    def _rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.reward_model.supports_incremental_scoring:
            input_ids, attention_mask = _left_to_right_padding(input_ids, attention_mask)
        rewards = [
            self.reward_model(
                input_ids[i : i + self.max_batch_size],
                attention_mask=attention_mask[i : i + self.max_batch_size],
                return_dict=True,
            ).reward
            for i in range(0, len(input_ids), self.max_batch_size)
        ]
        return torch.cat(rewards)

    @torch.no_grad()
    def _reset(self) -> torch.Tensor:
        return self._rewards(self.input_ids, self.attention_mask)

    @torch.no_grad()
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        rows, k = candidates.shape
        ids = torch.cat(
            [self.input_ids.repeat_interleave(k, dim=0), candidates.to(self.device).reshape(-1, 1)], dim=1
        )
        mask = torch.cat(
            [self.attention_mask.repeat_interleave(k, dim=0), self.attention_mask.new_ones(rows * k, 1)],
            dim=1,
        )
        return self._rewards(ids, mask).view(rows, k)


def _left_to_right_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's left padding to its right end (encoders number positions from the first column)."""
    width = input_ids.shape[1]
    shift = width - attention_mask.sum(-1, keepdim=True)
    index = (torch.arange(width, device=input_ids.device)[None, :] + shift) % width
    return input_ids.gather(1, index), attention_mask.gather(1, index)


__all__ = ["ReferenceScorer"]
