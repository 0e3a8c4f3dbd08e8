"""The scorer registry: a new kind of scorer is one class and one `register_scorer` call."""

import logging

import pytest
import torch
from conftest import PAD, VOCAB_SIZE, left_padded, models

from hf_rgtg import CandidateScorer, RewardGuidance, reward_guided_generate
from hf_rgtg.scoring import (
    AUTO_ORDER,
    SCORERS,
    CachedScorer,
    ReferenceScorer,
    make_scorer,
    register_scorer,
    scorer_kinds,
    unregister_scorer,
)

FAVOURITE = 7


class FavouriteTokenScorer(CandidateScorer):
    """Rewards one token and nothing else: no reward-model forward at all."""

    description = "favourite-token scorer"

    def _reset(self) -> torch.Tensor:
        return torch.zeros(len(self.input_ids))

    def score(self, candidates: torch.Tensor) -> torch.Tensor:
        return (candidates == FAVOURITE).float() * 100.0


@pytest.fixture
def favourite_kind():
    register_scorer("favourite", FavouriteTokenScorer)
    yield "favourite"
    unregister_scorer("favourite")


def test_a_registered_scorer_drives_generate(favourite_kind):
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    assert favourite_kind in scorer_kinds()
    common = {"attention_mask": mask, "max_new_tokens": 5, "min_new_tokens": 5, "pad_token_id": PAD}
    guidance = RewardGuidance(rm, top_k=VOCAB_SIZE, pad_token_id=PAD, scorer=favourite_kind)
    assert isinstance(guidance.scorer, FavouriteTokenScorer)
    out = lm.generate(ids, **common, **guidance.generate_kwargs())
    # With every token a candidate, a reward of 100 wins each step.
    assert (out[:, ids.shape[1] :] == FAVOURITE).all()
    assert guidance.trace.rewards_of(out, ids.shape[1]) == [[100.0] * 5] * 3
    custom = lm.generate(
        ids,
        **common,
        custom_generate=reward_guided_generate,
        reward_model=rm,
        top_k=VOCAB_SIZE,
        reward_scorer=favourite_kind,
    )
    assert torch.equal(out, custom)


def test_an_auto_scorer_is_tried_before_the_reference_and_its_refusal_is_logged(caplog):
    class Refusing(FavouriteTokenScorer):
        description = "refusing scorer"

        @classmethod
        def unsupported_reason(cls, reward_model):
            return "It refuses every reward model."

    _, rm = models("gpt2")
    register_scorer("refusing", Refusing, auto=True)
    try:
        assert AUTO_ORDER == ["cached", "refusing", "reference"]
        assert isinstance(make_scorer(rm), CachedScorer)  # the cached scorer comes first
        encoder_rm = models("gpt2")[1]
        encoder_rm.config.text_config.model_type = "bert"  # no longer proven exact for the cached scorer
        with caplog.at_level(logging.WARNING, logger="hf_rgtg.scoring"):
            scorer = make_scorer(encoder_rm)
        assert isinstance(scorer, ReferenceScorer)
        assert "It refuses every reward model." in caplog.text and 'scorer="reference"' in caplog.text
    finally:
        unregister_scorer("refusing")
    assert AUTO_ORDER == ["cached", "reference"] and "refusing" not in SCORERS


@pytest.mark.parametrize("name", ["auto", "cached", "reference", "", 3])
def test_registering_a_taken_or_empty_name_is_refused(name):
    with pytest.raises(ValueError, match="Cannot register a scorer"):
        register_scorer(name, FavouriteTokenScorer)


def test_registering_something_that_is_not_a_scorer_is_refused():
    with pytest.raises(TypeError, match="CandidateScorer subclass"):
        register_scorer("not-a-scorer", object)
    with pytest.raises(ValueError, match="not a registered scorer kind that can be removed"):
        unregister_scorer("cached")


def test_an_unknown_kind_names_the_kinds():
    _, rm = models("gpt2")
    with pytest.raises(
        ValueError, match=r"`scorer` \(='fast'\) has to be one of \['auto', 'cached', 'reference'\]"
    ):
        RewardGuidance(rm, scorer="fast")
