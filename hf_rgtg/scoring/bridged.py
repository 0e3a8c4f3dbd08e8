"""The bridged scorer: a decoder reward model with another tokenizer, its keys and values cached up to the last
token of the text that can no longer change, and the k candidates' unstable tails scored in one forward."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..bridging import BridgedText, TextBridge
from ..incremental import IncrementalDecoder
from ..modeling import PrefixRewardModel
from .cached import CachedScorer, prefill_buffer
from .text import TextScorerBase

#: [`BridgedScorer`] compacts its buffer when the row with the most valid columns has at least this many columns
#: masked out (a changed tokenization, fewer new tokens than another row) ...
COMPACT_AFTER = 64
#: ... and at least this share of its valid ones.
COMPACT_SHARE = 0.5


@dataclass
class _Step:
    """What one row feeds the reward model at one step: its text's tokens the buffer does not hold yet (`pending`),
    then the candidates' own tokens as a trie, and where each candidate's reward is read."""

    pending: list[int]
    #: Each trie node: `(token, parent node or -1, attach depth, index in its tail)`.
    nodes: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: Each candidate: `("node", index)`, read at a trie node, or `("depth", d)`, the reward of the prompt and the
    #: text's first `d` tokens (a candidate that adds no tokens of its own).
    readouts: list[tuple[str, int]] = field(default_factory=list)
    longest: int = 0  # the most reward-model tokens of a candidate, prompt included


class BridgedScorer(TextScorerBase):
    """Scores k candidates per row for a decoder reward model whose tokenizer is not the language model's.

    Each row's response is followed as text ([`~hf_rgtg.bridging.BridgedText`]), and the reward model's tokens of
    that text are kept in a key/value buffer. At every step the text's unstable end (its last word) and each
    candidate's text are re-tokenised from a small window; the tokens the buffer already holds are reused, the
    ones where the text's tokenization changed (a word went on, a space joined it) are masked out for good, and
    the text's new tokens and the k candidates' own tokens go through one forward, the candidates as a token trie
    (those that share tokens share nodes), each token attending to what its row's text keeps of the buffer and to
    its own ancestors. It agrees with [`TextScorer`], which re-encodes every candidate's whole text.

    Needs a decoder reward model that the cached scorer is exact on and the incremental decoder runs (GPT-2 and
    the Llama family: Llama, Mistral, Qwen2); `scorer="auto"` takes the text scorer otherwise.

    Args:
        reward_model ([`PrefixRewardModel`]): a decoder prefix reward model.
        bridge ([`~hf_rgtg.bridging.TextBridge`]): the two tokenizers.
    """

    description = (
        "bridged scorer, which caches the reward model's keys and values of the text's stable tokens"
    )
    keeps_inputs = False

    @classmethod
    def unsupported_reason(cls, reward_model: PrefixRewardModel) -> str | None:
        """Why `reward_model` cannot be scored on a cache through text (`None` when it can)."""
        model_type = reward_model.config.text_config.model_type
        if not reward_model.supports_incremental_scoring:
            return (
                f"BridgedScorer needs a decoder reward model; {model_type!r} is an encoder, whose every position "
                "sees the whole text, so each candidate's text is re-encoded whole at every step (quadratic in the "
                "length)."
            )
        reason = CachedScorer.unsupported_reason(reward_model)
        if reason is not None:
            return f"BridgedScorer caches as CachedScorer does: {reason}"
        if IncrementalDecoder.for_backbone(reward_model.backbone, reward_model.head_depth) is None:
            return f"BridgedScorer runs on the incremental decoder, which has no family for {model_type!r}."
        return None

    def __init__(self, reward_model: PrefixRewardModel, bridge: TextBridge):
        super().__init__(reward_model, bridge)
        reason = self.unsupported_reason(reward_model)
        if reason is not None:
            raise ValueError(f'{reason} Use `scorer="text"`, which re-encodes every candidate\'s text.')
        self.decoder = IncrementalDecoder.for_backbone(reward_model.backbone, reward_model.head_depth)

    @torch.no_grad()
    def _reset(self) -> torch.Tensor:
        self._reset_prompts()
        prompts = self.reward_prompt_ids
        width = max(len(ids) for ids in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        self.buffer, rewards = prefill_buffer(
            self.reward_model, self.decoder, ids.to(self.device), mask.to(self.device)
        )
        self.valid = mask.bool().to(self.device)  # (rows, buffer length): the columns each row attends to
        self.texts = [BridgedText(self.bridge) for _ in prompts]
        self.cached: list[list[int]] = [[] for _ in prompts]  # each row's response tokens in the buffer
        self.columns: list[list[int]] = [[] for _ in prompts]  # and the buffer column of each
        self.depth_rewards = [[reward] for reward in rewards.tolist()]  # after 0, 1, ... cached stable tokens
        return rewards

    def _plan(self, row: int, tokens: list[int]) -> _Step:
        """The row's step: the reward model's tokens of its text (`target`, the stable ones and the re-tokenised
        tail) after those already in the buffer, and each candidate's tokens after the ones it shares with
        `target`, as a trie."""
        text = self.texts[row]
        target = text.stable + text.tokens_after(text.text, len(text.stable))[0]
        self._keep(row, _shared_length(self.cached[row], target))
        step = _Step(pending=target[len(self.cached[row]) :])
        trie: dict[tuple[int, tuple[int, ...]], int] = {}
        prompt = len(self.reward_prompt_ids[row])
        candidates = text.texts_with(tokens)
        text.prefetch(candidates, len(text.stable))
        for candidate in candidates:
            depth = text.depth_for(candidate)
            tokens_of = text.tokens_after(candidate, depth)[0]
            shared = _shared_length(tokens_of, target[depth:])
            depth, tail = depth + shared, tokens_of[shared:]
            step.longest = max(step.longest, prompt + depth + len(tail))
            parent = -1
            for index in range(len(tail)):
                key = (depth, tuple(tail[: index + 1]))
                node = trie.get(key)
                if node is None:
                    node = trie[key] = len(step.nodes)
                    step.nodes.append((tail[index], parent, depth, index))
                parent = node
            step.readouts.append(("node", parent) if tail else ("depth", depth))
        return step

    def _keep(self, row: int, count: int) -> None:
        """Keep the first `count` of the row's tokens in the buffer; the columns of the others are masked out for
        good (the text's tokenization changed there: a word went on, or a space joined it)."""
        columns = self.columns[row]
        if count < len(columns):
            self.valid[row, columns[count:]] = False
            del columns[count:], self.cached[row][count:], self.depth_rewards[row][count + 1 :]

    def _inputs(self, steps: list[_Step]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The forward's token ids and positions `(rows, n)` and its boolean mask `(rows, 1, n, length + n)`.

        Each row's slots are its pending tokens, then its trie nodes, then padding (which sees only itself), so
        that `n` is the most slots a row needs; the forward commits the first `max(len(pending))` slots, and
        those past a row's own pending tokens stay masked out of its columns."""
        width = self.buffer.length
        n = max(len(step.pending) + len(step.nodes) for step in steps)
        ids = np.zeros((len(steps), n), dtype=np.int64)
        positions = np.zeros((len(steps), n), dtype=np.int64)
        mask = np.zeros((len(steps), n, width + n), dtype=bool)
        mask[:, np.arange(n), width + np.arange(n)] = True  # every slot sees itself
        valid = self.valid.cpu().numpy()
        for row, step in enumerate(steps):
            pending, count = len(step.pending), len(step.nodes)
            columns, prompt = self.columns[row], len(self.reward_prompt_ids[row])
            cached, used = len(columns), pending + count
            block = mask[row]
            block[:used, :width] = valid[row]
            ids[row, :pending] = step.pending
            positions[row, :pending] = prompt + cached + np.arange(pending)
            block[:pending, width : width + pending] |= np.tri(
                pending, k=-1, dtype=bool
            )  # the earlier pending
            if not count:
                continue
            token, parent, depth, index = np.array(step.nodes, dtype=np.int64).T
            ids[row, pending:used] = token
            positions[row, pending:used] = prompt + depth + index
            if cached:  # a node attached at depth d sees the row's first d cached tokens, not the later ones
                block[np.ix_(np.arange(pending, used), columns)] = np.arange(cached) < depth[:, None]
            # ... and the first d - cached pending tokens, and its ancestors in the trie
            block[pending:used, width : width + pending] = np.arange(pending) < (depth - cached)[:, None]
            ancestors = np.zeros((count, count), dtype=bool)
            for node in np.flatnonzero(parent >= 0):  # a parent comes before its children
                ancestors[node] = ancestors[parent[node]]
                ancestors[node, parent[node]] = True
            block[pending:used, width + pending : width + used] |= ancestors
        pending_slots = max(len(step.pending) for step in steps)
        return (
            torch.from_numpy(ids).to(self.device),
            torch.from_numpy(positions).to(self.device),
            torch.from_numpy(mask).unsqueeze(1).to(self.device),
            pending_slots,
        )

    @torch.no_grad()
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        steps = [self._plan(row, tokens) for row, tokens in enumerate(candidates.tolist())]
        self.longest_reward_input = max(step.longest for step in steps)
        self.reward_model.check_length(self.longest_reward_input)
        ids, positions, mask, pending_slots = self._inputs(steps)
        width = self.buffer.length
        hidden = self.decoder(ids, positions, mask, self.buffer)
        rewards = self.reward_model.score(hidden).squeeze(-1).float()
        self.buffer.commit(pending_slots)
        written = torch.zeros((len(steps), pending_slots), dtype=torch.bool, device=self.device)
        per_slot = rewards.tolist()
        result = []
        for row, step in enumerate(steps):
            cached = len(self.columns[row])
            depth_rewards = self.depth_rewards[row]
            result.append(
                [
                    per_slot[row][len(step.pending) + at]
                    if kind == "node"
                    else (depth_rewards[at] if at <= cached else per_slot[row][at - cached - 1])
                    for kind, at in step.readouts
                ]
            )
            written[row, : len(step.pending)] = True
            self.cached[row] += step.pending
            self.columns[row] += range(width, width + len(step.pending))
            depth_rewards += per_slot[row][: len(step.pending)]
        self.valid = torch.cat([self.valid, written], dim=1)
        self._compact()
        return torch.tensor(result, device=self.device)

    def _compact(self) -> None:
        """Move each row's valid columns to the front of the buffer when even the fullest row has many columns
        masked out ([`COMPACT_AFTER`], [`COMPACT_SHARE`]): attention would otherwise read them at every step."""
        counts = self.valid.sum(dim=1)
        kept = int(counts.max())
        wasted = self.buffer.length - kept
        if wasted < COMPACT_AFTER or wasted < COMPACT_SHARE * kept:
            return
        valid = self.valid.cpu().numpy()
        columns = np.zeros((len(valid), kept), dtype=np.int64)
        for row, flags in enumerate(valid):
            where = np.flatnonzero(flags)
            columns[row, : len(where)] = where
            moved = np.full(len(flags), -1, dtype=np.int64)
            moved[where] = np.arange(len(where))
            self.columns[row] = moved[self.columns[row]].tolist()
        self.buffer.compact(torch.from_numpy(columns).to(self.device))
        self.valid = torch.arange(kept, device=self.device) < counts[:, None]

    def _advance(
        self, tokens: torch.Tensor, parents: torch.Tensor | None, chosen: torch.Tensor | None
    ) -> None:
        if parents is not None:
            order = parents.tolist()
            self.texts = [self.texts[i].copy() for i in order]
            self.columns = [list(self.columns[i]) for i in order]
            self.cached = [list(self.cached[i]) for i in order]
            self.depth_rewards = [list(self.depth_rewards[i]) for i in order]
            self.reward_prompt_ids = [self.reward_prompt_ids[i] for i in order]
            self.valid = self.valid.index_select(0, parents)
            self.buffer.reorder(parents)
        for row, token in enumerate(tokens.tolist()):
            self.texts[row].append(token)


def _shared_length(first: list[int], second: list[int]) -> int:
    """How many tokens two lists share from their start."""
    count = min(len(first), len(second))
    if first[:count] == second[:count]:
        return count
    shared = 0
    while first[shared] == second[shared]:
        shared += 1
    return shared


__all__ = ["BridgedScorer"]
