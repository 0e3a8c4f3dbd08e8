"""The logits processor and stopping criteria of reward-guided decoding, and the state they share."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.utils import ModelOutput

from .modeling import PrefixRewardModel
from .scoring import CachedScorer, CandidateScorer, ReferenceScorer
from .validation import is_integer, is_number, scalar

logger = logging.getLogger(__name__)

REWARD_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda r: r,
    "clamp": lambda r: r.clamp(0.0, 1.0),  # RAD
    "sigmoid": torch.sigmoid,
}


def _finite(name: str, value: Any, hint: str) -> float:
    """`value` as a float: any finite real number (Python, NumPy or a one-element tensor), never a bool."""
    value = scalar(value)
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"`{name}` (={value!r}) has to be a finite number, {hint}.")
    return float(value)


def _positive_int(name: str, value: Any, hint: str) -> int:
    """`value` as an int: any integer >= 1 (Python, NumPy or a one-element integer tensor), never a bool."""
    value = scalar(value)
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` (={value!r}) has to be a positive integer, {hint}.")
    return int(value)


def checked_prompt_length(value: Any, width: int) -> int:
    """`value` as the prompts' length in sequences of `width` tokens: an integer from 1 to `width`."""
    value = scalar(value)
    if not is_integer(value) or not 1 <= value <= width:
        raise ValueError(
            f"`prompt_length` (={value!r}) has to be the prompts' length in the sequences, an integer from 1 to "
            f"their length ({width}): `inputs['input_ids'].shape[1]`."
        )
    return int(value)


def _is_token_id(value: Any) -> bool:
    return is_integer(value) and value >= 0


def checked_token_id(name: str, value: Any) -> int | None:
    """`value` as one token id: a non-negative integer (Python, NumPy or a one-element tensor), or `None`."""
    value = scalar(value)
    if value is None:
        return None
    if not _is_token_id(value):
        raise ValueError(
            f"`{name}` (={value!r}) has to be one token id, a non-negative integer such as `tokenizer.{name}`, "
            "or None."
        )
    return int(value)


def checked_token_ids(name: str, value: Any) -> list[int] | None:
    """`value` as a list of token ids (one id, or a sequence or tensor of them, each a non-negative integer), or
    `None`."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [scalar(item) for item in value]
    elif hasattr(value, "tolist"):  # a tensor, or a NumPy array or scalar
        items = value.tolist()
        items = items if isinstance(items, list) else [items]
    else:
        items = [value]
    if not all(_is_token_id(item) for item in items):
        raise ValueError(
            f"`{name}` (={value!r}) has to be a token id or a list of them, each a non-negative integer (e.g. "
            f"`tokenizer.{name}`), or None."
        )
    return [int(item) for item in items]


@dataclass
class RewardGuidanceConfig:
    """Settings of reward-guided decoding.

    Attributes:
        beta (`float`, defaults to 1.0): weight of the reward against the language model's log-probability. The
            PARGS paper uses 1 for greedy decoding and 2 for sampling.
        top_k (`int`, defaults to 10): how many of the language model's best tokens are scored at each step.
        score_with (`str`, defaults to `"logprobs"`): `"logprobs"` combines the reward with
            `log_softmax(scores)`; `"logits"` with the raw scores, as ARGS does.
        reward_transform (`str` or callable, defaults to `"identity"`): applied to the rewards before use:
            `"identity"`, `"clamp"` (to [0, 1], as RAD does), `"sigmoid"`, or a function of a tensor.
        standardize_rewards (`bool`, defaults to `False`): standardise the rewards within each row's k candidates
            (zero mean, unit variance) before weighting them.
        reward_threshold (`float`, *optional*): stop a sequence once its prefix reward reaches this value.
        max_reward_calls (`int`, *optional*): stop every sequence once the reward model has scored this many steps
            (one call scores the k candidates of every row).
        max_time (`float`, *optional*): stop every sequence once this many seconds have passed since the first
            guided step.
        record_candidates (`bool`, defaults to `False`): keep every step's k candidates and their rewards in the
            trace.
        scorer (`str`, defaults to `"auto"`): `"cached"` (KV-cached, decoder reward models), `"reference"`
            (re-encode every prefix) or `"auto"` (cached when the reward model allows it).
    """

    beta: float = 1.0
    top_k: int = 10
    score_with: str = "logprobs"
    reward_transform: str | Callable[[torch.Tensor], torch.Tensor] = "identity"
    standardize_rewards: bool = False
    reward_threshold: float | None = None
    max_reward_calls: int | None = None
    max_time: float | None = None
    record_candidates: bool = False
    scorer: str = "auto"

    def __post_init__(self):
        self.beta = _finite("beta", self.beta, "e.g. `beta=1.0`")
        self.top_k = _positive_int("top_k", self.top_k, "e.g. `top_k=10`")
        if self.score_with not in ("logprobs", "logits"):
            raise ValueError(f"`score_with` (={self.score_with!r}) has to be 'logprobs' or 'logits'.")
        if not callable(self.reward_transform) and (
            not isinstance(self.reward_transform, str) or self.reward_transform not in REWARD_TRANSFORMS
        ):
            raise ValueError(
                f"`reward_transform` (={self.reward_transform!r}) has to be one of {sorted(REWARD_TRANSFORMS)} or a "
                "function of a tensor."
            )
        for name in ("standardize_rewards", "record_candidates"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` (={getattr(self, name)!r}) has to be True or False.")
        if self.reward_threshold is not None:
            self.reward_threshold = _finite(
                "reward_threshold", self.reward_threshold, "e.g. `reward_threshold=2.0`, or None"
            )
        if self.max_reward_calls is not None:
            self.max_reward_calls = _positive_int(
                "max_reward_calls", self.max_reward_calls, "e.g. `max_reward_calls=64`, or None"
            )
        if self.max_time is not None:
            self.max_time = _finite("max_time", self.max_time, "e.g. `max_time=30.0` (seconds), or None")
            if self.max_time <= 0:
                raise ValueError(
                    f"`max_time` (={self.max_time}) has to be a positive number of seconds or None."
                )
        if self.scorer not in ("auto", "cached", "reference"):
            raise ValueError(f"`scorer` (={self.scorer!r}) has to be 'auto', 'cached' or 'reference'.")

    def transform(self, rewards: torch.Tensor) -> torch.Tensor:
        fn = (
            self.reward_transform
            if callable(self.reward_transform)
            else REWARD_TRANSFORMS[self.reward_transform]
        )
        return fn(rewards)


def make_scorer(reward_model: PrefixRewardModel, kind: str = "auto") -> CandidateScorer:
    """The scorer for `reward_model`. `"auto"`: cached where it is proven exact (see
    [`CachedScorer.unsupported_reason`]), else the reference scorer, with one log line saying why. `"cached"` on a
    reward model outside that raises the reason as a `ValueError`."""
    if kind == "reference":
        return ReferenceScorer(reward_model)
    reason = CachedScorer.unsupported_reason(reward_model)
    if reason is None or kind == "cached":
        return CachedScorer(reward_model)
    logger.warning(
        f"Scoring candidates with the reference scorer, which re-encodes every prefix (slower, always exact): "
        f'{reason} Pass `scorer="reference"` to choose it explicitly, which also silences this line.'
    )
    return ReferenceScorer(reward_model)


@dataclass
class StepRecord:
    """One generated token of one sequence in a [`GuidanceTrace`]."""

    token: int
    reward: float
    candidates: list[int] | None = None
    candidate_rewards: list[float] | None = None


@dataclass
class GuidanceTrace:
    """What reward-guided decoding did: a prefix tree of every sequence it extended.

    Each node is a prefix; it holds the token that ended it, that prefix's reward, and (with
    `record_candidates=True`) the k candidates scored from it. Rows that share a prefix share nodes, so the trace
    follows beam-search reordering and `num_return_sequences` without copying. Read it with
    [`~GuidanceTrace.steps`] for the sequences `generate()` returned.
    """

    prompts: list[tuple[int, ...]] = field(default_factory=list)
    prompt_rewards: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    children: dict[tuple[int, int], int] = field(default_factory=dict)
    roots: dict[tuple[int, ...], int] = field(default_factory=dict)
    # The last scoring step, kept as is: (node of each row, candidates, their rewards, finished rows). A token
    # `generate()` appended after it but never committed (beam search's final step) is read from here.
    last_step: tuple[list[int], list[list[int]], list[list[float]], list[bool]] | None = None

    def add_root(self, prompt: tuple[int, ...], reward: float) -> int:
        if prompt not in self.roots:
            self.roots[prompt] = self._new_node(-1, reward)
            self.prompts.append(prompt)
            self.prompt_rewards.append(reward)
        return self.roots[prompt]

    def _new_node(self, token: int, reward: float) -> int:
        self.tokens.append(token)
        self.rewards.append(reward)
        return len(self.tokens) - 1

    def child(self, node: int, token: int, reward: float) -> int:
        key = (node, token)
        if key not in self.children:
            self.children[key] = self._new_node(token, reward)
        elif math.isnan(self.rewards[self.children[key]]):
            self.rewards[self.children[key]] = reward
        return self.children[key]

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
        prompt_length = checked_prompt_length(prompt_length, len(ids))
        node = self.roots.get(tuple(ids[:prompt_length]))
        records: list[StepRecord] = []
        if node is None:
            lengths = sorted({len(prompt) for prompt in self.roots})
            raise ValueError(
                f"The first {prompt_length} tokens of this sequence are not a prompt of the last guided `generate()` "
                f"call (its prompts have {lengths or 'no'} tokens). Pass `prompt_length=input_ids.shape[1]` and an "
                "output of that call."
            )
        for token in ids[prompt_length:]:
            parent, node = node, self.children.get((node, token))
            if node is None:
                node = self._from_last_step(parent, token)
            if node is None:
                break
            record = StepRecord(token=token, reward=self.rewards[node])
            if parent in self.candidates:
                record.candidates, record.candidate_rewards = self.candidates[parent]
            records.append(record)
        return records

    def _from_last_step(self, node: int, token: int) -> int | None:
        if self.last_step is None:
            return None
        nodes, candidates, rewards, finished = self.last_step
        for row, row_node in enumerate(nodes):
            if row_node == node and not finished[row] and token in candidates[row]:
                return self.child(node, token, rewards[row][candidates[row].index(token)])
        return None

    def rewards_of(self, sequences: torch.Tensor | ModelOutput, prompt_length: int) -> list[list[float]]:
        """The prefix reward after each generated token, for every returned sequence (`generate()`'s output: the
        tensor, or the output object of `return_dict_in_generate=True`)."""
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


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and torch.equal(a, b))


class GuidanceState:
    """The state one reward-guided `generate()` call shares between the logits processor and the stopping criteria.

    It owns the scorer and the trace, finds which row each row extends when `generate()` reorders rows (beam
    search), and resets itself when a new `generate()` call starts (a call whose rows do not extend the previous
    step's rows by exactly one token).

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model.
        config ([`RewardGuidanceConfig`]): the decoding settings.
        eos_token_id (`int` or list of `int`, *optional*): the language model's end-of-sequence ids; a row that
            produced one is finished, and its later (padding) tokens are not scored into the trace.
        pad_token_id (`int`, *optional*): the padding id, used to infer the prompts' left padding when no
            attention mask is given.
    """

    def __init__(
        self,
        reward_model: PrefixRewardModel,
        config: RewardGuidanceConfig,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ):
        self.reward_model = reward_model
        self.config = config
        self.scorer = make_scorer(reward_model, config.scorer)
        self.eos_token_ids = frozenset(checked_token_ids("eos_token_id", eos_token_id) or ())
        self.pad_token_id = checked_token_id("pad_token_id", pad_token_id)
        self.trace = GuidanceTrace()
        self.reward_calls = 0
        self.start_time: float | None = None
        self._prompt_mask: torch.Tensor | None = None
        self._clear()

    def _clear(self) -> None:
        # Per-row bookkeeping is kept in Python lists: a handful of rows and k candidates are cheaper to walk in
        # Python than to push through a dozen tiny tensor operations at every step.
        self._ids: torch.Tensor | None = None  # the rows at the last scoring step
        self._candidates: list[list[int]] | None = None  # (rows, k) scored at that step
        self._candidate_rewards: list[list[float]] | None = None
        self._nodes: list[int] = []
        self._finished: list[bool] | None = None
        self._last_rewards: list[float] | None = None
        self._committed: tuple[int, torch.Tensor | None, torch.Tensor] | None = (
            None  # (length, parents, chosen)
        )
        self._prompt_width = self._longest_prompt = 0
        self._max_positions: int | None = None
        self._positions_spent = False  # a step past the reward model's positions was asked for

    def prepare(self, attention_mask: torch.Tensor | None = None) -> None:
        """Forget everything and start a new `generate()` call; `attention_mask` is the expanded prompts' mask."""
        self._clear()
        self._prompt_mask = attention_mask
        self.trace = GuidanceTrace()
        self.reward_calls = 0
        self.start_time = None

    def _reset(self, input_ids: torch.Tensor) -> None:
        require_prompt_ids(input_ids)
        mask = self._prompt_mask
        if (
            mask is not None
            and mask.shape[1] == input_ids.shape[1]
            and input_ids.shape[0] % mask.shape[0] == 0
        ):
            # `generate()` repeats each prompt for `num_return_sequences` or `num_beams`.
            mask = mask.to(input_ids.device).repeat_interleave(input_ids.shape[0] // mask.shape[0], dim=0)
        else:
            if self.pad_token_id is None and input_ids.shape[0] > 1:
                warnings.warn(
                    "Reward-guided generation cannot tell the prompts' left padding: no attention mask was given "
                    "and no pad token id is known, so every prompt token is scored as real. Pass `pad_token_id=` "
                    "(or the tokenizer) to `RewardGuidance`, or the mask to `generate_kwargs(attention_mask=...)`.",
                    stacklevel=3,
                )
            mask = leading_padding_mask(input_ids, self.pad_token_id)
        if self._ids is not None or self.reward_calls:
            self.prepare()
        self._prompt_mask = None
        empty = (mask.sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Prompt row(s) {empty} are all padding (their attention mask is all zeros), so there is nothing to "
                "continue or score. Give every prompt at least one real token, or drop those rows."
            )
        prompt_rewards = self.scorer.reset(input_ids, mask, self.config.top_k).float().cpu()
        self.start_time = time.monotonic()
        self._ids = input_ids
        self._prompt_width = input_ids.shape[1]
        self._longest_prompt = int(mask.sum(-1).max())
        self._max_positions = self.reward_model.max_positions
        self._finished = [False] * len(input_ids)
        self._last_rewards = prompt_rewards.tolist()
        self._nodes = [
            self.trace.add_root(tuple(row), reward)
            for row, reward in zip(input_ids.tolist(), prompt_rewards.tolist(), strict=True)
        ]

    def _matching_rows(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The row of the last scoring step that each row of `input_ids` extends by one token, or `None` when some
        row extends none of them."""
        previous = self._ids
        if previous is None or input_ids.shape[1] != previous.shape[1] + 1:
            return None
        matches = (input_ids[:, None, :-1] == previous[None, :, :]).all(-1)
        if not bool(matches.any(-1).all()):
            return None
        return matches.int().argmax(-1)

    def _parents(self, input_ids: torch.Tensor) -> torch.Tensor | None | bool:
        """`None` when row i extends row i, a tensor of parent rows after a reorder, `False` for a new call."""
        previous = self._ids
        if previous is None or input_ids.shape != (previous.shape[0], previous.shape[1] + 1):
            return False
        if torch.equal(input_ids[:, :-1], previous):
            return None
        parents = self._matching_rows(input_ids)
        return False if parents is None else parents

    def commit(self, input_ids: torch.Tensor) -> bool:
        """Record the tokens `generate()` appended after the last scoring step. Returns whether `input_ids` extends
        that step (otherwise nothing is recorded)."""
        if self._committed is not None and _same_rows(self._committed[0], input_ids):
            return True
        if self._candidates is None:
            return False
        parents = self._parents(input_ids)
        if parents is False:
            return False
        candidates, rewards, finished = self._candidates, self._candidate_rewards, self._finished
        if parents is not None:
            order = parents.tolist()
            candidates = [candidates[p] for p in order]
            rewards = [rewards[p] for p in order]
            finished = [finished[p] for p in order]
            self._nodes = [self._nodes[p] for p in order]
            self._last_rewards = [self._last_rewards[p] for p in order]
        threshold = self.config.reward_threshold
        chosen = []
        now_finished = list(finished)
        for row, token in enumerate(input_ids[:, -1].tolist()):
            row_candidates = candidates[row]
            index = row_candidates.index(token) if token in row_candidates else -1
            if finished[row]:
                # Finished rows only get padding: their cache entries are never read, so any candidate will do.
                chosen.append(max(index, 0))
                continue
            reward = rewards[row][index] if index >= 0 else math.nan
            chosen.append(index)
            self._nodes[row] = self.trace.child(self._nodes[row], token, reward)
            self._last_rewards[row] = reward
            if token in self.eos_token_ids or (threshold is not None and reward >= threshold):
                now_finished[row] = True
        self._finished = now_finished
        self._committed = (input_ids, parents, torch.tensor(chosen))
        return True

    def begin_step(self, input_ids: torch.Tensor) -> None:
        """Called by the processor with the rows about to be extended: reset or advance the scorer."""
        if not self.commit(input_ids):
            self._reset(input_ids)
            return
        _, parents, chosen = self._committed
        self.scorer.advance(input_ids[:, -1], parents, chosen)
        self._ids = input_ids

    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        """Rewards of the candidates `(rows, k)`, recorded for the trace and the budgets."""
        rewards = self.scorer.score(candidates).float()
        self.reward_calls += 1
        self._candidates = candidates.tolist()
        self._candidate_rewards = rewards.tolist()
        self._committed = None
        self.trace.last_step = (
            list(self._nodes),
            self._candidates,
            self._candidate_rewards,
            list(self._finished),
        )
        if self.config.record_candidates:
            for node, row_candidates, row_rewards in zip(
                self._nodes, self._candidates, self._candidate_rewards, strict=True
            ):
                self.trace.candidates[node] = (row_candidates, row_rewards)
        return rewards

    def budget_spent(self) -> bool:
        config = self.config
        if config.max_reward_calls is not None and self.reward_calls >= config.max_reward_calls:
            return True
        return (
            config.max_time is not None
            and self.start_time is not None
            and time.monotonic() - self.start_time >= config.max_time
        )

    def stopped(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which rows of `input_ids` should stop: reward threshold reached, or the whole budget spent.

        Rows the last step extended are committed to the trace first. Beam search instead shows the stopping
        criteria its `2 * num_beams` best continuations, which are not the next step's rows: their rewards are
        read from the last step's candidates, and each one is added to the trace, so that a beam that ends here
        can be read back."""
        num_rows = input_ids.shape[0]
        if self.commit(input_ids):
            rewards = self._last_rewards
        else:
            rewards = self._record_continuations(input_ids)
        if self.budget_spent() or self._positions_spent:
            return torch.ones(num_rows, dtype=torch.bool)
        if self.end_token_id is None and self._at_positions_limit(input_ids.shape[1]):
            # Without a token to end the rows with, stop here, where it is not known whether more was asked for.
            self._warn_out_of_positions(input_ids.shape[1])
            return torch.ones(num_rows, dtype=torch.bool)
        threshold = self.config.reward_threshold
        if threshold is None or rewards is None:
            return torch.zeros(num_rows, dtype=torch.bool)
        # NaN (a token that was not a candidate, or a finished row) never reaches the threshold.
        return torch.tensor([reward >= threshold for reward in rewards], dtype=torch.bool)

    @property
    def end_token_id(self) -> int | None:
        """The token that ends the rows when `generate()` asks for a step past the reward model's positions: the
        pad token, else the first EOS id."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return min(self.eos_token_ids) if self.eos_token_ids else None

    def _at_positions_limit(self, length: int) -> bool:
        """Whether the candidates of a step on rows of `length` tokens would lie past the reward model's last
        position."""
        new_tokens = length - self._prompt_width
        return self._max_positions is not None and self._longest_prompt + new_tokens >= self._max_positions

    def out_of_positions(self, input_ids: torch.Tensor) -> bool:
        """Called by the processor before a step: whether `generate()` asks for a token the reward model has no
        position for. The processor cannot see `max_new_tokens`, so this is where it learns that tokens are lost
        (a call that asked for exactly what fits stops before it): the step is committed, a warning says how many
        tokens were kept, and the stopping criteria stop every row after this step, which the processor fills with
        [`~GuidanceState.end_token_id`]."""
        if self.end_token_id is None or not self._at_positions_limit(input_ids.shape[1]):
            return False
        if not self.commit(input_ids):
            return False
        self._warn_out_of_positions(input_ids.shape[1])
        self._positions_spent = True
        self._candidates = self._candidate_rewards = None
        return True

    def _warn_out_of_positions(self, length: int) -> None:
        new_tokens = length - self._prompt_width
        ending = (
            f" Each row ends with one token {self.end_token_id} (the pad token, else EOS) after them."
            if self.end_token_id is not None
            else ""
        )
        warnings.warn(
            f"Reward-guided generation stopped after {new_tokens} new tokens: the longest prompt has "
            f"{self._longest_prompt} tokens and the reward model has at most {self._max_positions} positions "
            f"(`max_position_embeddings`).{ending} Ask for at most that many new tokens (`max_new_tokens`), shorten "
            "the prompt, or use a reward model with more positions.",
            stacklevel=3,
        )

    def _record_continuations(self, input_ids: torch.Tensor) -> list[float] | None:
        """Trace and reward of each row of `input_ids` that extends a row of the last scoring step by one of its
        candidates (NaN for other tokens and for finished rows); `None` when the rows do not extend that step."""
        parents = self._matching_rows(input_ids) if self._candidates is not None else None
        if parents is None:
            return None
        rewards = []
        for parent, token in zip(parents.tolist(), input_ids[:, -1].tolist(), strict=True):
            row_candidates = self._candidates[parent]
            if self._finished[parent] or token not in row_candidates:
                rewards.append(math.nan)
                continue
            reward = self._candidate_rewards[parent][row_candidates.index(token)]
            self.trace.child(self._nodes[parent], token, reward)
            rewards.append(reward)
        return rewards


class RewardGuidedLogitsProcessor(LogitsProcessor):
    r"""
    Reward-guided decoding (ARGS, PARGS) as a logits processor.

    At each step it keeps the k best tokens of the incoming scores, scores each candidate prefix with the reward
    model, and returns `log p(v) + beta * transform(r(prefix + v))` for those k tokens and `-inf` elsewhere. Greedy
    decoding then takes the argmax (ARGS, PARGS-G); sampling draws from `p * exp(beta * r)` over the k tokens (the
    PARGS tokenwise policy).

    Processors that run before it (repetition penalty, `min_new_tokens`, bad words, ...) shape the candidates;
    tokens they forbid are never candidates. Sampling warpers (temperature, top-p) run after it, on the combined
    scores. Build it together with [`RewardStoppingCriteria`] through [`RewardGuidance`], which shares one
    [`GuidanceState`] between them.

    Args:
        state ([`GuidanceState`]): the state shared with the stopping criteria.

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

    def __init__(self, state: GuidanceState):
        self.state = state
        self._checked_vocab_size: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        config = self.state.config
        if scores.shape[-1] != self._checked_vocab_size:
            self._check_vocabulary(scores.shape[-1])
            self._checked_vocab_size = scores.shape[-1]
        if self.state.out_of_positions(input_ids):
            ended = torch.full_like(scores, float("-inf"))
            ended[:, self.state.end_token_id] = 0.0
            return ended
        self.state.begin_step(input_ids)
        base = scores.log_softmax(dim=-1) if config.score_with == "logprobs" else scores
        top_base, candidates = base.topk(config.top_k, dim=-1)
        rewards = config.transform(self.state.score(candidates).to(scores.device))
        if config.standardize_rewards:
            rewards = _standardize(rewards, top_base > float("-inf"))
        # A candidate an earlier processor forbade keeps its -inf: -inf plus a finite reward is -inf.
        combined = top_base + config.beta * rewards
        return torch.full_like(scores, float("-inf")).scatter_(1, candidates, combined)

    def _check_vocabulary(self, vocab_size: int) -> None:
        k = self.state.config.top_k
        if k > vocab_size:
            raise ValueError(
                f"`top_k` (={k}) is larger than the vocabulary ({vocab_size} tokens); use at most {vocab_size}."
            )
        rm_vocab = self.state.reward_model.config.text_config.get_text_config().vocab_size
        if rm_vocab != vocab_size:
            raise ValueError(
                f"The language model scores {vocab_size} tokens but the reward model's vocabulary has {rm_vocab}: the "
                "reward model has to share the language model's tokenizer and vocabulary size. Tokenizer bridging "
                "(a reward model with another tokenizer) is not supported yet: use a reward model trained on the "
                "language model's tokenizer, e.g. one built with `AutoModelForPrefixReward.from_pretrained(<the LM>)`."
            )


def _standardize(rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    count = valid.sum(-1, keepdim=True).clamp(min=1)
    masked = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = masked.sum(-1, keepdim=True) / count
    var = (torch.where(valid, rewards - mean, torch.zeros_like(rewards)) ** 2).sum(-1, keepdim=True) / count
    return (rewards - mean) / (var.sqrt() + 1e-6)


class RewardStoppingCriteria(StoppingCriteria):
    r"""
    The stopping side of reward-guided decoding. After each step it records the chosen tokens and their prefix
    rewards in the trace, stops a sequence whose prefix reward reaches `reward_threshold`, and stops every sequence
    once the budget (`max_reward_calls` or `max_time`) is spent.

    Args:
        state ([`GuidanceState`]): the state shared with [`RewardGuidedLogitsProcessor`].

    Examples:

    ```python
    >>> # Built together with the processor:
    >>> from hf_rgtg import RewardGuidance
    >>> # guidance = RewardGuidance(rm, tokenizer, reward_threshold=2.0, max_reward_calls=64)
    >>> # model.generate(**inputs, **guidance.generate_kwargs())
    ```
    """

    supports_continuous_batching = False

    def __init__(self, state: GuidanceState):
        self.state = state

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        return self.state.stopped(input_ids).to(input_ids.device)


__all__ = [
    "GuidanceState",
    "GuidanceTrace",
    "RewardGuidanceConfig",
    "RewardGuidedLogitsProcessor",
    "RewardStoppingCriteria",
    "StepRecord",
    "leading_padding_mask",
    "output_sequences",
    "require_prompt_ids",
    "checked_prompt_length",
    "checked_token_id",
    "checked_token_ids",
    "make_scorer",
]
