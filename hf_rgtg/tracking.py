"""Row tracking of reward-guided decoding: which row of a step extends which row of the last one (beam search
reorders rows), what each row appended, and the one commit per step of those tokens to the trace.

The logits processor owns the tracker: it commits each step before scoring the next and records what it scored.
The stopping criteria only read it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .tokenization import Prompt
from .trace import GuidanceTrace
from .validation import checked_token_id, checked_token_ids


def require_prompt_ids(input_ids: torch.Tensor) -> None:
    """Refuse a `generate()` call whose prompt is only `inputs_embeds`: the reward model reads token ids."""
    if input_ids.shape[-1] == 0:
        raise ValueError(
            "Reward-guided generation scores the prompt's token ids, but `generate()` got `inputs_embeds` without "
            "`input_ids`. Pass the prompt's `input_ids` as well (the language model still uses `inputs_embeds`)."
        )


def leading_padding_mask(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """An attention mask that masks each row's leading run of `pad_token_id` (left padding) and nothing else."""
    if pad_token_id is None:
        return torch.ones_like(input_ids)
    return (input_ids != pad_token_id).long().cummax(dim=1).values


@dataclass
class CommittedStep:
    """The tokens `generate()` appended after a scoring step, as the scorer's `advance` takes them."""

    tokens: torch.Tensor  # (rows,)
    parents: torch.Tensor | None  # (rows,) the row of the last step each row extends; None when in order
    chosen: torch.Tensor  # (rows,) each token's index among its row's candidates, -1 where it was none


class RowTracker:
    """Follows the rows of one reward-guided `generate()` call from step to step, and writes the trace.

    A call starts when the rows do not extend the last step's rows by exactly one token. Rows that produced an
    EOS id, or reached the reward threshold, are finished: their later (padding) tokens stay out of the trace.

    The rewards it is given are the ones the trace records and the threshold reads (with several reward models,
    their combination); each reward model's own rewards, when given, go into the trace beside them.

    Args:
        eos_token_id (`int` or list of `int`, *optional*): the language model's end-of-sequence ids.
        pad_token_id (`int`, *optional*): the padding id, used to infer the prompts' left padding when no
            attention mask is given.
        reward_threshold (`float`, *optional*): a row whose prefix reward reaches it is finished.
        record_candidates (`bool`, *optional*, defaults to `False`): whether the trace's steps show their
            candidates.

    Examples:

    ```python
    >>> import torch
    >>> from hf_rgtg.tracking import RowTracker
    >>> tracker = RowTracker(eos_token_id=0, pad_token_id=0)
    >>> prompts = torch.tensor([[0, 5], [6, 7]])
    >>> tracker.prompt_mask(prompts).tolist()
    [[0, 1], [1, 1]]
    >>> tracker.start(prompts, torch.tensor([0.5, 0.25]))
    >>> tracker.record(torch.tensor([[8, 9], [9, 0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    >>> step = tracker.commit(torch.tensor([[6, 7, 0], [0, 5, 8]]))  # beam search swapped the rows
    >>> step.parents.tolist(), step.chosen.tolist()
    ([1, 0], [1, 0])
    >>> tracker.finished
    [True, False]
    ```
    """

    def __init__(
        self,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        reward_threshold: float | None = None,
        record_candidates: bool = False,
    ):
        self.eos_token_ids = frozenset(checked_token_ids("eos_token_id", eos_token_id) or ())
        self.pad_token_id = checked_token_id("pad_token_id", pad_token_id)
        self.reward_threshold = reward_threshold
        self.record_candidates = record_candidates
        self.prepare()

    @property
    def end_token_id(self) -> int | None:
        """The token that ends the rows when `generate()` asks for a step past the reward model's positions: the
        pad token, else the lowest EOS id."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return min(self.eos_token_ids) if self.eos_token_ids else None

    def prepare(
        self, attention_mask: torch.Tensor | None = None, prompts: Sequence[Prompt] | None = None
    ) -> None:
        """Forget everything and expect a new `generate()` call; `attention_mask` is its prompts' mask, `prompts`
        its prompts as text (for a scorer that reads text)."""
        self.prompts = None if prompts is None else list(prompts)
        self.trace = GuidanceTrace(record_candidates=self.record_candidates)
        self.reward_calls = 0
        self.start_time: float | None = None
        self.out_of_positions = False  # the reward model's positions ended the rows
        self.finished: list[bool] = []
        self.last_rewards: list[float] = []  # each row's prefix reward, as of the last commit
        self._prompt_mask = attention_mask
        # Per-row bookkeeping is kept in Python lists: a handful of rows and k candidates are cheaper to walk in
        # Python than to push through a dozen tiny tensor operations at every step.
        self._ids: torch.Tensor | None = None  # the rows at the last scoring step
        self._candidates: list[list[int]] | None = None  # (rows, k) scored at that step
        self._candidate_rewards: list[list[float]] | None = None
        self._candidate_rewards_per_model: list[list[tuple[float, ...]]] | None = (
            None  # several reward models
        )
        self._nodes: list[int] = []

    def prompt_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The attention mask of the prompts `input_ids` of a new call: the one given to `prepare` (repeated for
        `num_return_sequences` or `num_beams`), else their leading run of pad tokens. All-padding rows are
        refused."""
        require_prompt_ids(input_ids)
        mask = self._prompt_mask
        if (
            mask is not None
            and mask.shape[1] == input_ids.shape[1]
            and input_ids.shape[0] % mask.shape[0] == 0
        ):
            mask = mask.to(input_ids.device).repeat_interleave(input_ids.shape[0] // mask.shape[0], dim=0)
        else:
            if self.pad_token_id is None and input_ids.shape[0] > 1:
                warnings.warn(
                    "Reward-guided generation cannot tell the prompts' left padding: no attention mask was given "
                    "and no pad token id is known, so every prompt token is scored as real. Pass `pad_token_id=` "
                    "(or the tokenizer) to `RewardGuidance`, or the mask to `generate_kwargs(attention_mask=...)`.",
                    stacklevel=4,
                )
            mask = leading_padding_mask(input_ids, self.pad_token_id)
        empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Prompt row(s) {empty} are all padding (their attention mask is all zeros), so there is nothing to "
                "continue or score. Give every prompt at least one real token, or drop those rows."
            )
        return mask

    def start(
        self,
        input_ids: torch.Tensor,
        prompt_rewards: torch.Tensor,
        prompt_rewards_per_model: torch.Tensor | None = None,
    ) -> None:
        """Begin a new call with the prompts `input_ids` and their rewards `(rows,)`, and with several reward
        models each one's, `(rows, reward models)`."""
        self.prepare()  # the prompts' mask applies to one call only
        rewards = prompt_rewards.float().cpu().tolist()
        per_model = _per_model_tuples(prompt_rewards_per_model, len(rewards))
        self.start_time = time.monotonic()
        self._ids = input_ids
        self.finished = [False] * len(input_ids)
        self.last_rewards = rewards
        self._nodes = [
            self.trace.add_root(tuple(row), reward, each)
            for row, reward, each in zip(input_ids.tolist(), rewards, per_model, strict=True)
        ]

    def record(
        self,
        candidates: torch.Tensor,
        rewards: torch.Tensor,
        rewards_per_model: torch.Tensor | None = None,
    ) -> None:
        """Record one scoring step: the `(rows, k)` candidates of the rows last committed and their rewards, and
        with several reward models each one's, `(rows, k, reward models)`."""
        self.reward_calls += 1
        self._candidates = candidates.tolist()
        self._candidate_rewards = rewards.float().cpu().tolist()
        self._candidate_rewards_per_model = (
            None
            if rewards_per_model is None
            else [[tuple(each) for each in row] for row in rewards_per_model.float().cpu().tolist()]
        )
        per_model = self._candidate_rewards_per_model or [None] * len(self._candidates)
        for node, finished, row_candidates, row_rewards, row_per_model in zip(
            self._nodes, self.finished, self._candidates, self._candidate_rewards, per_model, strict=True
        ):
            if not finished:
                self.trace.add_candidates(node, row_candidates, row_rewards, row_per_model)

    def parent_rows(self, input_ids: torch.Tensor) -> list[int] | None:
        """The row of the last scoring step that each row of `input_ids` extends by one token, or `None` when some
        row extends none of them (or nothing was scored yet)."""
        previous = self._ids
        if self._candidates is None or previous is None or input_ids.shape[1] != previous.shape[1] + 1:
            return None
        if input_ids.shape[0] == previous.shape[0] and torch.equal(input_ids[:, :-1], previous):
            return list(range(len(input_ids)))
        matches = (input_ids[:, None, :-1] == previous[None, :, :]).all(-1)
        if not bool(matches.any(-1).all()):
            return None
        return matches.int().argmax(-1).tolist()

    def appended_rewards(self, input_ids: torch.Tensor) -> list[float] | None:
        """The prefix reward of each row of `input_ids` after the token it appended to a row of the last scoring
        step (NaN for a token that was no candidate, and for finished rows); `None` when the rows do not extend
        that step. Reads only: beam search shows the stopping criteria continuations that are not the next step's
        rows."""
        parents = self.parent_rows(input_ids)
        if parents is None:
            return None
        rewards = []
        for parent, token in zip(parents, input_ids[:, -1].tolist(), strict=True):
            row_candidates = self._candidates[parent]
            if self.finished[parent] or token not in row_candidates:
                rewards.append(math.nan)
            else:
                rewards.append(self._candidate_rewards[parent][row_candidates.index(token)])
        return rewards

    def _rewards_per_model(self, parent: int, index: int) -> tuple[float, ...] | None:
        """Each reward model's reward of candidate `index` of row `parent` (NaN for a token that was no
        candidate); `None` with one reward model."""
        per_model = self._candidate_rewards_per_model
        if per_model is None:
            return None
        if index < 0:
            return (math.nan,) * len(per_model[parent][0])
        return per_model[parent][index]

    def commit(self, input_ids: torch.Tensor) -> CommittedStep | None:
        """Commit the tokens `generate()` appended after the last scoring step to the trace, once per step. Returns
        them for the scorer, or `None` when `input_ids` does not extend that step (a new call)."""
        parents = self.parent_rows(input_ids)
        if parents is None:
            return None
        nodes, finished_rows, rewards, chosen = [], [], [], []
        threshold = self.reward_threshold
        for parent, token in zip(parents, input_ids[:, -1].tolist(), strict=True):
            row_candidates = self._candidates[parent]
            index = row_candidates.index(token) if token in row_candidates else -1
            node, reward, finished = self._nodes[parent], self.last_rewards[parent], self.finished[parent]
            if finished:
                # Finished rows only get padding: their cache entries are never read, so any candidate will do.
                chosen.append(max(index, 0))
            else:
                chosen.append(index)
                reward = self._candidate_rewards[parent][index] if index >= 0 else math.nan
                node = self.trace.child(node, token, reward, self._rewards_per_model(parent, index))
                finished = token in self.eos_token_ids or (threshold is not None and reward >= threshold)
            nodes.append(node)
            finished_rows.append(finished)
            rewards.append(reward)
        self._nodes, self.finished, self.last_rewards = nodes, finished_rows, rewards
        self._ids = input_ids
        self._candidates = self._candidate_rewards = self._candidate_rewards_per_model = None
        in_order = parents == list(range(len(parents)))
        return CommittedStep(
            tokens=input_ids[:, -1],
            parents=None if in_order else torch.tensor(parents, device=input_ids.device),
            chosen=torch.tensor(chosen, device=input_ids.device),
        )


def _per_model_tuples(rewards: torch.Tensor | None, rows: int) -> list[tuple[float, ...] | None]:
    """Each row's rewards of every reward model, `(rows, reward models)`, as tuples; `None` per row without
    them."""
    if rewards is None:
        return [None] * rows
    return [tuple(row) for row in rewards.float().cpu().tolist()]


#: The name `RowTracker` had while it also owned the scorer and the stopping logic; kept for existing imports.
GuidanceState = RowTracker

__all__ = ["CommittedStep", "GuidanceState", "RowTracker", "leading_padding_mask", "require_prompt_ids"]
