"""The trace of reward-guided decoding: a prefix tree of every sequence one `generate()` call extended, with each
prefix's reward and the candidates scored from it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers.utils import ModelOutput

from .validation import checked_prompt_length


@dataclass
class StepRecord:
    """One generated token of one sequence in a [`GuidanceTrace`].

    Args:
        token (`int`): the token.
        reward (`float`): the reward of the prefix it ends. With several reward models, their combination
            `sum_i beta_i * r_i` of the raw rewards (no `reward_transform` or standardisation), which
            `reward_threshold` reads too ([`RewardGuidanceConfig.combine_rewards`]); with one, its reward.
        candidates (`list[int]`, *optional*): with `record_candidates=True`, the k candidates it was chosen from.
        candidate_rewards (`list[float]`, *optional*): their rewards, combined as `reward` is.
        rewards_per_model (`tuple[float, ...]`, *optional*): each reward model's own reward of the prefix, in the
            order of `reward_model=[...]`; `(reward,)` with one reward model.
        candidate_rewards_per_model (`list[tuple[float, ...]]`, *optional*): with `record_candidates=True`, each
            candidate's `rewards_per_model`.

    Examples:

    ```python
    >>> from hf_rgtg import StepRecord
    >>> step = StepRecord(token=7, reward=1.5, rewards_per_model=(2.0, -1.0))  # beta=[1.0, 0.5]
    >>> step.reward == 1.0 * step.rewards_per_model[0] + 0.5 * step.rewards_per_model[1]
    True
    ```
    """

    token: int
    reward: float
    candidates: list[int] | None = None
    candidate_rewards: list[float] | None = None
    rewards_per_model: tuple[float, ...] | None = None
    candidate_rewards_per_model: list[tuple[float, ...]] | None = None


@dataclass
class GuidanceTrace:
    """What reward-guided decoding did: a prefix tree of every sequence it extended.

    Each node is a prefix; it holds the token that ended it, that prefix's reward, and the k candidates scored from
    it with their rewards. Rows that share a prefix share nodes, so the trace follows beam-search reordering and
    `num_return_sequences` without copying. Read it with [`~GuidanceTrace.steps`] for the sequences `generate()`
    returned. A token `generate()` appended without a later step recording it (the last step, or a beam that
    ended) is read from its parent's candidates.

    With several reward models, a reward is their combination `sum_i beta_i * r_i` of the raw rewards (the one
    `reward_threshold` reads), and each node also holds every reward model's own reward, which [`StepRecord`]'s
    `rewards_per_model` and [`~GuidanceTrace.prompt_rewards_per_model`] read back.

    Args:
        record_candidates (`bool`, *optional*, defaults to `False`): give each [`StepRecord`] the k candidates it
            was chosen from.

    Examples:

    ```python
    >>> from hf_rgtg import GuidanceTrace
    >>> trace = GuidanceTrace()
    >>> root = trace.add_root((5, 6), reward=0.5)
    >>> trace.add_candidates(root, [7, 8], [1.0, -1.0])
    >>> [(step.token, step.reward) for step in trace.steps([5, 6, 8], prompt_length=2)]
    [(8, -1.0)]
    >>> two = GuidanceTrace()  # two reward models, beta=[1.0, 0.5]
    >>> root = two.add_root((5, 6), reward=0.0, rewards_per_model=(0.5, -1.0))
    >>> two.add_candidates(root, [7, 8], [1.5, 0.0], [(2.0, -1.0), (0.5, -1.0)])
    >>> [(step.reward, step.rewards_per_model) for step in two.steps([5, 6, 7], prompt_length=2)]
    [(1.5, (2.0, -1.0))]
    ```
    """

    record_candidates: bool = False
    prompts: list[tuple[int, ...]] = field(default_factory=list)
    prompt_rewards: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    #: Each node's reward of every reward model, with several; `None` with one.
    rewards_per_model: list[tuple[float, ...] | None] = field(default_factory=list)
    #: The candidates scored from each node and their rewards (nodes of finished rows have none).
    candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    #: With several reward models, each candidate's reward of every reward model, by node.
    candidates_per_model: dict[int, list[tuple[float, ...]]] = field(default_factory=dict)
    children: dict[tuple[int, int], int] = field(default_factory=dict)
    roots: dict[tuple[int, ...], int] = field(default_factory=dict)

    def add_root(
        self, prompt: tuple[int, ...], reward: float, rewards_per_model: tuple[float, ...] | None = None
    ) -> int:
        """The node of `prompt`, added with its `reward` (and each reward model's, with several) if it is new."""
        if prompt not in self.roots:
            self.roots[prompt] = self._new_node(-1, reward, rewards_per_model)
            self.prompts.append(prompt)
            self.prompt_rewards.append(reward)
        return self.roots[prompt]

    def _new_node(self, token: int, reward: float, rewards_per_model: tuple[float, ...] | None) -> int:
        self.tokens.append(token)
        self.rewards.append(reward)
        self.rewards_per_model.append(rewards_per_model)
        return len(self.tokens) - 1

    def child(
        self, node: int, token: int, reward: float, rewards_per_model: tuple[float, ...] | None = None
    ) -> int:
        """The node of `node`'s prefix extended by `token`, added with its `reward` (and each reward model's, with
        several) if it is new."""
        key = (node, token)
        if key not in self.children:
            self.children[key] = self._new_node(token, reward, rewards_per_model)
        elif math.isnan(self.rewards[self.children[key]]):
            self.rewards[self.children[key]] = reward
            self.rewards_per_model[self.children[key]] = rewards_per_model
        return self.children[key]

    def add_candidates(
        self,
        node: int,
        candidates: list[int],
        rewards: list[float],
        rewards_per_model: list[tuple[float, ...]] | None = None,
    ) -> None:
        """Record the candidates scored from `node` and their rewards (and each reward model's, with several)."""
        self.candidates[node] = (candidates, rewards)
        if rewards_per_model is not None:
            self.candidates_per_model[node] = rewards_per_model

    def steps(self, sequence: Sequence[int] | torch.Tensor, prompt_length: int) -> list[StepRecord]:
        """The guided steps of one returned sequence: each generated token with its prefix reward.

        Args:
            sequence: one row of `generate()`'s output (prompt included).
            prompt_length: the prompt's length in that output (`input_ids.shape[1]`).

        Returns:
            One [`StepRecord`] per generated token that guidance produced; the list stops where the sequence
            leaves the trace (padding after a finished sequence).
        """
        ids = sequence.tolist() if isinstance(sequence, torch.Tensor) else list(sequence)
        node = self._root(ids, prompt_length)
        records: list[StepRecord] = []
        for token in ids[prompt_length:]:
            parent, node = node, self._step(node, token)
            if node is None:
                break
            record = StepRecord(
                token=token, reward=self.rewards[node], rewards_per_model=self._per_model(node)
            )
            if self.record_candidates and parent in self.candidates:
                record.candidates, record.candidate_rewards = self.candidates[parent]
                record.candidate_rewards_per_model = self.candidates_per_model.get(parent) or [
                    (reward,) for reward in record.candidate_rewards
                ]
            records.append(record)
        return records

    def _per_model(self, node: int) -> tuple[float, ...]:
        """Each reward model's reward of `node`: `(reward,)` with one reward model."""
        per_model = self.rewards_per_model[node]
        return per_model if per_model is not None else (self.rewards[node],)

    def prompt_reward(self, sequence: Sequence[int] | torch.Tensor, prompt_length: int) -> float:
        """The reward of the prompt of one returned sequence (its first `prompt_length` tokens), as guidance
        scored it before the first step; with several reward models, their combination."""
        ids = sequence.tolist() if isinstance(sequence, torch.Tensor) else list(sequence)
        return self.rewards[self._root(ids, prompt_length)]

    def prompt_rewards_per_model(
        self, sequence: Sequence[int] | torch.Tensor, prompt_length: int
    ) -> tuple[float, ...]:
        """Each reward model's reward of the prompt of one returned sequence, in the order of
        `reward_model=[...]`: `(prompt_reward,)` with one reward model."""
        ids = sequence.tolist() if isinstance(sequence, torch.Tensor) else list(sequence)
        return self._per_model(self._root(ids, prompt_length))

    def _root(self, ids: list[int], prompt_length: int) -> int:
        """The node of the prompt of `ids`, refused when it is not a prompt of the last call."""
        prompt_length = checked_prompt_length(prompt_length, len(ids))
        node = self.roots.get(tuple(ids[:prompt_length]))
        if node is None:
            lengths = sorted({len(prompt) for prompt in self.roots})
            raise ValueError(
                f"The first {prompt_length} tokens of this sequence are not a prompt of the last guided `generate()` "
                f"call (its prompts have {lengths or 'no'} tokens). Pass `prompt_length=input_ids.shape[1]` and an "
                "output of that call."
            )
        return node

    def _step(self, node: int, token: int) -> int | None:
        """The child of `node` by `token`: recorded, or one of the candidates scored from `node`."""
        child = self.children.get((node, token))
        if child is not None or node not in self.candidates:
            return child
        candidates, rewards = self.candidates[node]
        if token not in candidates:
            return None
        index = candidates.index(token)
        per_model = self.candidates_per_model.get(node)
        return self.child(node, token, rewards[index], None if per_model is None else per_model[index])

    def rewards_of(self, sequences: torch.Tensor | ModelOutput, prompt_length: int) -> list[list[float]]:
        """The prefix reward after each generated token, for every returned sequence (`generate()`'s output: the
        tensor, or the output object of `return_dict_in_generate=True`); with several reward models, their
        combination (each one's is in [`~GuidanceTrace.steps`]' `rewards_per_model`)."""
        return [
            [step.reward for step in self.steps(row, prompt_length)] for row in output_sequences(sequences)
        ]


def output_sequences(output: torch.Tensor | ModelOutput) -> torch.Tensor:
    """The `(rows, length)` token ids of `generate()`'s output: the tensor itself (or nested lists of ids), or the
    `sequences` of the object `return_dict_in_generate=True` returns."""
    sequences = getattr(output, "sequences", output)
    if isinstance(sequences, (list, tuple)) and all(isinstance(row, (list, tuple)) for row in sequences):
        sequences = torch.tensor(sequences)
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2:
        raise TypeError(
            f"Expected `generate()`'s output (a (rows, length) tensor of token ids, or its output object with "
            f"`.sequences`), got {type(output).__name__}"
            + (f" of shape {tuple(sequences.shape)}" if isinstance(sequences, torch.Tensor) else "")
            + ". For one row, pass `sequence[None]`."
        )
    return sequences


__all__ = ["GuidanceTrace", "StepRecord", "output_sequences"]
