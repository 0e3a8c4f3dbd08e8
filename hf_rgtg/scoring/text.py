"""Scorers for a reward model with another tokenizer than the language model: what the two share is text.

[`TextScorerBase`] holds what every such scorer shares: the [`~hf_rgtg.bridging.TextBridge`], the prompts in the
reward model's format, and the questions the decoding side asks, answered in the language model's tokens where
they are about candidates and in the reward model's where they are about its positions. [`TextScorer`] decodes
each candidate continuation and re-encodes the whole text: the reference of the bridged scorer, and the path of
encoder reward models, whose every position sees the whole text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..bridging import TextBridge
from ..modeling import PrefixRewardModel
from .base import CandidateScorer, TopKError

#: How many reward-model tokens one more language-model token is assumed to add at most, when asking whether the
#: candidates of a later step still fit in the reward model's positions.
TOKENS_PER_STEP = 8


@torch.no_grad()
def whole_text_rewards(
    reward_model: PrefixRewardModel, sequences: Sequence[Sequence[int]], max_batch_size: int = 64
) -> torch.Tensor:
    """The reward `(len(sequences),)` of each whole sequence of reward-model token ids (prompt and response in the
    reward model's format), right-padded into batches of `max_batch_size`."""
    rewards = []
    for start in range(0, len(sequences), max_batch_size):
        batch = sequences[start : start + max_batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = torch.tensor(list(sequence), dtype=torch.long)
            mask[row, : len(sequence)] = 1
        out = reward_model(
            ids.to(reward_model.device), attention_mask=mask.to(reward_model.device), return_dict=True
        )
        rewards.append(out.reward.float())
    return torch.cat(rewards)


class TextScorerBase(CandidateScorer):
    """The base of scorers that bridge two tokenizers through text (see the module).

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model.
        bridge ([`~hf_rgtg.bridging.TextBridge`]): the language model's and the reward model's tokenizers.
    """

    #: The scorer reads text: `make_scorer` builds it with a bridge, and only when the tokenizers differ.
    reads_text = True

    def __init__(self, reward_model: PrefixRewardModel, bridge: TextBridge):
        super().__init__(reward_model)
        if not isinstance(bridge, TextBridge):
            raise TypeError(f"`bridge` has to be a TextBridge, got {type(bridge).__name__}.")
        self.bridge = bridge
        self.reward_prompt_ids: list[list[int]] = []
        self.longest_reward_input = 0  # the reward model's tokens of the longest row, as of the last step

    @property
    def vocab_size(self) -> int:
        """How many token ids the language model's tokenizer has: candidates are its tokens."""
        return len(self.bridge.language_tokenizer)

    def check_candidates(self, top_k: int, vocab_size: int | None = None) -> None:
        """Refuse `top_k` candidates beyond the language model's vocabulary; the reward model's has nothing to do
        with them."""
        vocab = vocab_size if vocab_size is not None else self.vocab_size
        if top_k > vocab:
            raise TopKError(
                f"`top_k` (={top_k}) is larger than the vocabulary ({vocab} tokens); use at most {vocab}."
            )

    def check_token_ids(self, name: str, token_ids: Sequence[int]) -> None:
        """EOS and pad are the language model's ids here, which its tokenizer decodes (to no text)."""

    def candidates_fit(self, appended: int = 0) -> bool:
        """Whether the reward model's positions still hold the candidates of a step `appended` language-model
        tokens from now, with [`TOKENS_PER_STEP`] reward-model tokens assumed per token."""
        limit = self.max_positions
        return limit is None or self.longest_reward_input + TOKENS_PER_STEP * (appended + 1) <= limit

    def _reset_prompts(self) -> None:
        """Each row's prompt in the reward model's format, from the prompts given to `reset` or decoded."""
        prompts = self.bridge.prompts_of(self.input_ids, self.attention_mask, self.prompts)
        self.reward_prompt_ids = [
            self.bridge.prompt_ids(prompt, index) for index, prompt in enumerate(prompts)
        ]
        self.longest_reward_input = max(len(ids) for ids in self.reward_prompt_ids)
        self.reward_model.check_length(self.longest_reward_input)


class TextScorer(TextScorerBase):
    """Decodes every candidate continuation and re-encodes the whole text with the reward model's tokenizer: the
    `rows * k` texts of a step in one batched forward (identical texts once), no cache.

    Exact for every pairing, and quadratic in the length: it is the reference the bridged scorer is tested against,
    and the path of encoder reward models (BERT, RoBERTa, DeBERTa), whose every position sees the whole text, so
    that no prefix can be cached.

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model.
        bridge ([`~hf_rgtg.bridging.TextBridge`]): the two tokenizers.
        max_batch_size (`int`, *optional*, defaults to 64): how many texts go through one forward.

    Examples:

    ```python
    >>> import torch
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import BertConfig, PreTrainedTokenizerFast
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.bridging import TextBridge
    >>> from hf_rgtg.scoring import TextScorer

    >>> def words(vocab):
    ...     backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="?"))
    ...     backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ...     return PreTrainedTokenizerFast(tokenizer_object=backend)
    >>> lm_tokenizer, rm_tokenizer = words(["?", "hi", "good", "bad"]), words(["?", "bad", "good", "hi"])
    >>> rm = AutoModelForPrefixReward.from_config(BertConfig(vocab_size=4, hidden_size=16, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=32)).eval()
    >>> scorer = TextScorer(rm, TextBridge(lm_tokenizer, rm_tokenizer))
    >>> scorer.reset(torch.tensor([[1]]), torch.ones(1, 1), prompts=["hi"]).shape
    torch.Size([1])
    >>> scorer.score(torch.tensor([[2, 3]])).shape  # "good" and "bad", re-encoded as the RM's tokens 2 and 1
    torch.Size([1, 2])
    ```
    """

    description = (
        "text scorer, which decodes each candidate and re-encodes the whole text with the reward model's tokenizer "
        "(exact, quadratic in the length)"
    )

    def __init__(self, reward_model: PrefixRewardModel, bridge: TextBridge, max_batch_size: int = 64):
        super().__init__(reward_model, bridge)
        self.max_batch_size = max_batch_size

    def _reward_input(self, row: int, response_ids: list[int]) -> list[int]:
        return self.reward_prompt_ids[row] + self.bridge.response_ids(response_ids)

    def _response_ids(self) -> list[list[int]]:
        return self.input_ids[:, self.prompt_width :].tolist()

    @torch.no_grad()
    def _reset(self) -> torch.Tensor:
        self._reset_prompts()
        return whole_text_rewards(self.reward_model, self.reward_prompt_ids, self.max_batch_size)

    @torch.no_grad()
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        rows, k = candidates.shape
        sequences: dict[tuple[int, ...], int] = {}
        index = []
        for row, (response, tokens) in enumerate(zip(self._response_ids(), candidates.tolist(), strict=True)):
            for token in tokens:
                sequence = tuple(self._reward_input(row, [*response, token]))
                index.append(sequences.setdefault(sequence, len(sequences)))
        self.longest_reward_input = max(len(sequence) for sequence in sequences)
        self.reward_model.check_length(self.longest_reward_input)
        rewards = whole_text_rewards(self.reward_model, list(sequences), self.max_batch_size)
        return rewards[torch.tensor(index, device=rewards.device)].view(rows, k)


__all__ = ["TOKENS_PER_STEP", "TextScorer", "TextScorerBase", "whole_text_rewards"]
