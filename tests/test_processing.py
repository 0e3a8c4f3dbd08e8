"""The logits processor: the rule it writes into the top-k slots, how it composes with other processors, and
what it refuses."""

import warnings

import pytest
import torch
from conftest import (
    PAD,
    VOCAB_SIZE,
    guided,
    left_padded,
    models,
    tiny_config,
    tiny_prefix_rm,
)

from hf_rgtg import (
    PrefixRewardConfig,
    PrefixRewardModel,
    RewardGuidance,
    reward_guided_generate,
)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"score_with": "logits"},
        {"reward_transform": "clamp"},
        {"reward_transform": "sigmoid", "beta": 3.0},
        {"standardize_rewards": True},
        {"reward_transform": lambda r: 2 * r},
    ],
    ids=["default", "logits", "clamp", "sigmoid", "standardize", "callable"],
)
def test_processor_writes_the_rule_into_the_top_k_slots(options):
    rm = tiny_prefix_rm("llama", seed=4)
    guidance = RewardGuidance(rm, top_k=4, scorer="reference", **options)
    ids, mask = left_padded()
    guidance.state.prepare(mask)
    scores = torch.randn(3, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    out = guidance.logits_processor(ids, scores.clone())

    base = scores if options.get("score_with") == "logits" else scores.log_softmax(-1)
    top, cand = base.topk(4)
    rewards = torch.stack(
        [
            rm(
                torch.cat([ids, cand[:, j : j + 1]], 1),
                attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1),
            ).reward
            for j in range(4)
        ],
        dim=1,
    )
    transform = options.get("reward_transform", "identity")
    r = (
        {"identity": rewards, "clamp": rewards.clamp(0, 1), "sigmoid": rewards.sigmoid()}.get(transform)
        if isinstance(transform, str)
        else transform(rewards)
    )
    if options.get("standardize_rewards"):
        r = (r - r.mean(-1, keepdim=True)) / (r.std(-1, unbiased=False, keepdim=True) + 1e-6)
    expected = torch.full_like(scores, float("-inf")).scatter(1, cand, top + options.get("beta", 1.0) * r)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert (out > float("-inf")).sum(-1).tolist() == [4, 4, 4]


def test_tokens_forbidden_by_earlier_processors_are_never_candidates():
    lm, rm = models("llama")
    ids, mask = left_padded()
    first, _ = guided(lm, rm, ids, mask, max_new_tokens=6, do_sample=False)
    banned = first[0, ids.shape[1]].item()
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=6, do_sample=False, bad_words_ids=[[banned]])
    assert banned not in out[:, ids.shape[1] :].tolist()[0]
    for row in out:
        for step in guidance.trace.steps(row, ids.shape[1]):
            assert banned not in step.candidates


def test_min_new_tokens_repetition_penalty_and_eos_lists_compose():
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    free, _ = guided(lm, rm, ids, mask, max_new_tokens=8, do_sample=False, repetition_penalty=1.3)
    generated = free[:, ids.shape[1] :]
    eos = [generated[0, 1].item(), generated[2, 2].item()]  # tokens the rows produce early
    out, guidance = guided(
        lm,
        rm,
        ids,
        mask,
        max_new_tokens=8,
        do_sample=False,
        repetition_penalty=1.3,
        min_new_tokens=4,
        eos_token_id=eos,
    )
    new = out[:, ids.shape[1] :]
    assert not torch.isin(new[:, :4], torch.tensor(eos)).any()
    for row in out:
        steps = guidance.trace.steps(row, ids.shape[1])
        tokens = [s.token for s in steps]
        assert all(s.token in s.candidates for s in steps)
        hits = [i for i, t in enumerate(tokens) if t in eos]
        if hits:  # the trace stops at the first EOS of either id
            assert hits == [len(tokens) - 1]


def test_sampling_with_temperature_and_top_p_only_ever_picks_candidates():
    lm, rm = models("qwen2")
    ids, mask = left_padded()
    out, guidance = guided(
        lm,
        rm,
        ids,
        mask,
        max_new_tokens=10,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        beta=2.0,
        top_k=5,
        seed=11,
    )
    for row in out:
        steps = guidance.trace.steps(row, ids.shape[1])
        assert len(steps) == 10
        assert all(s.token in s.candidates and len(s.candidates) == 5 for s in steps)


def test_reward_model_with_another_vocabulary_is_rejected():
    lm, _ = models("llama")
    torch.manual_seed(0)
    rm = PrefixRewardModel(
        PrefixRewardConfig(text_config=tiny_config("llama", vocab_size=VOCAB_SIZE + 16))
    ).eval()
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, top_k=3, pad_token_id=PAD)
    with pytest.raises(ValueError, match="do not share a tokenizer.*`reward_tokenizer=`"):
        lm.generate(
            ids, attention_mask=mask, max_new_tokens=2, pad_token_id=PAD, **guidance.generate_kwargs()
        )
    with pytest.raises(ValueError, match="vocabulary has 400"):
        lm.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=2,
            custom_generate=reward_guided_generate,
            reward_model=rm,
        )


def test_explicit_processors_stop_at_the_reward_model_positions_and_keep_the_output():
    # The processor cannot see `max_new_tokens`. Asked for a token past the reward model's positions (the longest
    # prompt has 6 tokens, the reward model 128 positions), it keeps the 122 guided tokens, ends every row with the
    # pad token and warns, instead of failing mid-way.
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, top_k=3, pad_token_id=PAD)

    def generate(guidance: RewardGuidance, new_tokens: int) -> torch.Tensor:
        kwargs = guidance.generate_kwargs(attention_mask=mask)
        return lm.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=PAD,
            **kwargs,
        )

    warning = "stopped after 122 new tokens.*at most 128 positions.*ends with one token.*max_new_tokens"
    with pytest.warns(UserWarning, match=warning):
        out = generate(guidance, 125)
    assert out.shape == (3, ids.shape[1] + 123)
    assert (out[:, -1] == PAD).all()
    assert [len(steps) for steps in guidance.trace.rewards_of(out, ids.shape[1])] == [122] * 3
    # Asking for exactly what fits loses nothing and warns nothing, and gives the same guided tokens.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = generate(guidance, 122)
    assert torch.equal(exact, out[:, :-1])
    # Without a pad or EOS id to end the rows with, it stops where the positions end.
    with pytest.warns(UserWarning, match="stopped after 122 new tokens") as caught:
        kept = generate(RewardGuidance(rm, top_k=3, eos_token_id=[]), 125)
    assert kept.shape == (3, ids.shape[1] + 122)
    assert "ends with" not in str(caught[0].message)
    # A prompt that alone fills the reward model is refused before any token is generated.
    long_ids = torch.randint(1, VOCAB_SIZE - 1, (1, 128))
    with pytest.raises(ValueError, match="reaches position 129.*at most 128 positions"):
        lm.generate(long_ids, max_new_tokens=2, pad_token_id=PAD, **guidance.generate_kwargs())


def test_processor_and_criteria_opt_out_of_continuous_batching():
    guidance = RewardGuidance(tiny_prefix_rm("gpt2"), top_k=2)
    assert guidance.logits_processor.supports_continuous_batching is False
    assert guidance.stopping_criteria and all(
        criterion.supports_continuous_batching is False for criterion in guidance.stopping_criteria
    )
