"""The stopping criteria of reward-guided decoding, one class per reason, as in transformers: the reward threshold,
the reward-model call budget, the time budget, and the reward model's positions. Each reads the row tracker (and
the scorer's position limit); none writes anything."""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .configuration import RewardGuidanceConfig
from .processing import warn_out_of_positions
from .scorer_set import ScorerSet
from .scoring import CandidateScorer
from .tracking import RowTracker


class RewardStoppingCriteria(StoppingCriteria):
    r"""
    The base of reward-guided decoding's stopping criteria: each one reads the [`~tracking.RowTracker`] that the
    [`RewardGuidedLogitsProcessor`] writes, and answers for every row with `stopped(input_ids)`.
    [`reward_stopping_criteria`] builds the ones a [`RewardGuidanceConfig`] asks for.

    Args:
        tracker ([`~tracking.RowTracker`]): the rows' bookkeeping, shared with the processor.

    Examples:

    ```python
    >>> import torch
    >>> from hf_rgtg.stopping import RewardCallsCriteria
    >>> from hf_rgtg.tracking import RowTracker
    >>> tracker = RowTracker()
    >>> criteria = RewardCallsCriteria(tracker, max_reward_calls=2)
    >>> tracker.reward_calls = 2
    >>> criteria(torch.tensor([[1, 2, 3]]), None).tolist()
    [True]
    ```
    """

    supports_continuous_batching = False

    def __init__(self, tracker: RowTracker):
        self.tracker = tracker

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        return self.stopped(input_ids).to(input_ids.device)

    def stopped(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which rows of `input_ids` should stop, `(rows,)` bool."""
        raise NotImplementedError

    @staticmethod
    def every_row(input_ids: torch.Tensor, stop: bool) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)


class RewardThresholdCriteria(RewardStoppingCriteria):
    """Stops a sequence once its prefix reward reaches `reward_threshold`: the reward the trace records, which with
    several reward models is their combination `sum_i beta_i * r_i` of the raw rewards.

    Under beam search the criteria see the `2 * num_beams` best continuations rather than the next step's rows;
    their rewards are read from the last step's candidates alike.

    Args:
        tracker ([`~tracking.RowTracker`]): the rows' bookkeeping.
        reward_threshold (`float`): the reward that ends a sequence.
    """

    def __init__(self, tracker: RowTracker, reward_threshold: float):
        super().__init__(tracker)
        self.reward_threshold = reward_threshold

    def stopped(self, input_ids: torch.Tensor) -> torch.Tensor:
        rewards = self.tracker.appended_rewards(input_ids)
        if rewards is None:
            return self.every_row(input_ids, False)
        # NaN (a token that was not a candidate, or a finished row) never reaches the threshold.
        return torch.tensor([reward >= self.reward_threshold for reward in rewards], dtype=torch.bool)


class RewardCallsCriteria(RewardStoppingCriteria):
    """Stops every sequence once the reward model has scored `max_reward_calls` steps.

    Args:
        tracker ([`~tracking.RowTracker`]): the rows' bookkeeping.
        max_reward_calls (`int`): the budget of scoring steps (one step scores the k candidates of every row).
    """

    def __init__(self, tracker: RowTracker, max_reward_calls: int):
        super().__init__(tracker)
        self.max_reward_calls = max_reward_calls

    def stopped(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.every_row(input_ids, self.tracker.reward_calls >= self.max_reward_calls)


class RewardTimeCriteria(RewardStoppingCriteria):
    """Stops every sequence once `max_time` seconds have passed since the first guided step.

    transformers' own `max_time` (`MaxTimeCriteria`) counts from the start of `generate()`, the prompt's forward
    included; this one counts guided decoding only.

    Args:
        tracker ([`~tracking.RowTracker`]): the rows' bookkeeping.
        max_time (`float`): the budget in seconds.
    """

    def __init__(self, tracker: RowTracker, max_time: float):
        super().__init__(tracker)
        self.max_time = max_time

    def stopped(self, input_ids: torch.Tensor) -> torch.Tensor:
        start = self.tracker.start_time
        return self.every_row(input_ids, start is not None and time.monotonic() - start >= self.max_time)


class RewardPositionsCriteria(RewardStoppingCriteria):
    """Stops every sequence where the reward model's positions end (with several, those of the one with the fewest).

    The processor ends the rows when `generate()` asks for a step past the last position (a call that asked for
    exactly what fits has stopped before); this criterion then stops the call. Without a pad or EOS id to end the
    rows with, it stops them at the last position itself, with the same warning.

    Args:
        tracker ([`~tracking.RowTracker`]): the rows' bookkeeping.
        scorer ([`~scoring.CandidateScorer`] or [`~scorer_set.ScorerSet`]): the scorer, or the scorers of several
            reward models, which know the reward models' positions.
    """

    def __init__(self, tracker: RowTracker, scorer: CandidateScorer | ScorerSet):
        super().__init__(tracker)
        self.scorers = ScorerSet.of(scorer)

    def stopped(self, input_ids: torch.Tensor) -> torch.Tensor:
        tracker, scorer = self.tracker, self.scorers
        if tracker.out_of_positions:
            return self.every_row(input_ids, True)
        if tracker.end_token_id is not None or tracker.start_time is None:
            return self.every_row(input_ids, False)
        if scorer.candidates_fit(appended=input_ids.shape[1] - scorer.length):
            return self.every_row(input_ids, False)
        warn_out_of_positions(scorer, input_ids.shape[1] - scorer.prompt_width, None)
        return self.every_row(input_ids, True)


def reward_stopping_criteria(
    tracker: RowTracker, scorer: CandidateScorer | ScorerSet, config: RewardGuidanceConfig
) -> StoppingCriteriaList:
    """The stopping criteria `config` asks for, over `tracker` and `scorer` (or the scorers of several reward
    models): always the positions criterion, and the threshold, call and time criteria when their settings are
    given."""
    criteria = StoppingCriteriaList([RewardPositionsCriteria(tracker, scorer)])
    if config.reward_threshold is not None:
        criteria.append(RewardThresholdCriteria(tracker, config.reward_threshold))
    if config.max_reward_calls is not None:
        criteria.append(RewardCallsCriteria(tracker, config.max_reward_calls))
    if config.max_time is not None:
        criteria.append(RewardTimeCriteria(tracker, config.max_time))
    return criteria


__all__ = [
    "RewardCallsCriteria",
    "RewardPositionsCriteria",
    "RewardStoppingCriteria",
    "RewardThresholdCriteria",
    "RewardTimeCriteria",
    "reward_stopping_criteria",
]
