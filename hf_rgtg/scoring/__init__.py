"""Candidate scorers, and the registry that chooses one for a reward model.

The logits processor chooses candidates; a scorer gets their rewards (the protocol: [`base`]). Each kind lives in
its own module and is registered here under a name, the `scorer=` setting of [`RewardGuidanceConfig`]:

- `"reference"` ([`ReferenceScorer`]): re-encodes every candidate prefix; slow, always exact, the ground truth;
- `"cached"` ([`CachedScorer`]): a key/value cache per row and the k candidates as siblings in one forward;
- `"bridged"` ([`BridgedScorer`]): a decoder reward model with another tokenizer: the text's stable tokens cached,
  the candidates' unstable tails re-tokenised and scored in one forward;
- `"text"` ([`TextScorer`]): a reward model with another tokenizer, every candidate's whole text re-encoded (the
  reference of the bridged scorer, and the path of encoder reward models);
- `"auto"`: the first kind of the automatic order whose `unsupported_reason` is `None` (cached, else reference;
  with another tokenizer, bridged, else text), with one log line naming why a preferred kind was passed over.

A new kind is one module with a [`CandidateScorer`] subclass and one [`register_scorer`] call.
"""

from __future__ import annotations

import logging

from ..bridging import TextBridge
from ..modeling import PrefixRewardModel
from .base import CandidateScorer, TopKError
from .bridged import BridgedScorer
from .cached import CACHE_EXACT_MODEL_TYPES, STATIC_ROPE_TYPES, CachedScorer
from .reference import ReferenceScorer
from .text import TextScorer, TextScorerBase, whole_text_rewards

logger = logging.getLogger(__name__)

AUTO = "auto"

#: Every scorer kind by name. Change it through `register_scorer`.
SCORERS: dict[str, type[CandidateScorer]] = {
    "cached": CachedScorer,
    "reference": ReferenceScorer,
    "bridged": BridgedScorer,
    "text": TextScorer,
}

#: The kinds `scorer="auto"` tries, in order, for a reward model that shares the language model's tokenizer; the
#: last one takes any reward model.
AUTO_ORDER: list[str] = ["cached", "reference"]

#: The same, for a reward model with another tokenizer (kinds that read text).
AUTO_ORDER_BRIDGED: list[str] = ["bridged", "text"]

_BUILT_IN = ("cached", "reference", "bridged", "text")


def register_scorer(name: str, scorer_class: type[CandidateScorer], *, auto: bool = False) -> None:
    """Make `scorer_class` available as `scorer=name`.

    Args:
        name (`str`): the kind's name; it cannot be `"auto"` or an existing kind's.
        scorer_class (`type[CandidateScorer]`): the scorer, built as `scorer_class(reward_model)`.
        auto (`bool`, *optional*, defaults to `False`): also let `scorer="auto"` choose it, before the last kind of
            its order (the reference scorer, or the text scorer for a kind that reads text), for reward models its
            `unsupported_reason` accepts.

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
        order = AUTO_ORDER_BRIDGED if scorer_class.reads_text else AUTO_ORDER
        order.insert(len(order) - 1, name)


def unregister_scorer(name: str) -> None:
    """Undo [`register_scorer`]. The built-in kinds stay."""
    if name in _BUILT_IN or name not in SCORERS:
        raise ValueError(f"{name!r} is not a registered scorer kind that can be removed.")
    del SCORERS[name]
    for order in (AUTO_ORDER, AUTO_ORDER_BRIDGED):
        if name in order:
            order.remove(name)


def scorer_kinds() -> list[str]:
    """Every value `scorer=` accepts."""
    return [AUTO, *SCORERS]


def make_scorer(
    reward_model: PrefixRewardModel, kind: str = AUTO, bridge: TextBridge | None = None
) -> CandidateScorer:
    """The scorer of kind `kind` for `reward_model`.

    Without `bridge` the reward model reads the language model's token ids; with one, it has another tokenizer and
    the scorer reads text (`bridge` holds both tokenizers). `"auto"` takes the first kind of [`AUTO_ORDER`] (or
    [`AUTO_ORDER_BRIDGED`]) that can score `reward_model` exactly (cached where it is proven exact, see
    [`CachedScorer.unsupported_reason`], else the reference scorer; bridged, else text), and logs one line saying
    why it passed over the others. A named kind is built as asked; one that cannot score `reward_model` raises its
    reason as a `ValueError`, and so does a kind that reads text without a bridge, or ids with one.
    """
    if kind != AUTO:
        if kind not in SCORERS:
            raise ValueError(f"`scorer` (={kind!r}) has to be one of {scorer_kinds()}.")
        return _built(SCORERS[kind], kind, reward_model, bridge)
    reasons = []
    for name in AUTO_ORDER_BRIDGED if bridge is not None else AUTO_ORDER:
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
    return _built(scorer_class, name, reward_model, bridge)


def _built(
    scorer_class: type[CandidateScorer], name: str, reward_model: PrefixRewardModel, bridge: TextBridge | None
) -> CandidateScorer:
    if scorer_class.reads_text and bridge is None:
        raise ValueError(
            f'`scorer="{name}"` reads text, for a reward model with another tokenizer than the language model: pass '
            "both tokenizers (`tokenizer=` the language model's, `reward_tokenizer=` the reward model's)."
        )
    if bridge is not None and not scorer_class.reads_text:
        raise ValueError(
            f'The reward model has another tokenizer than the language model, and `scorer="{name}"` reads the '
            'language model\'s token ids. Use `scorer="bridged"` or `scorer="text"` (or `"auto"`).'
        )
    return scorer_class(reward_model, bridge) if bridge is not None else scorer_class(reward_model)


__all__ = [
    "AUTO_ORDER",
    "AUTO_ORDER_BRIDGED",
    "BridgedScorer",
    "CACHE_EXACT_MODEL_TYPES",
    "SCORERS",
    "STATIC_ROPE_TYPES",
    "CachedScorer",
    "CandidateScorer",
    "ReferenceScorer",
    "TextScorer",
    "TextScorerBase",
    "TopKError",
    "make_scorer",
    "register_scorer",
    "scorer_kinds",
    "unregister_scorer",
    "whole_text_rewards",
]
