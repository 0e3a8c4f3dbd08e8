"""Candidate scorers, and the registry that chooses one for a reward model.

The logits processor chooses candidates; a scorer gets their rewards (the protocol: [`base`]). Each kind lives in
its own module and is registered here under a name, the `scorer=` setting of [`RewardGuidanceConfig`]:

- `"reference"` ([`ReferenceScorer`]): re-encodes every candidate prefix; slow, always exact, the ground truth;
- `"cached"` ([`CachedScorer`]): a key/value cache per row and the k candidates as siblings in one forward;
- `"auto"`: the first kind of the automatic order whose `unsupported_reason` is `None` (cached, else reference),
  with one log line naming why a preferred kind was passed over.

A new kind is one module with a [`CandidateScorer`] subclass and one [`register_scorer`] call.
"""

from __future__ import annotations

import logging

from ..modeling import PrefixRewardModel
from .base import CandidateScorer, TopKError
from .cached import CACHE_EXACT_MODEL_TYPES, STATIC_ROPE_TYPES, CachedScorer
from .reference import ReferenceScorer

logger = logging.getLogger(__name__)

AUTO = "auto"

#: Every scorer kind by name. Change it through `register_scorer`.
SCORERS: dict[str, type[CandidateScorer]] = {"cached": CachedScorer, "reference": ReferenceScorer}

#: The kinds `scorer="auto"` tries, in order; the last one takes any reward model.
AUTO_ORDER: list[str] = ["cached", "reference"]


def register_scorer(name: str, scorer_class: type[CandidateScorer], *, auto: bool = False) -> None:
    """Make `scorer_class` available as `scorer=name`.

    Args:
        name (`str`): the kind's name; it cannot be `"auto"` or an existing kind's.
        scorer_class (`type[CandidateScorer]`): the scorer, built as `scorer_class(reward_model)`.
        auto (`bool`, *optional*, defaults to `False`): also let `scorer="auto"` choose it, before the reference
            scorer, for reward models its `unsupported_reason` accepts.

    Examples:

    ```python
    >>> from hf_rgtg.scoring import ReferenceScorer, register_scorer, scorer_kinds, unregister_scorer

    >>> class SmallBatchScorer(ReferenceScorer):
    ...     def __init__(self, reward_model):
    ...         super().__init__(reward_model, max_batch_size=4)

    >>> register_scorer("small-batch", SmallBatchScorer)
    >>> "small-batch" in scorer_kinds()
    True
    >>> unregister_scorer("small-batch")
    ```
    """
    if not isinstance(name, str) or not name or name == AUTO or name in SCORERS:
        raise ValueError(
            f"Cannot register a scorer as {name!r}: the name has to be a new non-empty string, not {AUTO!r} or one "
            f"of {sorted(SCORERS)}."
        )
    if not (isinstance(scorer_class, type) and issubclass(scorer_class, CandidateScorer)):
        raise TypeError(f"`scorer_class` has to be a CandidateScorer subclass, got {scorer_class!r}.")
    SCORERS[name] = scorer_class
    if auto:
        AUTO_ORDER.insert(len(AUTO_ORDER) - 1, name)


def unregister_scorer(name: str) -> None:
    """Undo [`register_scorer`]. The built-in kinds stay."""
    if name in ("cached", "reference") or name not in SCORERS:
        raise ValueError(f"{name!r} is not a registered scorer kind that can be removed.")
    del SCORERS[name]
    if name in AUTO_ORDER:
        AUTO_ORDER.remove(name)


def scorer_kinds() -> list[str]:
    """Every value `scorer=` accepts."""
    return [AUTO, *SCORERS]


def make_scorer(reward_model: PrefixRewardModel, kind: str = AUTO) -> CandidateScorer:
    """The scorer of kind `kind` for `reward_model`.

    `"auto"` takes the first kind of [`AUTO_ORDER`] that can score `reward_model` exactly (cached where it is proven
    exact, see [`CachedScorer.unsupported_reason`], else the reference scorer), and logs one line saying why it
    passed over the others. A named kind is built as asked; one that cannot score `reward_model` raises its reason
    as a `ValueError`.
    """
    if kind != AUTO:
        if kind not in SCORERS:
            raise ValueError(f"`scorer` (={kind!r}) has to be one of {scorer_kinds()}.")
        return SCORERS[kind](reward_model)
    reasons = []
    for name in AUTO_ORDER:
        scorer_class = SCORERS[name]
        reason = scorer_class.unsupported_reason(reward_model)
        if reason is None:
            break
        reasons.append(reason)
    if reasons:
        logger.warning(
            f"Scoring candidates with the {scorer_class.description}: {' '.join(reasons)} Pass "
            f'`scorer="{name}"` to choose it explicitly, which also silences this line.'
        )
    return scorer_class(reward_model)


__all__ = [
    "AUTO_ORDER",
    "CACHE_EXACT_MODEL_TYPES",
    "SCORERS",
    "STATIC_ROPE_TYPES",
    "CachedScorer",
    "CandidateScorer",
    "ReferenceScorer",
    "TopKError",
    "make_scorer",
    "register_scorer",
    "scorer_kinds",
    "unregister_scorer",
]
