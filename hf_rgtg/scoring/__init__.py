"""Candidate scorers, and the registry that chooses one for a reward model.

The logits processor chooses candidates; a scorer gets their rewards (the protocol: [`base`]). Each kind lives in
its own module and is registered here under a name, the `scorer=` setting of [`RewardGuidanceConfig`]:

- `"reference"` ([`ReferenceScorer`]): re-encodes every candidate prefix; slow, always exact, the ground truth;
- `"cached"` ([`CachedScorer`]): a key/value cache per row and the k candidates as siblings in one forward;
- `"bridged"` ([`BridgedScorer`]): a decoder reward model with another tokenizer: the text's stable tokens cached,
  the candidates' unstable tails re-tokenised and scored in one forward;
- `"text"` ([`TextScorer`]): a reward model with another tokenizer, every candidate's whole text re-encoded (the
  reference of the bridged scorer, and the path of encoder reward models);
- `"vocab"` ([`VocabScorer`]): an all-token (`head_kind="vocab"`) reward model on its own cache, one 1-token
  forward per step, the candidates read from the hidden state before them;
- `"backbone"` ([`BackboneVocabScorer`]): an all-token head over the language model's own weights, read from the
  language model's hidden state (a forward hook): no reward-model forward; built with the language model;
- `"auto"`: the first kind of the automatic order whose `unsupported_reason` is `None` (cached, else reference;
  for a vocab head, backbone when the language model's weights are the head's base, else vocab, else reference;
  with another tokenizer, bridged, else text), logging at INFO which kind it took and why, and a warning naming
  why a preferred kind was passed over for a slow one.

A new kind is one module with a [`CandidateScorer`] subclass and one [`register_scorer`] call.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel

from ..bridging import TextBridge
from ..modeling import PrefixRewardModel
from .base import CandidateScorer, TopKError
from .bridged import BridgedScorer
from .cached import CACHE_EXACT_MODEL_TYPES, STATIC_ROPE_TYPES, CachedScorer
from .reference import ReferenceScorer
from .text import TextScorer, TextScorerBase, whole_text_rewards
from .vocab import BackboneVocabScorer, VocabScorer

logger = logging.getLogger(__name__)

AUTO = "auto"

#: Every scorer kind by name. Change it through `register_scorer`.
SCORERS: dict[str, type[CandidateScorer]] = {
    "cached": CachedScorer,
    "reference": ReferenceScorer,
    "bridged": BridgedScorer,
    "text": TextScorer,
    "vocab": VocabScorer,
    "backbone": BackboneVocabScorer,
}

#: The kinds `scorer="auto"` tries, in order, for a reward model that shares the language model's tokenizer; the
#: last one takes any reward model.
AUTO_ORDER: list[str] = ["cached", "reference"]

#: The same, for a reward model with another tokenizer (kinds that read text).
AUTO_ORDER_BRIDGED: list[str] = ["bridged", "text"]

#: The same, for an all-token (`head_kind="vocab"`) reward model sharing the language model's tokenizer, after the
#: backbone scorer (taken first when the language model is known and its weights are the head's base).
AUTO_ORDER_VOCAB: list[str] = ["vocab", "reference"]

#: The kind that reads an all-token head from the language model's own hidden states.
BACKBONE = "backbone"

_BUILT_IN = ("cached", "reference", "bridged", "text", "vocab", BACKBONE)


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
    for order in (AUTO_ORDER, AUTO_ORDER_BRIDGED, AUTO_ORDER_VOCAB):
        if name in order:
            order.remove(name)


def scorer_kinds() -> list[str]:
    """Every value `scorer=` accepts."""
    return [AUTO, *SCORERS]


def make_scorer(
    reward_model: PrefixRewardModel,
    kind: str = AUTO,
    bridge: TextBridge | None = None,
    language_model: PreTrainedModel | None = None,
) -> CandidateScorer:
    """The scorer of kind `kind` for `reward_model`.

    Without `bridge` the reward model reads the language model's token ids; with one, it has another tokenizer and
    the scorer reads text (`bridge` holds both tokenizers). `"auto"` takes the first kind of [`AUTO_ORDER`] (or
    [`AUTO_ORDER_BRIDGED`], or for an all-token head [`AUTO_ORDER_VOCAB`]) that can score `reward_model` exactly
    (cached where it is proven exact, see [`CachedScorer.unsupported_reason`], else the reference scorer; bridged,
    else text), logs at INFO which kind it took and why, and warns of a preferred kind passed over for a slower one.
    For an all-token head and a known `language_model` whose weights are the head's base (the same tensors or the
    same content hash, see [`~backbones.weights_mismatch`]), it takes `"backbone"` first, and says at INFO why not
    when they are not. A named kind is built as asked; one that cannot score `reward_model` raises its reason as a
    `ValueError`, and so does a kind that reads text without a bridge, or ids with one.

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model.
        kind (`str`, *optional*, defaults to `"auto"`): one of [`scorer_kinds`].
        bridge ([`~bridging.TextBridge`], *optional*): for a reward model with another tokenizer.
        language_model (`PreTrainedModel`, *optional*): the language model whose `generate()` is guided; needed by
            `"backbone"`.
    """
    if kind == BACKBONE:
        if language_model is None:
            raise ValueError(f"`scorer={BACKBONE!r}`: {BackboneVocabScorer.unsupported_reason(reward_model)}")
        return BackboneVocabScorer(reward_model, language_model)
    if kind != AUTO:
        if kind not in SCORERS:
            raise ValueError(f"`scorer` (={kind!r}) has to be one of {scorer_kinds()}.")
        return _built(SCORERS[kind], kind, reward_model, bridge)
    vocab = reward_model.config.is_vocab_head and bridge is None
    why = ""
    if vocab:
        reason = (
            "the language model is not known here (pass `language_model=` to `RewardGuidance`)"
            if language_model is None
            else BackboneVocabScorer.mismatch(reward_model, language_model)
        )
        if reason is None:
            logger.info(
                f"Scoring candidates with the {BackboneVocabScorer.description}: the head reads layer "
                f"{reward_model.head_depth.layers} of the language model's own weights (the same tensors, or the "
                "same content hash)."
            )
            return BackboneVocabScorer(reward_model, language_model)
        why = f" The backbone vocab scorer is not used: {reason}."
    order = AUTO_ORDER_BRIDGED if bridge is not None else AUTO_ORDER_VOCAB if vocab else AUTO_ORDER
    reasons = []
    for name in order:
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
    else:
        logger.info(f"Scoring candidates with the {scorer_class.description}.{why}")
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
    "AUTO_ORDER_VOCAB",
    "BackboneVocabScorer",
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
    "VocabScorer",
    "make_scorer",
    "register_scorer",
    "scorer_kinds",
    "unregister_scorer",
    "whole_text_rewards",
]
