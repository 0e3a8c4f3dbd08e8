"""Several reward models at once: the scorers of the reward models one guidance weighs, driven as one.

Each reward model keeps its own scorer (cached, reference, ...; see [`hf_rgtg.scoring`]). A [`ScorerSet`] resets,
scores and advances them together, and answers the decoding side's questions (vocabulary, positions, default EOS)
for all of them at once. The combination of their rewards, `sum_i beta_i * transform_i(r_i)`, is the processor's:
it needs each reward model's own rewards, to transform and standardise them one by one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .scoring import CandidateScorer
from .tokenization import Prompt


def reward_model_name(index: int, count: int) -> str:
    """How messages name reward model `index` of `count`: "the reward model" when it is the only one, else the
    argument it was given as, `` `reward_model[index]` ``."""
    return "the reward model" if count == 1 else f"`reward_model[{index}]`"


class ScorerSet:
    r"""
    The scorers of several reward models, one each, driven together through one `generate()` call.

    `reset` and `score` return every reward model's rewards side by side, in a last dimension of one entry per
    reward model (float32, on the device of the ids given); `advance` tells each scorer what was appended. The
    checks of the decoding side hold for every reward model: `check_candidates` and `check_token_ids` ask each
    scorer (naming the reward model at fault when there are several), `candidates_fit` holds when the candidates fit
    in every reward model, and `max_positions` is the fewest positions of them. With one scorer, it answers exactly
    as that scorer does.

    Args:
        scorers (list of [`~scoring.CandidateScorer`]): one per reward model, in the order of `reward_model=[...]`.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward, ReferenceScorer
    >>> from hf_rgtg.scorer_set import ScorerSet

    >>> config = GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)
    >>> _ = torch.manual_seed(0)
    >>> rm1, rm2 = (AutoModelForPrefixReward.from_config(config).eval() for _ in range(2))
    >>> scorers = ScorerSet([ReferenceScorer(rm1), ReferenceScorer(rm2)])
    >>> scorers.reset(torch.tensor([[1, 2, 3]]), torch.ones(1, 3)).shape  # (rows, reward models)
    torch.Size([1, 2])
    >>> scorers.score(torch.tensor([[4, 5, 6]])).shape  # (rows, k, reward models)
    torch.Size([1, 3, 2])
    ```
    """

    def __init__(self, scorers: Sequence[CandidateScorer]):
        self.scorers = list(scorers)
        if not self.scorers:
            raise ValueError("A ScorerSet needs at least one scorer: give one per reward model.")

    @classmethod
    def of(cls, scorer: CandidateScorer | ScorerSet) -> ScorerSet:
        """`scorer` as a set: a [`ScorerSet`] as it is, one scorer in a set of its own."""
        return scorer if isinstance(scorer, ScorerSet) else cls([scorer])

    def __len__(self) -> int:
        return len(self.scorers)

    def __iter__(self) -> Iterator[CandidateScorer]:
        return iter(self.scorers)

    def __getitem__(self, index: int) -> CandidateScorer:
        return self.scorers[index]

    @property
    def first(self) -> CandidateScorer:
        """The first reward model's scorer: the rows' widths and lengths are the same in every scorer."""
        return self.scorers[0]

    @property
    def prompt_width(self) -> int:
        return self.first.prompt_width

    @property
    def longest_prompt(self) -> int:
        return self.first.longest_prompt

    @property
    def length(self) -> int:
        return self.first.length

    @property
    def max_positions(self) -> int | None:
        """The fewest positions of the reward models that declare a limit; `None` when none does."""
        limits = [scorer.max_positions for scorer in self.scorers if scorer.max_positions is not None]
        return min(limits, default=None)

    @property
    def positions_holder(self) -> str:
        """The reward model whose positions are [`max_positions`], as messages name it."""
        limits = [scorer.max_positions for scorer in self.scorers]
        index = limits.index(self.max_positions) if self.max_positions is not None else 0
        return reward_model_name(index, len(self))

    @property
    def default_eos_token_id(self) -> int | list[int] | None:
        """The end-of-sequence id(s) to assume when neither the user nor a tokenizer gives one: the first reward
        model's backbone's that declares any."""
        declared = (scorer.default_eos_token_id for scorer in self.scorers)
        return next((eos for eos in declared if eos is not None), None)

    def _each(self, check: str, *args) -> None:
        """Run the check `check` of every scorer; with several, a refusal names the reward model at fault and
        keeps its type (a [`~scoring.TopKError`] stays one)."""
        for index, scorer in enumerate(self.scorers):
            try:
                getattr(scorer, check)(*args)
            except ValueError as error:
                if len(self) == 1:
                    raise
                raise type(error)(f"{reward_model_name(index, len(self))}: {error}") from None

    def check_candidates(self, top_k: int, vocab_size: int | None = None) -> None:
        """[`~scoring.CandidateScorer.check_candidates`] of every reward model."""
        self._each("check_candidates", top_k, vocab_size)

    def check_token_ids(self, name: str, token_ids: Sequence[int]) -> None:
        """[`~scoring.CandidateScorer.check_token_ids`] of every reward model."""
        self._each("check_token_ids", name, token_ids)

    def candidates_fit(self, appended: int = 0) -> bool:
        """Whether the candidates of a step, after `appended` more tokens per row, fit in every reward model."""
        return all(scorer.candidates_fit(appended) for scorer in self.scorers)

    @staticmethod
    def _side_by_side(rewards: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return torch.stack([reward.float().to(device) for reward in rewards], dim=-1)

    def reset(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_candidates: int | None = None,
        prompts: Sequence[Prompt] | None = None,
    ) -> torch.Tensor:
        """Every scorer's [`~scoring.CandidateScorer.reset`]: the prompts' rewards, `(rows, reward models)`."""
        rewards = [
            scorer.reset(input_ids, attention_mask, max_candidates, prompts) for scorer in self.scorers
        ]
        return self._side_by_side(rewards, input_ids.device)

    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        """Every scorer's rewards of the candidates `(rows, k)`: `(rows, k, reward models)`."""
        return self._side_by_side([scorer.score(candidates) for scorer in self.scorers], candidates.device)

    def advance(
        self, tokens: torch.Tensor, parents: torch.Tensor | None = None, chosen: torch.Tensor | None = None
    ) -> None:
        """Every scorer's [`~scoring.CandidateScorer.advance`]."""
        for scorer in self.scorers:
            scorer.advance(tokens, parents, chosen)


__all__ = ["ScorerSet", "reward_model_name"]
