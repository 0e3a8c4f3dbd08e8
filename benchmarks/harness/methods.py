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
from hf_rgtg import RewardGuidance

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
        return RewardGuidance(setup.rm, scorer=scorer, **settings)

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
    return RewardGuidance([setup.rm, second], scorer="cached", **{**settings, "beta": [beta, beta]})


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

METHODS: tuple[str, ...] = ("plain", *GUIDED, "rm-loop")
"""Every method, in the order of the tables."""


def is_slow(method: str) -> bool:
    """Whether `method` runs only at the lengths `--reference` allows."""
    return method in GUIDED and GUIDED[method].slow


AGREEMENTS: tuple[tuple[str, str], ...] = (("fast", "reference"), ("bridged", "text"))
"""Pairs of paths that must give the same greedy output: a fast path and the reference it is exact against; each
configuration checks the pairs it runs once, before measuring."""
