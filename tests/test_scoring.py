"""The scorer registry: a new kind of scorer is one class and one `register_scorer` call."""

import logging

import pytest
import torch
from conftest import (
    PAD,
    VOCAB_SIZE,
    left_padded,
    models,
    tiny_config,
)

from hf_rgtg import (
    CachedScorer,
    CandidateScorer,
    PrefixRewardConfig,
    PrefixRewardModel,
    ReferenceScorer,
    RewardGuidance,
    reward_guided_generate,
)
from hf_rgtg.scoring import (
    AUTO_ORDER,
    SCORERS,
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
        ValueError,
        match=r"`scorer` \(='fast'\) has to be one of \['auto', 'cached', 'reference', 'bridged', 'text', 'vocab', 'backbone'\]",
    ):
        RewardGuidance(rm, scorer="fast")


def test_encoder_reward_model_falls_back_to_the_reference_scorer():
    lm, _ = models("gpt2")
    rm = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("bert"))).eval()
    guidance = RewardGuidance(rm, top_k=3, pad_token_id=PAD)
    assert isinstance(guidance.scorer, ReferenceScorer)
    ids, mask = left_padded()
    out = lm.generate(
        ids, attention_mask=mask, max_new_tokens=3, pad_token_id=PAD, **guidance.generate_kwargs()
    )
    assert out.shape == (3, ids.shape[1] + 3)


@pytest.mark.parametrize(
    "text_config",
    [
        lambda: tiny_config("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0),
        lambda: tiny_config("mistral", sliding_window=4),
    ],
    ids=["qwen2-sliding", "mistral-sliding"],
)
def test_sliding_window_reward_model_falls_back_to_the_reference_scorer(text_config):
    torch.manual_seed(2)
    rm = PrefixRewardModel(PrefixRewardConfig(text_config=text_config())).eval()
    guidance = RewardGuidance(rm, top_k=3, pad_token_id=PAD)
    assert isinstance(guidance.scorer, ReferenceScorer)
    lm, _ = models("llama")
    ids, mask = left_padded()
    out = lm.generate(
        ids, attention_mask=mask, max_new_tokens=6, pad_token_id=PAD, **guidance.generate_kwargs()
    )
    # The window (4) is shorter than the sequences, so the rewards really depend on sliding attention.
    direct = guidance.sequence_rewards(out, ids.shape[1], prompt_attention_mask=mask)
    traced = torch.tensor([steps[-1] for steps in guidance.trace.rewards_of(out, ids.shape[1])])
    torch.testing.assert_close(traced, direct, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sliding-window"):
        RewardGuidance(rm, top_k=3, pad_token_id=PAD, scorer="cached")
