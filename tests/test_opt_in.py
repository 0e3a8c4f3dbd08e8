"""The explicit, reversible opt-in: `generate(reward_model=...)`."""

import pytest
import torch
from conftest import (
    PAD,
    left_padded,
    models,
)
from transformers import GenerationMixin

from hf_rgtg import (
    RewardGuidance,
    disable_reward_guided_generate,
    enable_reward_guided_generate,
    reward_guided_generate_enabled,
)


def test_import_patches_nothing_and_unguided_generate_is_unchanged(restore_generate):
    import hf_rgtg  # noqa: F401

    assert not hasattr(GenerationMixin.generate, "__wrapped_generate__")
    lm, rm = models("llama")
    ids, mask = left_padded()
    torch.manual_seed(0)
    before = lm.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=5, pad_token_id=PAD
    )
    enable_reward_guided_generate()
    torch.manual_seed(0)
    during = lm.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=5, pad_token_id=PAD
    )
    torch.manual_seed(0)
    explicit_none = lm.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=True,
        top_k=5,
        pad_token_id=PAD,
        reward_model=None,
    )
    disable_reward_guided_generate()
    assert torch.equal(before, during) and torch.equal(before, explicit_none)
    assert GenerationMixin.generate is not None and not hasattr(
        GenerationMixin.generate, "__wrapped_generate__"
    )


def test_per_model_opt_in(restore_generate):
    lm, rm = models("qwen2")
    other, _ = models("gpt2")
    ids, mask = left_padded()
    enable_reward_guided_generate(lm)
    assert reward_guided_generate_enabled(lm) and not reward_guided_generate_enabled(other)
    out = lm.generate(ids, attention_mask=mask, max_new_tokens=3, pad_token_id=PAD, reward_model=rm, top_k=4)
    assert out.shape == (3, ids.shape[1] + 3)
    disable_reward_guided_generate(lm)
    assert not reward_guided_generate_enabled(lm)


def test_per_model_opt_in_outlives_a_global_one(restore_generate):
    lm, rm = models("qwen2")
    enable_reward_guided_generate()
    enable_reward_guided_generate(lm)
    disable_reward_guided_generate()
    assert reward_guided_generate_enabled(lm) and not reward_guided_generate_enabled()
    out = lm.generate(torch.tensor([[5, 6]]), max_new_tokens=2, pad_token_id=PAD, reward_model=rm, top_k=4)
    assert out.shape == (1, 4)


def test_opt_in_honours_stop_strings(restore_generate, tokenizer):
    lm, rm = models("llama")  # its random weights do not just repeat one token here
    ids = tokenizer("Thank you so much", return_tensors="pt").input_ids
    common = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": PAD}
    settings = {"beta": 2.0, "top_k": 6}
    eos = lm.generation_config.eos_token_id

    def explicit(**kwargs):
        guidance = RewardGuidance(rm, eos_token_id=eos, pad_token_id=PAD, **settings)
        return lm.generate(ids, **common, **kwargs, **guidance.generate_kwargs())

    enable_reward_guided_generate()
    out = explicit()

    # A stop string taken from the guided output ends the opt-in's generation where it ends the explicit one's.
    width = ids.shape[1]
    stop = next(
        (
            text
            for step in range(1, common["max_new_tokens"] - 1)
            if (text := tokenizer.decode(out[0, width + step : width + step + 1])).strip()
            and text not in tokenizer.decode(out[0, : width + step])
        ),
        None,
    )
    if stop is None:
        pytest.skip("no generated token decodes to a fresh stop string")
    stopped = explicit(stop_strings=[stop], tokenizer=tokenizer)
    assert stopped.shape[1] < out.shape[1]
    opt_in = lm.generate(ids, **common, stop_strings=[stop], tokenizer=tokenizer, reward_model=rm, **settings)
    assert torch.equal(opt_in, stopped)
    with pytest.raises(ValueError, match="`stop_strings` needs the model's tokenizer"):
        lm.generate(ids, **common, stop_strings=[stop], reward_model=rm)


def test_opt_in_refuses_assisted_decoding_and_accepts_custom_generate_none(restore_generate):
    lm, rm = models("gpt2")
    ids = torch.tensor([[5, 6, 7]])
    enable_reward_guided_generate()
    with pytest.raises(ValueError, match="does not support assisted decoding \\(`assistant_model`\\)"):
        lm.generate(ids, max_new_tokens=2, assistant_model=lm, reward_model=rm)
    with pytest.raises(ValueError, match="cannot be combined with another `custom_generate`"):
        lm.generate(ids, max_new_tokens=2, custom_generate=lambda **kw: None, reward_model=rm)
    out = lm.generate(ids, max_new_tokens=2, pad_token_id=PAD, custom_generate=None, reward_model=rm, top_k=3)
    assert out.shape == (1, 5)
