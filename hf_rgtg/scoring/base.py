"""The scorer protocol: "give me r(prefix + v) for k candidate tokens per row", and every question the decoding side
asks about the reward model.

A scorer is driven through one `generate()` call in three moves:

1. `reset(input_ids, attention_mask, max_candidates)` once, with the (expanded) prompts, their attention mask and,
   if known, the most candidates a step will score. It returns each prompt's reward, `(rows,)`.
2. `score(candidates)` once per step, with `(rows, k)` candidate token ids. It returns their rewards, `(rows, k)`:
   the reward of each row's prefix extended by each candidate. It does not change the prefixes.
3. `advance(tokens, parents, chosen)` once `generate()` has appended one token per row: `tokens[i]` was appended
   to what used to be row `parents[i]` (`None`: row `i` itself; beam search reorders rows), and `chosen[i]` is
   its index among that row's last candidates (-1 where it was none of them, e.g. a finished row's padding).
   Scorers with state per candidate (a cache) keep the chosen candidate's and drop the others.

The decoding side never reads the reward model's configuration: it asks the scorer (`vocab_size`,
`max_positions`, `default_eos_token_id`, `check_candidates`, `check_token_ids`, `candidates_fit`, `device`,
`dtype`). A new kind of scorer subclasses [`CandidateScorer`], implements `_reset` and `score` (and `_advance` if
it keeps state), and is registered with [`~hf_rgtg.scoring.register_scorer`].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from ..modeling import PrefixRewardModel
from ..tokenization import Prompt


class TopKError(ValueError):
    """`top_k` asks for more candidates than a vocabulary holds (raised by [`CandidateScorer.check_candidates`])."""


class CandidateScorer(ABC):
    """Tracks each row's token ids and attention mask, and scores candidate next tokens (see the module's protocol).

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model, on any device and dtype.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.scoring import CandidateScorer

    >>> class LengthScorer(CandidateScorer):
    ...     '''Rewards each candidate with its prefix's length: no reward model forward at all.'''
    ...     def _reset(self):
    ...         return self.attention_mask.sum(-1).float()
    ...     def score(self, candidates):
    ...         lengths = self.attention_mask.sum(-1, keepdim=True).float() + 1
    ...         return lengths.expand(candidates.shape)

    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    >>> scorer = LengthScorer(rm)
    >>> scorer.reset(torch.tensor([[1, 2, 3]]), torch.ones(1, 3)).tolist()
    [3.0]
    >>> scorer.score(torch.tensor([[4, 5]])).tolist()
    [[4.0, 4.0]]
    ```
    """

    #: How the fallback log line of `scorer="auto"` describes this kind, after "Scoring candidates with the ...".
    description: str = "scorer"

    #: Whether the scorer reads text and is built with a `TextBridge` (a reward model with another tokenizer).
    reads_text: bool = False

    #: Whether `input_ids` and `attention_mask` are kept up to date after `reset`. Scorers with their own record of
    #: the prefixes (a cache) set it to `False`, and both are dropped once `_reset` has read them.
    keeps_inputs: bool = True

    @classmethod
    def unsupported_reason(cls, reward_model: PrefixRewardModel) -> str | None:
        """Why this kind cannot score `reward_model` exactly (`None` when it can). `scorer="auto"` passes over a
        kind with a reason, and logs it."""
        return None

    def __init__(self, reward_model: PrefixRewardModel):
        self.reward_model = reward_model
        self.device = reward_model.device
        self.input_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        self.max_candidates: int | None = None
        self.prompts: Sequence[Prompt] | None = None
        self.prompt_width = 0  # the prompts' width, padding included
        self.longest_prompt = 0  # the real tokens of the longest prompt
        self.length = 0  # the rows' width, padding included: `prompt_width` plus the tokens appended since

    @property
    def dtype(self) -> torch.dtype:
        """The reward model's dtype."""
        return self.reward_model.dtype

    @property
    def vocab_size(self) -> int:
        """How many token ids the reward model reads."""
        return self.reward_model.vocab_size

    @property
    def max_positions(self) -> int | None:
        """The most positions the reward model has, if it declares a limit."""
        return self.reward_model.max_positions

    @property
    def default_eos_token_id(self) -> int | list[int] | None:
        """The end-of-sequence id(s) the reward model's backbone declares: the EOS to assume when neither the user
        nor a tokenizer gives one."""
        return self.reward_model.backbone_eos_token_id

    def check_candidates(self, top_k: int, vocab_size: int | None = None) -> None:
        """Refuse `top_k` candidates the reward model cannot score, and (given the language model's `vocab_size`)
        a language model whose vocabulary is not the reward model's."""
        rm_vocab = self.vocab_size
        if vocab_size is None:
            if top_k > rm_vocab:
                raise TopKError(
                    f"`top_k` (={top_k}) is larger than the reward model's vocabulary ({rm_vocab} tokens); use at "
                    f"most {rm_vocab}."
                )
            return
        if top_k > vocab_size:
            raise TopKError(
                f"`top_k` (={top_k}) is larger than the vocabulary ({vocab_size} tokens); use at most {vocab_size}."
            )
        if rm_vocab != vocab_size:
            raise ValueError(
                f"The language model scores {vocab_size} tokens but the reward model's vocabulary has {rm_vocab}: "
                "they do not share a tokenizer. Pass both tokenizers, `tokenizer=` (the language model's) and "
                "`reward_tokenizer=` (the reward model's), and each candidate is decoded to text and re-encoded for "
                "the reward model."
            )

    def check_token_ids(self, name: str, token_ids: Sequence[int]) -> None:
        """Refuse token ids (of the argument `name`) outside the reward model's vocabulary."""
        outside = [token for token in token_ids if token >= self.vocab_size]
        if outside:
            raise ValueError(
                f"`{name}` ({outside[0]}) lies outside the reward model's vocabulary ({self.vocab_size} tokens). Give "
                "the language model's ids, which the reward model shares, or resize both models' embeddings after "
                "adding a token."
            )

    def candidates_fit(self, appended: int = 0) -> bool:
        """Whether the candidates of a step, after `appended` more tokens per row, lie within the reward model's
        positions (candidates sit one position after the longest row's last token)."""
        next_position = self.longest_prompt + self.length - self.prompt_width + appended + 1
        return self.max_positions is None or next_position <= self.max_positions

    def reset(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_candidates: int | None = None,
        prompts: Sequence[Prompt] | None = None,
    ) -> torch.Tensor:
        """Start over with new prompts; returns the reward of each prompt, shape `(rows,)`.

        `max_candidates`, the most candidates `score` will get per row if known, lets a scorer size its buffers
        once; `score` accepts any number. `prompts`, the batch's prompts as text or chat messages, are for scorers
        that read text (a reward model with another tokenizer); the others read `input_ids`.
        """
        self.prompts = prompts
        self.input_ids = input_ids.to(self.device)
        self.attention_mask = attention_mask.to(self.device, torch.long)
        self.max_candidates = max_candidates
        self.prompt_width = self.length = input_ids.shape[1]
        self.longest_prompt = int(self.attention_mask.sum(-1).max())
        rewards = self._reset()
        if not self.keeps_inputs:
            self.input_ids = self.attention_mask = None
        return rewards

    def advance(
        self, tokens: torch.Tensor, parents: torch.Tensor | None = None, chosen: torch.Tensor | None = None
    ) -> None:
        """Append one token per row.

        Args:
            tokens (`torch.LongTensor` of shape `(rows,)`): the token appended to each row.
            parents (`torch.LongTensor` of shape `(rows,)`, *optional*): the previous row each row extends;
                `None` means row `i` extends row `i`.
            chosen (`torch.LongTensor` of shape `(rows,)`, *optional*): the index of `tokens` among the row's last
                candidates, or -1 where it was not a candidate. Scorers that keep state per candidate use it.
        """
        tokens = tokens.to(self.device)
        if parents is not None:
            parents = parents.to(self.device)
        self._advance(tokens, parents, None if chosen is None else chosen.to(self.device))
        self.length += 1
        if not self.keeps_inputs:
            return
        if parents is not None:
            self.input_ids = self.input_ids.index_select(0, parents)
            self.attention_mask = self.attention_mask.index_select(0, parents)
        self.input_ids = torch.cat([self.input_ids, tokens[:, None]], dim=1)
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones(len(tokens), 1)], dim=1
        )

    def close(self) -> None:
        """Release what the scorer holds outside itself (a hook on the language model); nothing by default."""

    @abstractmethod
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        """Rewards `(rows, k)` of each row's prefix extended by each candidate token `(rows, k)`."""

    @abstractmethod
    def _reset(self) -> torch.Tensor:
        """The prompts' rewards `(rows,)`, from `self.input_ids` and `self.attention_mask` (set by `reset`)."""

    def _advance(
        self, tokens: torch.Tensor, parents: torch.Tensor | None, chosen: torch.Tensor | None
    ) -> None:
        """Hook for scorers with state of their own (called before `input_ids`/`attention_mask` are extended and
        before `length` grows)."""


__all__ = ["CandidateScorer", "TopKError"]
