"""A reward model with another tokenizer than the language model: the bridged scorer against the text scorer (each
candidate's whole text decoded and re-encoded), the text scorer against a re-encoding written out here, telling
tokenizers apart, and the ways in."""

import logging

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    PAD,
    build_other_tokenizer,
    build_tokenizer,
    tiny_causal_lm,
    tiny_config,
)

import hf_rgtg.pipelines  # noqa: F401  (registers the tasks)
from hf_rgtg import PrefixRewardConfig, PrefixRewardModel, RewardGuidance
from hf_rgtg.bridging import BridgedText, TextBridge, text_bridge
from hf_rgtg.incremental import KVBuffer
from hf_rgtg.scoring import BridgedScorer, TextScorer, make_scorer
from hf_rgtg.scoring import bridged as bridged_module
from hf_rgtg.tokenization import vocabulary_fingerprint

KINDS = ("byte-level", "metaspace")
PROMPT_TEXTS = ["Tell me a story about a robot.", "Hi", "What is the weather like today?"]
# Text a forced language model writes token by token: accents, Chinese, emoji, merging whitespace, contractions.
TEXT = (
    "Hello world, this is great! 数据模型 你好世界 😀🎉 ok  spaced   out\n\n  text don't stop it's fine. "
    "naïve café 1234 5,6 Emoji😀party🎉time!!"
)

_TOKENIZERS: dict = {}


def other_tokenizer(kind):
    if kind not in _TOKENIZERS:
        _TOKENIZERS[kind] = build_other_tokenizer(kind)
    return _TOKENIZERS[kind]


def rm_for(arch, kind, seed=2):
    torch.manual_seed(seed)
    config = tiny_config(arch, vocab_size=len(other_tokenizer(kind)))
    return PrefixRewardModel(PrefixRewardConfig(text_config=config)).eval()


def prompts_batch(tokenizer, texts=PROMPT_TEXTS):
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def bridged_generate(lm, rm, tokenizer, reward_tokenizer, scorer, seed=0, eos_token_id=None, **kwargs):
    settings = {"beta", "top_k", "record_candidates", "standardize_rewards"}
    guidance_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in settings}
    ids, mask = prompts_batch(tokenizer)
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    guidance = RewardGuidance(
        rm,
        tokenizer,
        reward_tokenizer=reward_tokenizer,
        scorer=scorer,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        record_candidates=True,
        **guidance_kwargs,
    )
    torch.manual_seed(seed)
    out = lm.generate(
        ids,
        attention_mask=mask,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        **kwargs,
        **guidance.generate_kwargs(attention_mask=mask, prompts=PROMPT_TEXTS),
    )
    return out, guidance


def candidate_rewards(guidance, out, prompt_length):
    return [
        [reward for step in guidance.trace.steps(row, prompt_length) for reward in step.candidate_rewards]
        for row in out.tolist()
    ]


def assert_same_guidance(lm, rm, tokenizer, reward_tokenizer, **kwargs):
    fast, fast_guidance = bridged_generate(lm, rm, tokenizer, reward_tokenizer, "bridged", **kwargs)
    slow, slow_guidance = bridged_generate(lm, rm, tokenizer, reward_tokenizer, "text", **kwargs)
    assert isinstance(fast_guidance.scorer, BridgedScorer) and isinstance(slow_guidance.scorer, TextScorer)
    assert torch.equal(fast, slow)
    width = prompts_batch(tokenizer)[0].shape[1]
    for a, b in zip(
        candidate_rewards(fast_guidance, fast, width),
        candidate_rewards(slow_guidance, slow, width),
        strict=True,
    ):
        assert a == pytest.approx(b, abs=1e-4)
    return fast, fast_guidance


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bridged_greedy_decoding_agrees_with_re_encoding_every_text(arch, kind):
    lm = tiny_causal_lm(arch, seed=1, pad_token_id=PAD)
    out, guidance = assert_same_guidance(
        lm,
        rm_for(arch, kind),
        build_tokenizer(),
        other_tokenizer(kind),
        max_new_tokens=24,
        do_sample=False,
        top_k=6,
    )
    assert out.shape[0] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_bridged_sampling_and_beam_search_agree_with_re_encoding(kind):
    lm = tiny_causal_lm("llama", seed=1, pad_token_id=PAD)
    rm, tokenizer, reward_tokenizer = rm_for("llama", kind), build_tokenizer(), other_tokenizer(kind)
    assert_same_guidance(lm, rm, tokenizer, reward_tokenizer, max_new_tokens=12, do_sample=True, beta=2.0)
    assert_same_guidance(lm, rm, tokenizer, reward_tokenizer, max_new_tokens=8, do_sample=False, num_beams=3)
    assert_same_guidance(
        lm, rm, tokenizer, reward_tokenizer, max_new_tokens=6, do_sample=True, num_return_sequences=2
    )


def test_bridged_decoding_with_eos_mid_batch_agrees_with_re_encoding():
    lm = tiny_causal_lm("qwen2", seed=1, pad_token_id=PAD)
    rm, tokenizer, reward_tokenizer = (
        rm_for("qwen2", "byte-level"),
        build_tokenizer(),
        other_tokenizer("byte-level"),
    )
    free, _ = bridged_generate(
        lm, rm, tokenizer, reward_tokenizer, "bridged", max_new_tokens=12, do_sample=False
    )
    width = prompts_batch(tokenizer)[0].shape[1]
    generated = free[:, width:].tolist()
    eos = next(
        token
        for token in sorted({t for row in generated for t in row})
        if sum(token in row for row in generated) == 1
        and [t for row in generated for t in row].index(token) >= 2
    )
    out, _ = assert_same_guidance(
        lm, rm, tokenizer, reward_tokenizer, max_new_tokens=12, do_sample=False, eos_token_id=eos
    )
    finished = [eos in row for row in out[:, width:].tolist()]
    assert any(finished) and not all(finished)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bridged_scorer_follows_multi_byte_and_whitespace_text_exactly(arch, kind):
    """A language model forced through text with Chinese, emoji, accents and merging whitespace: at each step the
    bridged scorer's rewards of the true next token and of random others equal those of re-encoding each text."""
    tokenizer, reward_tokenizer = build_tokenizer(), other_tokenizer(kind)
    rm = rm_for(arch, kind)
    bridge = TextBridge(tokenizer, reward_tokenizer)
    fast, slow = BridgedScorer(rm, bridge), TextScorer(rm, bridge)
    response = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 1, 1]])
    prompts = ["Tell me a story", "Hi"]
    assert torch.allclose(
        fast.reset(ids, mask, prompts=prompts), slow.reset(ids, mask, prompts=prompts), atol=1e-5
    )
    generator = torch.Generator().manual_seed(0)
    for step, token in enumerate(response[:48]):
        if not fast.candidates_fit():
            break
        others = torch.randint(len(tokenizer), (2, 4), generator=generator)
        candidates = torch.cat([torch.tensor([[token], [response[-step - 1]]]), others], dim=1)
        assert torch.allclose(fast.score(candidates), slow.score(candidates), atol=1e-4), step
        chosen = torch.zeros(2, dtype=torch.long)
        fast.advance(candidates[:, 0], None, chosen)
        slow.advance(candidates[:, 0], None, chosen)
    # Most of the text became stable: the cache holds it, only the last word is re-tokenised.
    assert step == 47
    whole = len(bridge.response_ids(response[:step]))
    assert whole - 12 <= len(fast.texts[0].stable) < whole


def test_text_scorer_equals_re_encoding_written_out():
    tokenizer, reward_tokenizer = build_tokenizer(), other_tokenizer("byte-level")
    rm = rm_for("gpt2", "byte-level")
    scorer = TextScorer(rm, TextBridge(tokenizer, reward_tokenizer))
    prompt = "Tell me a story"
    scorer.reset(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), prompts=[prompt])
    written = tokenizer("Once upon", add_special_tokens=False)["input_ids"]
    for token in written:
        scorer.advance(torch.tensor([token]))
    candidates = torch.tensor([tokenizer(" a time 😀", add_special_tokens=False)["input_ids"][:3]])
    rewards = scorer.score(candidates)[0]
    for reward, candidate in zip(rewards.tolist(), candidates[0].tolist(), strict=True):
        text = tokenizer.decode([*written, candidate])
        ids = (
            reward_tokenizer(prompt)["input_ids"]
            + reward_tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        with torch.no_grad():
            expected = rm(torch.tensor([ids])).reward.item()
        assert reward == pytest.approx(expected, abs=1e-5)


def test_an_incomplete_character_adds_no_text_until_its_last_byte():
    tokenizer = build_tokenizer()
    bridge = TextBridge(tokenizer, other_tokenizer("byte-level"))
    emoji = tokenizer("😀", add_special_tokens=False)["input_ids"]
    assert len(emoji) > 1  # its four bytes are several byte-level tokens
    row = BridgedText(bridge)
    texts = []
    for token in emoji:
        row.append(token)
        texts.append(row.text)
    assert texts[:-1] == [""] * (len(emoji) - 1) and texts[-1] == "😀"


def test_tokenizers_are_told_apart_by_their_tokens_not_their_size(caplog):
    tokenizer, same_size = build_tokenizer(), other_tokenizer("same-size")
    assert len(same_size) == len(tokenizer)
    assert vocabulary_fingerprint(tokenizer) != vocabulary_fingerprint(same_size)
    assert vocabulary_fingerprint(build_tokenizer()) == vocabulary_fingerprint(tokenizer)
    assert text_bridge(tokenizer, build_tokenizer()) is None
    assert isinstance(text_bridge(tokenizer, same_size), TextBridge)
    rm = rm_for("gpt2", "same-size")
    assert isinstance(RewardGuidance(rm, tokenizer, reward_tokenizer=same_size).scorer, BridgedScorer)
    lm = tiny_causal_lm("gpt2", seed=1, pad_token_id=PAD)
    assert_same_guidance(lm, rm, tokenizer, same_size, max_new_tokens=12, do_sample=False)
    # The same tokenizer: the reward model reads the ids, on the ordinary cached path.
    assert RewardGuidance(rm, tokenizer, reward_tokenizer=build_tokenizer()).bridge is None
    # Unknown: said, with the argument to pass.
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        RewardGuidance(rm, tokenizer)
    assert "Pass `reward_tokenizer=`" in caplog.text
    with pytest.raises(ValueError, match="pass the language model's tokenizer \\(`tokenizer=`\\)"):
        RewardGuidance(rm, reward_tokenizer=same_size)
    other = rm_for("gpt2", "byte-level")
    with pytest.raises(ValueError, match="`tokenizer=`.*`reward_tokenizer=`"):
        lm.generate(torch.tensor([[5, 6]]), max_new_tokens=2, **RewardGuidance(other).generate_kwargs())


def test_scorer_kinds_refuse_the_wrong_pairing():
    tokenizer, reward_tokenizer = build_tokenizer(), other_tokenizer("byte-level")
    rm = rm_for("gpt2", "byte-level")
    with pytest.raises(ValueError, match='`scorer="cached"` reads the language model\'s token ids'):
        RewardGuidance(rm, tokenizer, reward_tokenizer=reward_tokenizer, scorer="cached")
    with pytest.raises(ValueError, match='`scorer="bridged"` reads text'):
        make_scorer(rm, "bridged")


def test_an_encoder_reward_model_with_its_own_tokenizer_re_encodes_each_text_and_says_why(caplog):
    tokenizer, reward_tokenizer = build_tokenizer(), other_tokenizer("metaspace")
    torch.manual_seed(3)
    encoder = PrefixRewardModel(
        PrefixRewardConfig(text_config=tiny_config("bert", vocab_size=len(reward_tokenizer)))
    ).eval()
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        guidance = RewardGuidance(encoder, tokenizer, reward_tokenizer=reward_tokenizer)
    assert isinstance(guidance.scorer, TextScorer)
    assert "encoder" in caplog.text and "quadratic" in caplog.text and caplog.text.count("\n") == 1
    lm = tiny_causal_lm("llama", seed=1, pad_token_id=PAD)
    out, guidance = bridged_generate(
        lm, encoder, tokenizer, reward_tokenizer, "text", max_new_tokens=6, do_sample=False
    )
    width = prompts_batch(tokenizer)[0].shape[1]
    # Each step's chosen reward is the encoder's reward of the whole re-encoded text.
    row = out[1].tolist()
    steps = guidance.trace.steps(row, width)
    bridge = guidance.bridge
    for end, step in enumerate(steps, start=1):
        ids = bridge.prompt_ids(PROMPT_TEXTS[1]) + bridge.response_ids(row[width : width + end])
        with torch.no_grad():
            expected = encoder(torch.tensor([ids])).reward.item()
        assert step.reward == pytest.approx(expected, abs=1e-4)


def test_every_way_into_generate_bridges_alike(hub_cache, restore_generate):
    """Way 1, `generate(reward_model=...)`, `custom_generate=`, and the pipeline give one output; the reward
    model's tokenizer comes from the Hub id it was published under."""
    from transformers import pipeline

    from hf_rgtg import enable_reward_guided_generate, reward_guided_generate

    tokenizer, reward_tokenizer = build_tokenizer(), other_tokenizer("metaspace")
    tokenizer.pad_token = tokenizer.eos_token
    lm = tiny_causal_lm("llama", seed=1, pad_token_id=tokenizer.pad_token_id)
    rm = rm_for("llama", "metaspace")
    repo = hub_cache(rm, "org/bridged-rm", tokenizer=reward_tokenizer)
    prompt = PROMPT_TEXTS[0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    settings = {"max_new_tokens": 8, "do_sample": False, "top_k": 5}
    guidance = RewardGuidance(repo, tokenizer, top_k=5)
    assert isinstance(guidance.scorer, BridgedScorer)
    expected = lm.generate(
        ids, max_new_tokens=8, do_sample=False, **guidance.generate_kwargs(prompts=[prompt])
    )
    way3 = lm.generate(
        ids,
        custom_generate=reward_guided_generate,
        reward_model=repo,
        guided_tokenizer=tokenizer,
        reward_prompts=[prompt],
        **settings,
    )
    enable_reward_guided_generate()
    way2 = lm.generate(ids, reward_model=repo, tokenizer=tokenizer, reward_prompts=[prompt], **settings)
    assert torch.equal(way2, expected) and torch.equal(way3, expected)
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=repo, top_k=5
    )
    record = generator(
        prompt, max_new_tokens=8, do_sample=False, return_full_text=False, return_token_rewards=True
    )[0]
    assert record["generated_text"] == tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)
    # The reward is the reward model's own reading of the text, and its token rewards are over its own tokens.
    assert record["reward"] == pytest.approx(
        guidance.sequence_rewards(expected, ids.shape[1], prompts=[prompt]).item(), abs=1e-5
    )
    response_ids = reward_tokenizer(record["generated_text"], add_special_tokens=False)["input_ids"]
    assert record["token_rewards"]["token_ids"] == response_ids


def test_chat_prompts_reach_a_reward_model_without_a_chat_template_as_their_last_user_message():
    tokenizer, reward_tokenizer = build_tokenizer(), other_tokenizer("byte-level")
    bridge = TextBridge(tokenizer, reward_tokenizer)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me a story"}]
    assert bridge.prompt_ids(messages) == reward_tokenizer("Tell me a story")["input_ids"]
    templated = TextBridge(tokenizer, reward_tokenizer, prompt_template="Q: {prompt}\nA: ")
    assert templated.prompt_ids(messages) == reward_tokenizer("Q: Tell me a story\nA: ")["input_ids"]


def test_a_full_memo_is_forgotten_without_losing_what_was_asked_for(monkeypatch):
    import hf_rgtg.bridging

    monkeypatch.setattr(hf_rgtg.bridging, "MEMO_SIZE", 2)
    bridge = TextBridge(build_tokenizer(), other_tokenizer("byte-level"))
    for text in ("a b", "c d", "e f"):
        bridge.encode([text])
    # The memo holds more than it may: asked for one text it holds and a new one, it forgets, and both come back.
    assert bridge.encode(["e f", "i j"]) == [
        bridge.reward_tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("e f", "i j")
    ]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_compacted_buffer_scores_as_before(arch, monkeypatch):
    """With a threshold of one column, the bridged scorer moves every row's valid columns to the front whenever
    the fullest row has a column masked out (rows gain different numbers of tokens, and tokenizations change); it
    still agrees with re-encoding."""
    monkeypatch.setattr(bridged_module, "COMPACT_AFTER", 1)
    monkeypatch.setattr(bridged_module, "COMPACT_SHARE", 0.0)
    compacted = []
    original = KVBuffer.compact

    def compact(buffer, columns):
        compacted.append(buffer.length - columns.shape[1])
        original(buffer, columns)

    monkeypatch.setattr(KVBuffer, "compact", compact)
    lm = tiny_causal_lm(arch, seed=1, pad_token_id=PAD)
    _, guidance = assert_same_guidance(
        lm,
        rm_for(arch, "byte-level"),
        build_tokenizer(),
        other_tokenizer("byte-level"),
        max_new_tokens=16,
        do_sample=True,
        num_beams=2,
        beta=2.0,
    )
    assert len(compacted) >= 4 and min(compacted) > 0
    assert guidance.scorer.buffer.length == int(guidance.scorer.valid.sum(dim=1).max())


def test_kv_buffer_compact_keeps_each_rows_columns_in_order():
    buffer = KVBuffer.empty(1, rows=2, kv_heads=1, head_dim=1, needed=5, like=torch.empty(0))
    buffer.reserve(5)
    written = torch.arange(10.0).view(2, 1, 5, 1)
    buffer.write(0, written, -written)
    buffer.commit(5)
    buffer.compact(torch.tensor([[0, 2, 4], [1, 3, 3]]))
    assert buffer.length == 3
    assert buffer.layers[0][0, :, 0, :3, 0].tolist() == [[0.0, 2.0, 4.0], [6.0, 8.0, 8.0]]
    assert buffer.layers[0][1, :, 0, :3, 0].tolist() == [[-0.0, -2.0, -4.0], [-6.0, -8.0, -8.0]]
