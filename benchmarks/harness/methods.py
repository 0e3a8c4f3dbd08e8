"""The methods of the benchmark, by the name the tables use: plain decoding, the RM loop, and the guided paths.

A guided path is a `Guided`: how to build its `RewardGuidance` from a `Setup` (or `None` when the configuration
lacks what the path needs, which then does not run it), whether it is slow (re-encodes whole texts at every step,
so that it runs only at the lengths `--reference` allows), and the line the results file describes it with. A new
guided path is one entry of `GUIDED`; `AGREEMENTS` pairs a path with the slow one it has to agree with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.configuration import Setup
from hf_rgtg import PrefixRewardModel, RewardGuidance

Build = Callable[[Setup, dict[str, Any]], RewardGuidance | None]


@dataclass(frozen=True)
class Guided:
    """A guided path: `build(setup, settings)` makes its guidance, `settings` being what every path shares (`beta`,
    `top_k`, `eos_token_id`, `pad_token_id`); `slow` paths run only where `--reference` allows."""

    build: Build
    description: str
    slow: bool = False


def same_vocabulary(scorer: str) -> Build:
    """A path over `setup.rm`, which reads the language model's ids."""

    def build(setup: Setup, settings: dict[str, Any]) -> RewardGuidance | None:
        return RewardGuidance(setup.rm, setup.lm_tokenizer, scorer=scorer, **settings)

    return build


def other_tokenizer(scorer: str, role: str) -> Build:
    """A path over the reward model of `role`, which reads `setup.reward_tokenizer`'s tokens, not the language
    model's; `None` where the setup has no such reward model."""

    def build(setup: Setup, settings: dict[str, Any]) -> RewardGuidance | None:
        rm = setup.reward_models.get(role)
        if rm is None or setup.lm_tokenizer is None or setup.reward_tokenizer is None:
            return None
        return RewardGuidance(
            rm, setup.lm_tokenizer, reward_tokenizer=setup.reward_tokenizer, scorer=scorer, **settings
        )

    return build


def two_reward_models(setup: Setup, settings: dict[str, Any]) -> RewardGuidance | None:
    """Guidance by `setup.rm` and the reward model of role `"second"` (the same shape and vocabulary), beta each."""
    second = setup.reward_models.get("second")
    if second is None:
        return None
    beta = settings["beta"]
    return RewardGuidance(
        [setup.rm, second], setup.lm_tokenizer, scorer="cached", **{**settings, "beta": [beta, beta]}
    )


def vocab_backbone(setup: Setup, settings: dict[str, Any]) -> RewardGuidance:
    """A factorised all-token head over the language model's own final hidden state: the backbone path, which
    reads the LM's hidden state through a hook and runs no reward-model forward."""
    rm = PrefixRewardModel.from_language_model(setup.lm, head_kind="vocab", vocab_head="factorised").eval()
    return RewardGuidance(rm, setup.lm_tokenizer, language_model=setup.lm, scorer="backbone", **settings)


def separate_vocab(setup: Setup, settings: dict[str, Any]) -> RewardGuidance | None:
    """The separate all-token reward model of role `"vocab"`: one 1-token step per token on its own cache."""
    rm = setup.reward_models.get("vocab")
    if rm is None:
        return None
    return RewardGuidance(rm, setup.lm_tokenizer, scorer="vocab", **settings)


GUIDED: dict[str, Guided] = {
    "fast": Guided(
        same_vocabulary("cached"),
        'the same with `**RewardGuidance(rm, top_k=k, scorer="cached").generate_kwargs()`.',
    ),
    "two-rms": Guided(
        two_reward_models,
        "two reward models of the RM's shape and vocabulary (different seeds), `RewardGuidance([rm, rm2], "
        'beta=[beta, beta], scorer="cached")`: each scored on its own cache, rewards summed. Its floor, `floor-2`, '
        "is plain + 2 × RM loop (one LM step and each RM's forward of k tokens).",
    ),
    "vocab-backbone": Guided(
        vocab_backbone,
        "an all-token (vocab) head over the LM's own final hidden state, `PrefixRewardModel.from_language_model(lm, "
        'head_kind="vocab", vocab_head="factorised")` with `RewardGuidance(rm, language_model=lm, '
        'scorer="backbone")`: a forward hook keeps the LM\'s hidden state, the k candidates are k dot products, '
        "no reward-model forward runs.",
    ),
    "vocab": Guided(
        separate_vocab,
        "a separate all-token reward model of the LM's size (`from_language_model(lm, share_backbone=False, "
        'head_kind="vocab")`, a copy of the backbone with a full V × d head), `scorer="vocab"`: one 1-token '
        "forward per step on its own cache, the k candidates read with k dot products. Its floor, `floor-vocab`, "
        "is plain + vocab loop.",
    ),
    "reference": Guided(
        same_vocabulary("reference"),
        'the same with `scorer="reference"` (re-encodes rows × k prefixes every step).',
        slow=True,
    ),
    "bridged": Guided(
        other_tokenizer("bridged", "bridged"),
        "a decoder RM of the same shape with another tokenizer: `RewardGuidance(rm_other, lm_tokenizer, "
        'reward_tokenizer=rm_tokenizer, scorer="bridged")`, the prompts given as text '
        "(`generate_kwargs(attention_mask=mask, prompts=texts)`); it caches the RM's keys and values of the text's "
        "stable tokens and scores the k candidates' re-tokenised tails in one forward.",
    ),
    "text": Guided(
        other_tokenizer("text", "bridged"),
        'the same RM and tokenizers with `scorer="text"`: every candidate\'s whole text decoded and re-encoded '
        "with the RM's tokenizer (the bridged path's reference).",
        slow=True,
    ),
    "encoder": Guided(
        other_tokenizer("auto", "encoder"),
        'an encoder RM (BERT-shaped) with the other tokenizer, `scorer="auto"`, which takes the text scorer for an '
        "encoder: every candidate's whole text re-encoded, as the reference path re-encodes every prefix's ids.",
        slow=True,
    ),
}
"""The guided paths, in the order of the tables."""

METHODS: tuple[str, ...] = ("plain", *GUIDED, "rm-loop", "vocab-loop")
"""Every method, in the order of the tables."""


LOOPS: dict[str, str] = {"rm-loop": "", "vocab-loop": "vocab"}
"""The scorer loops driven by hand, by the role of the reward model they drive (`""`: `setup.rm`); a setup without
that reward model does not run the loop."""


def is_slow(method: str) -> bool:
    """Whether `method` runs only at the lengths `--reference` allows."""
    return method in GUIDED and GUIDED[method].slow


AGREEMENTS: tuple[tuple[str, str], ...] = (("fast", "reference"), ("bridged", "text"))
"""Pairs of paths that must give the same greedy output: a fast path and the reference it is exact against; each
configuration checks the pairs it runs once, before measuring."""
