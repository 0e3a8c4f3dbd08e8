"""The logits processor of reward-guided decoding: it chooses the candidates and combines their rewards with the
language model's scores. The rewards come from a scorer; the rows are followed by a tracker."""

from __future__ import annotations

import warnings

import torch
from transformers import LogitsProcessor

from .configuration import RewardGuidanceConfig
from .scorer_set import ScorerSet
from .scoring import CandidateScorer
from .tracking import RowTracker


def warn_out_of_positions(scorers: ScorerSet, new_tokens: int, end_token_id: int | None) -> None:
    """The warning of a call that asked for more tokens than the reward model (the one with the fewest positions,
    of several) has positions for."""
    ending = (
        f" Each row ends with one token {end_token_id} (the pad token, else EOS) after them."
        if end_token_id is not None
        else ""
    )
    warnings.warn(
        f"Reward-guided generation stopped after {new_tokens} new tokens: the longest prompt has "
        f"{scorers.longest_prompt} tokens and {scorers.positions_holder} has at most {scorers.max_positions} positions "
        f"(`max_position_embeddings`).{ending} Ask for at most that many new tokens (`max_new_tokens`), shorten "
        "the prompt, or use a reward model with more positions.",
        stacklevel=4,
    )


def standardize(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`rewards` `(rows, k)` standardised within each row over its `valid` entries (zero mean, unit variance)."""
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    masked = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = masked.sum(-1, keepdim=True) / count
    var = (torch.where(valid, rewards - mean, torch.zeros_like(rewards)) ** 2).sum(-1, keepdim=True) / count
    return (rewards - mean) / (var.sqrt() + 1e-6)


def top_candidates(config: RewardGuidanceConfig, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top_k` candidates of each row of `scores` `(rows, V)`: their base scores (`log_softmax(scores)`, or the
    raw scores with `score_with="logits"`) and their token ids, both `(rows, top_k)`."""
    base = scores.log_softmax(dim=-1) if config.score_with == "logprobs" else scores
    return base.topk(config.top_k, dim=-1)


def combine_scores(
    config: RewardGuidanceConfig, top_base: torch.Tensor, rewards: torch.Tensor
) -> torch.Tensor:
    """The package's rule: `top_base + sum_i beta_i * transform_i(r_i)` over the candidates `(rows, k)`, from each
    reward model's rewards `(rows, k, reward models)`, each standardised on its own if `config` asks. A candidate an
    earlier processor forbade keeps its -inf: -inf plus a finite reward is -inf.

    The logits processor of `generate()` and the vLLM integration both weigh their candidates with it.
    """
    valid = top_base > float("-inf")
    count = rewards.shape[-1]
    combined = top_base
    for model, (beta, standardized) in enumerate(
        zip(config.per_model("beta", count), config.per_model("standardize_rewards", count), strict=True)
    ):
        weighed = config.transform(rewards[..., model], model)
        if standardized:
            weighed = standardize(weighed, valid)
        combined = combined + beta * weighed
    return combined


class RewardGuidedLogitsProcessor(LogitsProcessor):
    r"""
    Reward-guided decoding (ARGS, PARGS) as a logits processor.

    At each step it keeps the k best tokens of the incoming scores, asks the scorer for the reward of each
    candidate prefix, and returns `log p(v) + beta * transform(r(prefix + v))` for those k tokens and `-inf`
    elsewhere. Greedy decoding then takes the argmax (ARGS, PARGS-G); sampling draws from `p * exp(beta * r)` over
    the k tokens (the PARGS tokenwise policy).

    Processors that run before it (repetition penalty, `min_new_tokens`, bad words, ...) shape the candidates;
    tokens they forbid are never candidates. Sampling warpers (temperature, top-p) run after it, on the combined
    scores. Each step it commits what `generate()` appended to the tracker, advances the scorer, and records what
    it scored; the stopping criteria read the same tracker. [`RewardGuidance`] builds the three together.

    With several reward models (a [`~scorer_set.ScorerSet`]), each candidate gets
    `log p(v) + sum_i beta_i * transform_i(r_i(prefix + v))`, each reward model's rewards transformed (and
    standardised, if asked) on their own; the tracker records each reward model's raw rewards and their
    combination [`RewardGuidanceConfig.combine_rewards`].

    Asked for a step whose candidates lie past the reward model's positions (it cannot see `max_new_tokens`), it
    keeps what was generated: it warns, ends every row with the tracker's `end_token_id`, and the positions
    criterion stops the call.

    Args:
        scorer ([`~scoring.CandidateScorer`] or [`~scorer_set.ScorerSet`]): what rewards the candidates: the
            scorer of one reward model, or the scorers of several.
        tracker ([`~tracking.RowTracker`]): the rows' bookkeeping, shared with the stopping criteria.
        config ([`RewardGuidanceConfig`]): the settings.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, LlamaConfig
    >>> from hf_rgtg import AutoModelForPrefixReward, RewardGuidance

    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=0, pad_token_id=0)
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> lm = AutoModelForCausalLM.from_config(config).eval()
    >>> rm = AutoModelForPrefixReward.from_config(config).eval()
    >>> guidance = RewardGuidance(rm, beta=1.0, top_k=5, eos_token_id=0, pad_token_id=0)
    >>> out = lm.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False, **guidance.generate_kwargs())
    >>> out.shape
    torch.Size([1, 7])
    >>> len(guidance.trace.rewards_of(out, prompt_length=3)[0])
    4
    ```
    """

    supports_continuous_batching = False

    def __init__(
        self, scorer: CandidateScorer | ScorerSet, tracker: RowTracker, config: RewardGuidanceConfig
    ):
        self.scorers = ScorerSet.of(scorer)
        config.check_num_models(len(self.scorers))
        self.tracker = tracker
        self.config = config
        self._checked_vocab_size: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        config = self.config
        if scores.shape[-1] != self._checked_vocab_size:
            self.scorers.check_candidates(config.top_k, scores.shape[-1])
            self._checked_vocab_size = scores.shape[-1]
        if not self._begin_step(input_ids):
            ended = torch.full_like(scores, float("-inf"))
            ended[:, self.tracker.end_token_id] = 0.0
            return ended
        top_base, candidates = top_candidates(config, scores)
        rewards = self.scorers.score(candidates)  # (rows, k, reward models)
        self._record(candidates, rewards)
        combined = self.combine(top_base, rewards)
        return torch.full_like(scores, float("-inf")).scatter_(1, candidates, combined)

    def combine(self, top_base: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """`top_base + sum_i beta_i * transform_i(r_i)` over the candidates (see [`combine_scores`])."""
        return combine_scores(self.config, top_base, rewards)

    def _record(self, candidates: torch.Tensor, rewards: torch.Tensor) -> None:
        """Have the tracker record the candidates' combined rewards, and each reward model's when there are
        several."""
        several = rewards.shape[-1] > 1
        self.tracker.record(candidates, self.config.combine_rewards(rewards), rewards if several else None)

    def _begin_step(self, input_ids: torch.Tensor) -> bool:
        """Commit the last step and advance the scorer, or start a new call. Returns whether this step can be
        scored: `False` when its candidates lie past the reward model's positions and the rows can be ended."""
        step = self.tracker.commit(input_ids)
        if step is None:
            mask = self.tracker.prompt_mask(input_ids)
            rewards = self.scorers.reset(
                input_ids, mask, self.config.top_k, self.tracker.prompts
            )  # (rows, reward models)
            several = rewards.shape[-1] > 1
            self.tracker.start(input_ids, self.config.combine_rewards(rewards), rewards if several else None)
            return True
        self.scorers.advance(step.tokens, step.parents, step.chosen)
        end_token_id = self.tracker.end_token_id
        if end_token_id is None or self.scorers.candidates_fit():
            return True  # without a token to end the rows with, the positions criterion stops them earlier
        warn_out_of_positions(self.scorers, input_ids.shape[1] - self.scorers.prompt_width, end_token_id)
        self.tracker.out_of_positions = True
        return False


__all__ = [
    "RewardGuidedLogitsProcessor",
    "combine_scores",
    "standardize",
    "top_candidates",
    "warn_out_of_positions",
]
