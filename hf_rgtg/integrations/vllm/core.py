"""The shared core of the vLLM processors: each guided request's reward-model state, and one guided step over a
batch of logits rows. It does not import vLLM; the two processor classes (`v1.py`, `v2.py`) translate their
interface's batch bookkeeping into [`GuidedRow`]s.

A request's reward-model state is a row of a scorer (the cached scorer's key/value buffer, for the default reward
model). Requests that start together share one scorer, a *cohort*, so that each step costs one reward-model
forward per cohort rather than one per request. Every step each cohort keeps the rows of its requests that
appended exactly one token since they were scored and drops the others (a request that finished, was aborted,
was not scheduled this step, or was preempted); a dropped request that comes back is rebuilt from its whole
sequence in a new cohort. Nothing depends on the batch's row order, so vLLM's reordering and slot reuse are
handled by the same rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...auto import resolve_reward_model
from ...configuration import RewardGuidanceConfig
from ...defaults import load_default_rm
from ...modeling import PrefixRewardModel
from ...processing import combine_scores, top_candidates
from ...scoring import CandidateScorer, make_scorer
from .settings import VllmGuidanceSettings, request_guidance, trace_id

logger = logging.getLogger(__name__)


@dataclass
class GuidedRow:
    """One logits row of a step, as a processor class hands it to [`GuidanceCore.apply`].

    Args:
        row (`int`): the row's index in the step's logits.
        key (`Hashable`): the request's key, as given to [`GuidanceCore.add`] (a batch index or a slot).
        length (`int`): the tokens of the request's sequence (prompt and output) before the token to be sampled.
        last_token (`int`): the sequence's last token.
        tokens (callable): returns the whole sequence, `length` token ids; called only when the request's
            reward-model state is built or rebuilt.

    Examples:

    ```python
    >>> from hf_rgtg.integrations.vllm.core import GuidedRow
    >>> prompt, output = [5, 6, 7], [8]  # a request's tokens, as vLLM holds them
    >>> row = GuidedRow(0, "request-0", len(prompt) + len(output), output[-1], lambda: [*prompt, *output])
    >>> row.length, row.last_token, row.tokens()
    (4, 8, [5, 6, 7, 8])
    ```
    """

    row: int
    key: Hashable
    length: int
    last_token: int
    tokens: Callable[[], list[int]]


@dataclass(eq=False)
class GuidedRequest:
    """A guided request: its settings, and where its reward-model state lives."""

    config: RewardGuidanceConfig
    trace_id: str | None = None
    source: Any = None  # what the processor class keeps to read the request's tokens
    cohort: Cohort | None = None
    length: int = 0  # the tokens the reward-model state covers
    unguided: bool = False  # past the reward model's positions: passed through from then on

    @property
    def weighing(self) -> tuple[Any, ...]:
        """The settings that weigh the rewards; requests with equal ones are combined together."""
        config = self.config
        return (config.beta, config.reward_transform, config.standardize_rewards)

    @property
    def choosing(self) -> tuple[int, str]:
        """The settings that choose the candidates; one cohort holds requests with equal ones."""
        return (self.config.top_k, self.config.score_with)


@dataclass(eq=False)
class Cohort:
    """Requests whose reward-model states are the rows of one scorer, in its row order."""

    scorer: CandidateScorer
    members: list[GuidedRequest]
    candidates: torch.Tensor | None = None  # the last step's candidates, (rows, k)
    rows: list[int] = field(default_factory=list)  # this step's logits row of each member

    def advance(self, keep: list[int], tokens: list[int]) -> None:
        """Keep the members at `keep` (in that order), each having appended its token of `tokens`."""
        device = self.scorer.device
        appended = torch.tensor(tokens, dtype=torch.long, device=device)
        kept = torch.tensor(keep, dtype=torch.long, device=device)
        parents = None if keep == list(range(len(self.members))) else kept
        chosen = None
        if self.candidates is not None:
            candidates = self.candidates.to(device).index_select(0, kept)
            match = candidates == appended[:, None]
            chosen = torch.where(match.any(-1), match.int().argmax(-1), -1)
        self.scorer.advance(appended, parents, chosen)
        self.members = [self.members[index] for index in keep]
        for member in self.members:
            member.length += 1
        self.candidates = None


class GuidanceCore:
    r"""
    Reward-guided decoding over vLLM's batches, independent of vLLM's interfaces.

    Each step, for every guided row, it takes the top-k of the row's logits (their log-softmax, or the raw logits
    with `score_with="logits"`), asks the request's scorer for the rewards of the k candidate prefixes, and writes
    `log p + beta * transform(r)` into those k entries and `-inf` into the others: the rule of
    [`RewardGuidedLogitsProcessor`][hf_rgtg.RewardGuidedLogitsProcessor] (the same two functions of
    `hf_rgtg.processing`). Rows of requests without guidance are not touched.

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model; it shares the served model's tokenizer.
        vocab_size (`int`): the served model's vocabulary (the logits' width).
        scorer (`str`, *optional*, defaults to `"auto"`): the scorer kind of every cohort (see
            [`make_scorer`][hf_rgtg.scoring.make_scorer]); kinds that read text are refused.
        trace_file (`str`, *optional*): a JSON Lines file that the steps of requests with a trace id are appended to.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.integrations.vllm.core import GuidanceCore, GuidedRow

    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                      num_attention_heads=4, num_key_value_heads=2)
    >>> _ = torch.manual_seed(0)
    >>> core = GuidanceCore(AutoModelForPrefixReward.from_config(config).eval(), vocab_size=64)
    >>> core.add("a", {"beta": 1.0, "top_k": 4}), core.add("b", None)  # "b" passes through
    (True, False)
    >>> logits = torch.randn(2, 64)
    >>> rows = [GuidedRow(0, "a", 3, 9, lambda: [7, 8, 9]), GuidedRow(1, "b", 2, 5, lambda: [4, 5])]
    >>> out = core.apply(logits.clone(), rows)
    >>> int(torch.isfinite(out[0]).sum()), bool(torch.equal(out[1], logits[1]))
    (4, True)
    ```
    """

    def __init__(
        self,
        reward_model: PrefixRewardModel,
        vocab_size: int,
        scorer: str = "auto",
        trace_file: str | None = None,
    ):
        self.reward_model = reward_model
        self.vocab_size = vocab_size
        self.scorer_kind = scorer
        self.trace_file = trace_file
        self.requests: dict[Hashable, GuidedRequest] = {}
        self.cohorts: list[Cohort] = []
        self.checker = self.new_scorer()  # answers the checks; it scores nothing
        try:
            self.checker.check_candidates(1, vocab_size)
        except ValueError as error:
            raise ValueError(
                f"hf_rgtg's vLLM processor needs a reward model with the served model's vocabulary: {error} "
                "A reward model with another tokenizer (a bridged one) is not supported in vLLM; use it through "
                "`generate()`."
            ) from error
        self.max_positions = self.checker.max_positions

    @classmethod
    def from_settings(
        cls, settings: VllmGuidanceSettings, vocab_size: int, device: torch.device | str
    ) -> GuidanceCore:
        """Load the reward model the engine's settings name, on `device`, and build the core around it."""
        dtype = getattr(torch, settings.dtype)
        if settings.reward_model == "default":
            reward_model = load_default_rm(dtype=dtype)
        else:
            reward_model = resolve_reward_model(settings.reward_model).to(dtype)
        reward_model = reward_model.to(device).eval()
        logger.info(f"hf_rgtg: reward model {settings.reward_model!r} loaded for vLLM on {device}.")
        return cls(reward_model, vocab_size, settings.scorer, settings.trace_file)

    def new_scorer(self) -> CandidateScorer:
        """A scorer of the engine's kind for the reward model."""
        return make_scorer(self.reward_model, self.scorer_kind)

    # ------------------------------------------------------------------------------------------------------------
    # Requests

    def add(self, key: Hashable, extra_args: Mapping[str, Any] | None, source: Any = None) -> bool:
        """Register the request at `key` (replacing whatever held `key`); returns whether it is guided. `source`
        is kept with it for the processor class ([`GuidanceCore.sources`]).

        Its guidance settings are read from `extra_args` ([`request_guidance`]); its reward-model state is built at
        its first step. A request whose `top_k` the vocabulary cannot hold passes through, with a warning (its
        settings were checked when it was admitted; vLLM's workers cannot refuse a request).
        """
        self.remove(key)
        config = request_guidance(extra_args)
        if config is None:
            return False
        try:
            self.checker.check_candidates(config.top_k, self.vocab_size)
        except ValueError as error:
            logger.warning(f"hf_rgtg: a request passes through unguided: {error}")
            return False
        self.requests[key] = GuidedRequest(config, trace_id(extra_args), source)
        return True

    def remove(self, key: Hashable) -> None:
        """Forget the request at `key` (finished or aborted); its reward-model row is dropped at the next step."""
        request = self.requests.pop(key, None)
        if request is not None:
            request.cohort = None

    def move(self, source: Hashable, target: Hashable, swap: bool) -> None:
        """The request at `source` now sits at `target`; with `swap`, the one at `target` moves to `source`."""
        moved = self.requests.pop(source, None)
        other = self.requests.pop(target, None)
        if moved is not None:
            self.requests[target] = moved
        if other is not None and swap:
            self.requests[source] = other

    def sources(self) -> list[tuple[Hashable, Any]]:
        """`(key, source)` of every guided request."""
        return [(key, request.source) for key, request in self.requests.items()]

    def is_guided(self, key: Hashable) -> bool:
        """Whether the request at `key` is guided."""
        return key in self.requests

    # ------------------------------------------------------------------------------------------------------------
    # One step

    @torch.no_grad()
    def apply(self, logits: torch.Tensor, rows: Sequence[GuidedRow]) -> torch.Tensor:
        """Guide the rows of `logits` `(rows, V)` that `rows` names and whose requests are guided; return `logits`,
        changed in place."""
        if not self.requests and not self.cohorts:
            return logits
        present: dict[GuidedRequest, GuidedRow] = {}
        for row in rows:
            request = self.requests.get(row.key)
            if request is not None and not request.unguided:
                present[request] = row
        self._advance_cohorts(present)
        self._start_cohorts(present)
        for cohort in self.cohorts:
            cohort.rows = [present[member].row for member in cohort.members]
            if cohort.rows:
                self._score(cohort, logits)
        return logits

    def _advance_cohorts(self, present: dict[GuidedRequest, GuidedRow]) -> None:
        """Move each cohort on by its members' appended tokens, dropping the members that did not append one."""
        for cohort in list(self.cohorts):
            keep, tokens = [], []
            for index, member in enumerate(cohort.members):
                row = present.get(member)
                if member.cohort is cohort and row is not None and row.length == member.length + 1:
                    keep.append(index)
                    tokens.append(row.last_token)
                elif member.cohort is cohort:
                    member.cohort = None  # rebuilt from its whole sequence if it is present
            if not keep:
                self.cohorts.remove(cohort)
                continue
            cohort.advance(keep, tokens)
            if not cohort.scorer.candidates_fit():
                self._stop_guiding(cohort.members)
                self.cohorts.remove(cohort)

    def _start_cohorts(self, present: dict[GuidedRequest, GuidedRow]) -> None:
        """One new cohort per candidate setting for the present requests that have no reward-model state."""
        waiting: dict[tuple[int, str], list[GuidedRequest]] = {}
        for request, row in present.items():
            if request.cohort is None:
                if self.max_positions is not None and row.length + 1 > self.max_positions:
                    self._stop_guiding([request])
                    continue
                waiting.setdefault(request.choosing, []).append(request)
        for (top_k, _), members in waiting.items():
            sequences = [present[member].tokens() for member in members]
            width = max(len(sequence) for sequence in sequences)
            ids = torch.zeros(len(sequences), width, dtype=torch.long)
            mask = torch.zeros(len(sequences), width, dtype=torch.long)
            for index, sequence in enumerate(sequences):  # left padding, masked out
                ids[index, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
                mask[index, width - len(sequence) :] = 1
            scorer = self.new_scorer()
            prompt_rewards = scorer.reset(ids, mask, top_k)
            cohort = Cohort(scorer, members)
            for member, sequence in zip(members, sequences, strict=True):
                member.cohort, member.length = cohort, len(sequence)
            self.cohorts.append(cohort)
            if self.trace_file is not None:
                rewards = prompt_rewards.tolist()
                self._trace(
                    members,
                    [{"length": m.length, "reward": r} for m, r in zip(members, rewards, strict=True)],
                )

    def _score(self, cohort: Cohort, logits: torch.Tensor) -> None:
        """Score the cohort's candidates and write their combined scores into its rows of `logits`."""
        index = torch.tensor(cohort.rows, dtype=torch.long, device=logits.device)
        scores = logits.index_select(0, index)
        first = cohort.members[0].config
        top_base, candidates = top_candidates(first, scores)
        rewards = cohort.scorer.score(candidates).to(logits.device, torch.float32)
        cohort.candidates = candidates
        combined = torch.empty_like(top_base)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for position, member in enumerate(cohort.members):
            groups.setdefault(member.weighing, []).append(position)
        for positions in groups.values():
            picked = torch.tensor(positions, dtype=torch.long, device=logits.device)
            config = cohort.members[positions[0]].config
            combined[picked] = combine_scores(config, top_base[picked], rewards[picked][..., None])
        out = torch.full_like(scores, float("-inf")).scatter_(1, candidates, combined)
        logits.index_copy_(0, index, out)
        if self.trace_file is not None:
            self._trace(
                cohort.members,
                [
                    {"length": member.length, "candidates": ids, "rewards": values}
                    for member, ids, values in zip(
                        cohort.members, candidates.tolist(), rewards.tolist(), strict=True
                    )
                ],
            )

    def _stop_guiding(self, requests: list[GuidedRequest]) -> None:
        for request in requests:
            request.unguided, request.cohort = True, None
        logger.warning(
            f"hf_rgtg: {len(requests)} request(s) continue unguided: their next candidates lie past the reward "
            f"model's {self.max_positions} positions."
        )

    def _trace(self, requests: list[GuidedRequest], records: list[dict[str, Any]]) -> None:
        """Append one JSON line per request with a trace id to the trace file."""
        if self.trace_file is None:
            return
        lines = [
            json.dumps({"id": request.trace_id, **record})
            for request, record in zip(requests, records, strict=True)
            if request.trace_id is not None
        ]
        if lines:
            with open(self.trace_file, "a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")


__all__ = ["GuidanceCore", "GuidedRow"]
