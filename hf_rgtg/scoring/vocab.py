"""Scorers of all-token ("vocab") heads, which read every candidate's reward from the hidden state *before* the
candidates: `r(prefix + v)` is row `v` of the head applied to the prefix's last hidden state.

- [`VocabScorer`] (`scorer="vocab"`): a separate reward model on its own key/value cache. Each step costs one
  1-token reward-model forward (the token `generate()` appended), and scoring the k candidates is k dot products.
- [`BackboneVocabScorer`] (`scorer="backbone"`): a head that reads a layer of the language model's own weights.
  A forward hook keeps the language model's hidden state at that layer during its own forward; scoring is k dot
  products and no reward-model forward runs at all. Taken only when the weights the head depends on are the
  language model's, checked by tensor identity or content hash ([`~backbones.weights_mismatch`]), never by name.
"""

from __future__ import annotations

import weakref

import torch
from transformers import PreTrainedModel

from ..backbones import capture_hidden, hidden_state_module, weights_mismatch
from ..incremental import IncrementalDecoder
from ..modeling import PrefixRewardModel, last_token_index
from .base import CandidateScorer
from .cached import CachedScorer, cache_problem, prefill_hidden


def _not_vocab(kind: str, reward_model: PrefixRewardModel) -> str | None:
    if reward_model.config.is_vocab_head:
        return None
    return (
        f"{kind} reads an all-token head; this reward model's head is `head_kind="
        f"{reward_model.config.head_kind!r}`."
    )


def _last_real(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's entry of `values` `(rows, width, ...)` at its last real column."""
    rows, width = attention_mask.shape
    index = last_token_index(attention_mask, rows, width).to(values.device)
    return values[torch.arange(rows, device=values.device), index]


class VocabScorer(CachedScorer):
    """Scores the k candidates of each row from the reward model's hidden state at the row's last token, kept from
    one 1-token forward per step on the reward model's own key/value cache.

    The reward model is a separate all-token reward model (`head_kind="vocab"`). Each appended token costs one
    1-token forward through the incremental decoder (against k tokens for a scalar head's [`CachedScorer`]); the
    candidates themselves cost k dot products ([`PrefixRewardModel.candidate_values`]). Beam-search reorders move
    the cache as the cached scorer does.

    Args:
        reward_model ([`PrefixRewardModel`]): a decoder reward model with a vocab head, of a family the
            incremental decoder runs (GPT-2, the Llama family).

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel
    >>> from hf_rgtg.scoring import ReferenceScorer, VocabScorer

    >>> config = PrefixRewardConfig(text_config=GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64),
    ...                             head_kind="vocab")
    >>> rm = PrefixRewardModel(config).eval()
    >>> prompt, mask = torch.tensor([[0, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1]])
    >>> fast, slow = VocabScorer(rm), ReferenceScorer(rm)
    >>> torch.allclose(fast.reset(prompt, mask), slow.reset(prompt, mask), atol=1e-5)
    True
    >>> candidates = torch.tensor([[8, 9, 10]])
    >>> torch.allclose(fast.score(candidates), slow.score(candidates), atol=1e-5)
    True
    >>> fast.advance(torch.tensor([9]), chosen=torch.tensor([1])); slow.advance(torch.tensor([9]))
    >>> torch.allclose(fast.score(candidates), slow.score(candidates), atol=1e-5)
    True
    ```
    """

    description = (
        "vocab scorer, which runs one 1-token reward-model step per token on its cache and reads the candidates' "
        "values from the hidden state before them"
    )

    @classmethod
    def unsupported_reason(cls, reward_model: PrefixRewardModel) -> str | None:
        """Why `reward_model` cannot be scored this way (`None` when it can): a scalar head, a backbone the cached
        scorer's checks refuse ([`~cached.cache_problem`]), or one the incremental decoder does not run."""
        problem = _not_vocab("VocabScorer", reward_model) or cache_problem(reward_model)
        if problem is not None:
            return problem
        if IncrementalDecoder.for_backbone(reward_model.backbone, reward_model.head_depth) is None:
            return (
                f"VocabScorer runs on the incremental decoder, which does not cover this reward model "
                f"({reward_model.config.text_config.model_type!r}, head on layer {reward_model.config.head_layer})."
            )
        return None

    def __init__(self, reward_model: PrefixRewardModel):
        super().__init__(reward_model, incremental=True)
        self.hidden: torch.Tensor | None = None  # (rows, hidden) at each row's last token

    def _prefill(self) -> torch.Tensor:
        self.reward_model.check_length(self.longest_prompt)
        self.buffer, hidden = prefill_hidden(
            self.decoder, self.input_ids, self.attention_mask, self.reward_model.dtype, self._most_positions()
        )
        self.hidden = _last_real(hidden, self.attention_mask)
        rewards = self.reward_model.vocab_rewards(hidden, self.input_ids, self.attention_mask)
        return _last_real(rewards, self.attention_mask)

    @torch.no_grad()
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        self.check_candidate_positions()
        return self.reward_model.candidate_values(self.hidden, candidates.to(self.device))

    def _advance(
        self, tokens: torch.Tensor, parents: torch.Tensor | None, chosen: torch.Tensor | None
    ) -> None:
        # No candidate was fed, so the cached scorer encodes the appended token: the one 1-token step.
        super()._advance(tokens, parents, None)
        self.hidden = self.appended_hidden


class BackboneVocabScorer(CandidateScorer):
    """Scores the k candidates of each row from the language model's own hidden state at the head's layer,
    captured by a forward hook during the language model's forward in `generate()`: no reward-model forward.

    Exact when the reward model's backbone, up to its head's layer, is the language model's (checked at
    construction by [`~backbones.weights_mismatch`]: the same tensors, else the same content hash and settings).
    The hook keeps only the last two positions of each forward (the prompt's reward reads the one before last) and
    is removed by [`close`] or when the scorer is garbage-collected. Beam search, `num_return_sequences` and
    finished rows need nothing more: each step reads the rows the language model has just run.

    Args:
        reward_model ([`PrefixRewardModel`]): a reward model with a vocab head.
        language_model (`PreTrainedModel`): the causal language model whose `generate()` is guided.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, GPT2Config
    >>> from hf_rgtg import PrefixRewardModel
    >>> from hf_rgtg.scoring import BackboneVocabScorer, VocabScorer

    >>> lm = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).eval()
    >>> rm = PrefixRewardModel.from_language_model(lm, head_kind="vocab", head_layer=1)
    >>> scorer = BackboneVocabScorer(rm, lm)
    >>> prompt = torch.tensor([[5, 6, 7]])
    >>> with torch.no_grad():
    ...     _ = lm(prompt)  # generate() runs this forward; the hook keeps the hidden state at layer 1
    >>> rewards = scorer.reset(prompt, torch.ones_like(prompt))
    >>> candidates = torch.tensor([[8, 9]])
    >>> separate = VocabScorer(rm)
    >>> torch.allclose(rewards, separate.reset(prompt, torch.ones_like(prompt)), atol=1e-5)
    True
    >>> torch.allclose(scorer.score(candidates), separate.score(candidates), atol=1e-5)
    True
    >>> scorer.close()
    ```
    """

    description = (
        "backbone vocab scorer, which reads the candidates' values from the language model's own hidden state (no "
        "reward-model forward)"
    )
    keeps_inputs = False

    @classmethod
    def unsupported_reason(cls, reward_model: PrefixRewardModel) -> str | None:
        return _not_vocab("BackboneVocabScorer", reward_model) or (
            "BackboneVocabScorer reads the language model's own hidden states, so it is built with the language "
            "model (`RewardGuidance(..., language_model=lm)`; ways 2 and 3 pass it themselves)."
        )

    @classmethod
    def mismatch(cls, reward_model: PrefixRewardModel, language_model: PreTrainedModel) -> str | None:
        """Why the reward model's head cannot read `language_model`'s hidden states exactly (`None` when it can)."""
        problem = _not_vocab("BackboneVocabScorer", reward_model)
        if problem is not None:
            return problem
        backbone, depth = language_model.base_model, reward_model.head_depth
        try:
            hidden_state_module(backbone, depth)
        except ValueError as error:
            return str(error)
        reason = weights_mismatch(reward_model.backbone, backbone, depth)
        return None if reason is None else f"the language model is not the head's base: {reason}"

    def __init__(self, reward_model: PrefixRewardModel, language_model: PreTrainedModel):
        super().__init__(reward_model)
        reason = self.mismatch(reward_model, language_model)
        if reason is not None:
            raise ValueError(
                f'{reason}. Use `scorer="vocab"` (a separate 1-token reward-model step per token), or guide the '
                "language model the head was trained on."
            )
        self.language_model = language_model
        self.captured: torch.Tensor | None = None  # (rows, <= 2, hidden): the last forward's last positions
        self._fresh = False
        owner = weakref.ref(self)

        def receive(hidden: torch.Tensor) -> None:
            scorer = owner()
            if scorer is not None:
                scorer.captured, scorer._fresh = hidden[:, -2:], True

        handle = capture_hidden(language_model.base_model, reward_model.head_depth, receive)
        self._close = weakref.finalize(self, handle.remove)

    def close(self) -> None:
        """Remove the forward hook from the language model."""
        self._close()

    def _captured_for(self, rows: int) -> torch.Tensor:
        captured = self.captured
        if captured is None or not self._fresh or captured.shape[0] != rows:
            raise RuntimeError(
                "BackboneVocabScorer found no hidden state of this step's rows: the language model it was built "
                "with did not run the forward of this step. Guide that language model's `generate()` (or build the "
                "guidance with the language model that generates)."
            )
        return captured.to(self.device)

    @torch.no_grad()
    def _reset(self) -> torch.Tensor:
        rows, width = self.input_ids.shape
        captured = self._captured_for(rows)
        if captured.shape[1] == 2 or width == 1:
            columns = min(width, 2)
            rewards = self.reward_model.vocab_rewards(
                captured[:, -columns:], self.input_ids[:, -columns:], self.attention_mask[:, -columns:]
            )
            return rewards[:, -1]
        # The forward covered one new token only (a prompt continued on a cache): the prompt's reward the long way.
        return self.reward_model(self.input_ids, attention_mask=self.attention_mask).reward.float()

    @torch.no_grad()
    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        hidden = self._captured_for(candidates.shape[0])[:, -1]
        self._fresh = False
        return self.reward_model.candidate_values(hidden, candidates.to(self.device))


__all__ = ["BackboneVocabScorer", "VocabScorer"]
