"""The methods of the benchmark, by the name the tables use: plain decoding, the RM loop, and the guided paths.

A guided path is a `Guided`: how to build its `RewardGuidance` from a `Setup` (or `None` when the configuration
lacks what the path needs, which then does not run it), whether it is slow (re-encodes whole texts at every step,
so that it runs only at the lengths `--reference` allows), and the line the results file describes it with. A new
guided path is one entry of `GUIDED`.
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


GUIDED: dict[str, Guided] = {
    "fast": Guided(
        same_vocabulary("cached"),
        'the same with `**RewardGuidance(rm, top_k=k, scorer="cached").generate_kwargs()`.',
    ),
    "reference": Guided(
        same_vocabulary("reference"),
        'the same with `scorer="reference"` (re-encodes rows × k prefixes every step).',
        slow=True,
    ),
}
"""The guided paths, in the order of the tables."""

METHODS: tuple[str, ...] = ("plain", *GUIDED, "rm-loop")
"""Every method, in the order of the tables."""


def is_slow(method: str) -> bool:
    """Whether `method` runs only at the lengths `--reference` allows."""
    return method in GUIDED and GUIDED[method].slow
