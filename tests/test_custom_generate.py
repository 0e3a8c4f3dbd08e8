"""`reward_guided_generate` and the opt-in: every guidance option reaches `generate()` by all three ways in."""

import dataclasses
import inspect

import pytest
import torch
from conftest import (
    PAD,
    VOCAB_SIZE,
    left_padded,
    models,
    tiny_config,
    tiny_prefix_rm,
)
from transformers import T5ForConditionalGeneration

import hf_rgtg.custom_generate
import hf_rgtg.incremental.buffer
from hf_rgtg import (
    RewardGuidance,
    RewardGuidanceConfig,
    disable_reward_guided_generate,
    enable_reward_guided_generate,
    reward_guided_generate,
    reward_guided_generate_enabled,
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


@pytest.mark.parametrize("do_sample", [False, True])
def test_three_ways_in_give_identical_outputs(do_sample, restore_generate):
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    common = {"max_new_tokens": 8, "do_sample": do_sample, "pad_token_id": PAD}
    if do_sample:
        common.update(temperature=0.8, top_p=0.95)
    settings = {"beta": 2.0, "top_k": 6}

    guidance = RewardGuidance(
        rm, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, **settings
    )
    torch.manual_seed(3)
    explicit = lm.generate(ids, attention_mask=mask, **common, **guidance.generate_kwargs())

    torch.manual_seed(3)
    custom = lm.generate(
        ids,
        attention_mask=mask,
        **common,
        custom_generate=reward_guided_generate,
        reward_model=rm,
        **settings,
    )

    assert not reward_guided_generate_enabled()
    enable_reward_guided_generate()
    assert reward_guided_generate_enabled()
    torch.manual_seed(3)
    patched = lm.generate(ids, attention_mask=mask, **common, reward_model=rm, **settings)
    disable_reward_guided_generate()
    assert not reward_guided_generate_enabled()

    assert torch.equal(explicit, custom)
    assert torch.equal(explicit, patched)
    # Guidance changed something: the unguided output differs.
    torch.manual_seed(3)
    plain = lm.generate(ids, attention_mask=mask, **common)
    assert not torch.equal(plain, explicit)


def test_prompts_given_only_as_embeddings_and_encoder_decoder_models_are_refused(restore_generate):
    lm, rm = models("llama")
    ids = torch.tensor([[5, 6, 7]])
    embeds = lm.get_input_embeddings()(ids)
    guidance = RewardGuidance(rm, top_k=3, pad_token_id=PAD)
    enable_reward_guided_generate()
    for kwargs in (guidance.generate_kwargs(), {"reward_model": rm}):
        with pytest.raises(ValueError, match="`inputs_embeds` without `input_ids`"):
            lm.generate(inputs_embeds=embeds, max_new_tokens=2, pad_token_id=PAD, **kwargs)
    # With both, the language model reads the embeddings and the reward model the ids.
    out = lm.generate(ids, inputs_embeds=embeds, max_new_tokens=2, pad_token_id=PAD, reward_model=rm, top_k=3)
    assert out.shape == (1, 5)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(tiny_config("t5")).eval()
    with pytest.raises(ValueError, match="T5ForConditionalGeneration is an encoder-decoder model"):
        t5.generate(ids, max_new_tokens=2, reward_model=rm)


def test_reward_guidance_object_through_custom_generate_exposes_the_trace():
    lm, rm = models("llama")
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, top_k=5, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD)
    out = lm.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        pad_token_id=PAD,
        custom_generate=reward_guided_generate,
        reward_guidance=guidance,
    )
    assert [len(r) for r in guidance.trace.rewards_of(out, ids.shape[1])] == [4, 4, 4]
    with pytest.raises(ValueError, match="already holds"):
        lm.generate(
            ids, max_new_tokens=2, custom_generate=reward_guided_generate, reward_guidance=guidance, beta=3.0
        )
    with pytest.raises(ValueError, match="needs `reward_model=`"):
        lm.generate(ids, max_new_tokens=2, custom_generate=reward_guided_generate, beta=3.0)


def test_prompt_plus_new_tokens_beyond_reward_model_positions_fails_before_decoding():
    lm, rm = models("gpt2")
    calls = []
    rm.register_forward_hook(lambda *args: calls.append(1))
    ids, mask = left_padded()
    guided = {"custom_generate": reward_guided_generate, "reward_model": rm}
    with pytest.raises(
        ValueError,
        match=r"prompt has 6 tokens.*at most 128.*122 new tokens fit \(got 125\).*`max_new_tokens` to at most 122",
    ):
        lm.generate(ids, attention_mask=mask, max_new_tokens=125, **guided)
    # Asked with `max_length`, the fix names `max_length` (6 prompt columns + 122).
    with pytest.raises(ValueError, match=r"`max_length` to at most 128"):
        lm.generate(ids, attention_mask=mask, max_length=131, **guided)
    with pytest.raises(ValueError, match=r"prompt has 128 tokens.*Shorten the prompt"):
        lm.generate(torch.randint(1, VOCAB_SIZE - 1, (1, 128)), max_new_tokens=1, **guided)
    assert calls == []


@pytest.mark.parametrize("mode", ["greedy", "sample", "beams"])
def test_two_reward_models_give_identical_outputs_through_all_three_ways(mode, restore_generate):
    lm, rm = models("llama")
    other = tiny_prefix_rm("llama", seed=9)
    ids, mask = left_padded()
    common = {
        "attention_mask": mask,
        "max_new_tokens": 6,
        "pad_token_id": PAD,
        "do_sample": mode == "sample",
        "num_beams": 3 if mode == "beams" else 1,
    }
    settings = {"beta": [1.0, -20.0], "top_k": 5, "reward_transform": ["identity", "sigmoid"]}
    guidance = RewardGuidance(
        [rm, other], eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, **settings
    )
    torch.manual_seed(4)
    explicit = lm.generate(ids, **common, **guidance.generate_kwargs())
    torch.manual_seed(4)
    custom = lm.generate(
        ids, **common, custom_generate=reward_guided_generate, reward_model=[rm, other], **settings
    )
    enable_reward_guided_generate()
    torch.manual_seed(4)
    patched = lm.generate(ids, **common, reward_model=[rm, other], **settings)
    disable_reward_guided_generate()
    assert torch.equal(explicit, custom) and torch.equal(explicit, patched)
    alone = RewardGuidance(rm, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, top_k=5)
    torch.manual_seed(4)
    assert not torch.equal(explicit, lm.generate(ids, **common, **alone.generate_kwargs()))
