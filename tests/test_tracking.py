"""The row tracker: calls told apart, the prompts' padding."""

import warnings

import pytest
import torch
from conftest import (
    PAD,
    left_padded,
    models,
)

from hf_rgtg import (
    RewardGuidance,
    reward_guided_generate,
)


def test_same_objects_are_reused_across_generate_calls():
    lm, rm = models("qwen2")
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, top_k=5, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD)
    kwargs = guidance.generate_kwargs()
    first = lm.generate(ids, attention_mask=mask, max_new_tokens=5, pad_token_id=PAD, **kwargs)
    # The same lists again, without asking for fresh ones: the state notices the new call and resets.
    other_ids, other_mask = left_padded([[20, 21, 22], [23]])
    lm.generate(other_ids, attention_mask=other_mask, max_new_tokens=3, pad_token_id=PAD, **kwargs)
    assert len(guidance.trace.roots) == 2
    again = lm.generate(ids, attention_mask=mask, max_new_tokens=5, pad_token_id=PAD, **kwargs)
    assert torch.equal(first, again)
    assert len(guidance.trace.roots) == 3 and guidance.state.reward_calls == 5


def test_a_batch_whose_padding_cannot_be_told_warns():
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, top_k=3)  # no tokenizer, no pad id
    with pytest.warns(UserWarning, match="cannot tell the prompts' left padding.*pad_token_id"):
        lm.generate(
            ids, attention_mask=mask, max_new_tokens=2, pad_token_id=PAD, **guidance.generate_kwargs()
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm.generate(
            ids, attention_mask=mask, max_new_tokens=2, pad_token_id=PAD, **guidance.generate_kwargs(mask)
        )


def test_prompts_that_start_with_the_pad_token_keep_it_with_an_explicit_mask():
    """When BOS is the pad token, a prompt may begin with it: the mask, not the pad id, decides what is padding."""
    lm, rm = models("llama")
    ids = torch.tensor([[PAD, 5, 6, 7], [PAD, 8, 9, 10]])  # the leading id is a real token here
    mask = torch.ones_like(ids)
    guidance = RewardGuidance(rm, top_k=4, pad_token_id=PAD, record_candidates=True)
    settings = dict(
        attention_mask=mask,
        max_new_tokens=3,
        do_sample=False,
        num_return_sequences=2,
        num_beams=2,
        pad_token_id=PAD,
    )
    out = lm.generate(ids, **settings, **guidance.generate_kwargs(attention_mask=mask))
    direct = rm(out).rewards[:, ids.shape[1] :]
    for i, row in enumerate(out):
        torch.testing.assert_close(
            torch.tensor(guidance.trace.rewards_of(row[None], 4)[0]), direct[i], atol=1e-4, rtol=0
        )
    # Through custom_generate, generate() drops the all-ones mask; the guidance still counts the first token.
    custom = RewardGuidance(rm, top_k=4, pad_token_id=PAD)
    again = lm.generate(ids, **settings, custom_generate=reward_guided_generate, reward_guidance=custom)
    assert torch.equal(again, out)
    torch.testing.assert_close(torch.tensor(custom.trace.rewards_of(again, 4)), direct, atol=1e-4, rtol=0)
