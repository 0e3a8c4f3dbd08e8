"""Prefix and sequence rewards of generated continuations (hf_rgtg/redistribution.py)."""

import pytest
import torch
from conftest import (
    PAD,
    VOCAB_SIZE,
    eos_mid_batch,
    guided,
    left_padded,
    models,
    tiny_causal_lm,
    tiny_prefix_rm,
)

from hf_rgtg import (
    RewardGuidance,
    score_sequences,
)
from hf_rgtg.redistribution import GenerationResult, prefix_rewards, sequence_reward

EOS = 0
PROMPT = [5, 6, 7]


def guidance_for(arch="llama"):
    return RewardGuidance(tiny_prefix_rm(arch, seed=2), eos_token_id=EOS, pad_token_id=EOS)


def reward_of(guidance, ids):
    """The reward of `ids` as one sequence of its own: the reference each prefix is checked against."""
    with torch.no_grad():
        return guidance.reward_model(torch.tensor([ids])).reward.item()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_each_generated_token_gets_the_reward_of_the_prefix_it_ends(arch):
    guidance = guidance_for(arch)
    generated = [11, 12, 13, 14]
    steps = prefix_rewards(guidance, torch.tensor(PROMPT + generated), prompt_length=len(PROMPT))
    assert [token for token, _ in steps] == generated
    for t, (_, reward) in enumerate(steps, start=1):
        assert reward == pytest.approx(reward_of(guidance, PROMPT + generated[:t]), abs=1e-5)


def test_prefix_rewards_end_at_the_first_end_of_sequence_token():
    guidance = guidance_for()
    sequence = torch.tensor([*PROMPT, 11, EOS, 12, EOS, EOS])
    steps = prefix_rewards(guidance, sequence, prompt_length=len(PROMPT))
    assert [token for token, _ in steps] == [11, EOS]
    assert steps[-1][1] == pytest.approx(reward_of(guidance, [*PROMPT, 11, EOS]), abs=1e-5)
    # An end-of-sequence token first is one step; nothing generated is no step.
    assert [token for token, _ in prefix_rewards(guidance, torch.tensor([*PROMPT, EOS, 9]), len(PROMPT))] == [
        EOS
    ]
    assert prefix_rewards(guidance, torch.tensor(PROMPT), prompt_length=len(PROMPT)) == []


def test_a_reward_model_that_cannot_score_prefixes_in_one_pass_gives_none():
    guidance = guidance_for("bert")
    assert not guidance.reward_model.supports_incremental_scoring
    assert prefix_rewards(guidance, torch.tensor([*PROMPT, 11, 12]), prompt_length=len(PROMPT)) is None


def test_sequence_reward_is_the_first_row_s_score_at_its_last_real_token():
    guidance = guidance_for()
    # A left-padded prompt: its pad is masked, and so is everything after the first EOS.
    inputs = {"input_ids": torch.tensor([[EOS, *PROMPT]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    sequences = torch.tensor([[EOS, *PROMPT, 11, 12, EOS, EOS], [EOS, *PROMPT, 13, 14, 15, 16]])
    reward = sequence_reward(guidance, sequences, inputs)
    expected = score_sequences(
        guidance.reward_model,
        sequences,
        prompt_length=4,
        prompt_attention_mask=inputs["attention_mask"],
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    assert isinstance(reward, float) and reward == pytest.approx(float(expected[0]), abs=1e-6)
    assert reward == pytest.approx(reward_of(guidance, [*PROMPT, 11, 12, EOS]), abs=1e-5)


def test_a_generated_continuation_and_its_rewards_fit_in_a_result():
    guidance = guidance_for()
    lm = tiny_causal_lm("llama", seed=0)
    inputs = {
        "input_ids": torch.tensor([PROMPT]),
        "attention_mask": torch.ones(1, len(PROMPT), dtype=torch.long),
    }
    with torch.no_grad():
        sequences = lm.generate(
            **inputs, max_new_tokens=4, do_sample=False, pad_token_id=EOS, eos_token_id=EOS
        )
    steps = prefix_rewards(guidance, sequences[0], prompt_length=len(PROMPT))
    result = GenerationResult("unguided", "...", steps, sequence_reward(guidance, sequences, inputs))
    assert 1 <= len(result.steps) <= 4 and all(0 <= token < VOCAB_SIZE for token, _ in result.steps)
    # The last prefix is the whole sequence, so its reward is the sequence's.
    assert result.steps[-1][1] == pytest.approx(result.reward, abs=1e-5)


def test_sequence_rewards_read_the_last_real_token():
    lm, rm = models("llama")
    ids, mask = left_padded()
    eos = eos_mid_batch(lm, rm, ids, mask)
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=eos)
    final = guidance.sequence_rewards(out, ids.shape[1], prompt_attention_mask=mask)
    last = torch.tensor([r[-1] for r in guidance.trace.rewards_of(out, ids.shape[1])])
    torch.testing.assert_close(final, last, atol=1e-4, rtol=0)
    # Without the mask, left padding is recognised from the pad id.
    torch.testing.assert_close(
        score_sequences(rm, out, ids.shape[1], eos_token_id=eos, pad_token_id=PAD), final
    )
