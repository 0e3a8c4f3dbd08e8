"""`reward_guided_generate` and the opt-in: every guidance option reaches `generate()` by all three ways in."""

import dataclasses
import inspect

import pytest
import torch
from conftest import PAD, left_padded, models

import hf_rgtg.custom_generate
from hf_rgtg import (
    RewardGuidance,
    RewardGuidanceConfig,
    disable_reward_guided_generate,
    enable_reward_guided_generate,
    reward_guided_generate,
)

#: A value other than the default for every setting; a new setting without one here fails the test below.
OPTION_VALUES = {
    "beta": 3.0,
    "top_k": 4,
    "score_with": "logits",
    "reward_transform": "sigmoid",
    "standardize_rewards": True,
    "reward_threshold": 0.0,
    "max_reward_calls": 3,
    "max_time": 1e-9,
    "record_candidates": True,
    "scorer": "reference",
}


def test_every_setting_has_a_test_value_and_a_generate_keyword():
    fields = {field.name: field.default for field in dataclasses.fields(RewardGuidanceConfig)}
    assert set(OPTION_VALUES) == set(fields)
    assert all(OPTION_VALUES[name] != default for name, default in fields.items())
    parameters = inspect.signature(reward_guided_generate).parameters
    for keyword in RewardGuidanceConfig.generate_names().values():
        assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY
    # `max_time` stays transformers' own in `generate()`: the guidance budget has a keyword of its own.
    assert (
        "max_time" not in parameters
        and RewardGuidanceConfig.generate_names()["max_time"] == "reward_max_time"
    )


@pytest.mark.parametrize("name", sorted(OPTION_VALUES))
def test_every_setting_works_through_all_three_ways(name, monkeypatch, restore_generate):
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    value = OPTION_VALUES[name]
    keyword = RewardGuidanceConfig.generate_names()[name]
    common = {"attention_mask": mask, "max_new_tokens": 6, "pad_token_id": PAD, "do_sample": False}
    built = []

    class RecordedGuidance(RewardGuidance):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(hf_rgtg.custom_generate, "RewardGuidance", RecordedGuidance)

    guidance = RewardGuidance(
        rm, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, **{name: value}
    )
    explicit = lm.generate(ids, **common, **guidance.generate_kwargs())
    custom = lm.generate(
        ids, **common, custom_generate=reward_guided_generate, reward_model=rm, **{keyword: value}
    )
    enable_reward_guided_generate()
    patched = lm.generate(ids, **common, reward_model=rm, **{keyword: value})
    disable_reward_guided_generate()

    assert len(built) == 2
    for way in (guidance, *built):
        assert getattr(way.config, name) == value
        assert type(way.scorer) is type(guidance.scorer)
    assert torch.equal(explicit, custom) and torch.equal(explicit, patched)
    assert built[0].trace.rewards_of(custom, ids.shape[1]) == guidance.trace.rewards_of(
        explicit, ids.shape[1]
    )


def test_budgets_end_the_call_through_the_keywords(restore_generate):
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    common = {"attention_mask": mask, "max_new_tokens": 6, "pad_token_id": PAD}
    calls = lm.generate(
        ids, **common, custom_generate=reward_guided_generate, reward_model=rm, max_reward_calls=2
    )
    assert calls.shape[1] == ids.shape[1] + 2
    timed = lm.generate(
        ids, **common, custom_generate=reward_guided_generate, reward_model=rm, reward_max_time=1e-9
    )
    assert timed.shape[1] == ids.shape[1] + 1


def test_a_ready_guidance_and_settings_together_are_refused_by_their_keywords():
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, pad_token_id=PAD)
    with pytest.raises(ValueError, match=r"already holds.*\['beta', 'reward_scorer'\]"):
        lm.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=2,
            custom_generate=reward_guided_generate,
            reward_guidance=guidance,
            beta=2.0,
            reward_scorer="reference",
        )
