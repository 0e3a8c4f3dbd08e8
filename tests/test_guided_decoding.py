"""Reward-guided decoding: the fast (cached) path against the reference path, and the three ways into generate()."""

import math
import warnings
from unittest.mock import patch

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    PAD,
    VOCAB_SIZE,
    advance_all,
    guided,
    left_padded,
    models,
    shared_prefix_rm,
    tiny_config,
    tiny_prefix_rm,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GenerationMixin, T5ForConditionalGeneration
from transformers.generation.streamers import BaseStreamer

import hf_rgtg.incremental.buffer
from hf_rgtg import (
    CachedScorer,
    PrefixRewardConfig,
    PrefixRewardModel,
    ReferenceScorer,
    RewardGuidance,
    RewardGuidanceConfig,
    disable_reward_guided_generate,
    enable_reward_guided_generate,
    reward_guided_generate,
    reward_guided_generate_enabled,
    score_sequences,
)


def assert_traces_agree(out, fast, reference, prompt_length, atol=1e-4):
    for row in out:
        fast_steps, ref_steps = (
            fast.trace.steps(row, prompt_length),
            reference.trace.steps(row, prompt_length),
        )
        assert len(fast_steps) == len(ref_steps) > 0
        for a, b in zip(fast_steps, ref_steps, strict=True):
            assert a.token == b.token and a.candidates == b.candidates
            assert abs(a.reward - b.reward) <= atol
            assert (
                max(abs(x - y) for x, y in zip(a.candidate_rewards, b.candidate_rewards, strict=True)) <= atol
            )


def eos_mid_batch(lm, rm, ids, mask):
    """A token that some row of guided greedy decoding produces first at step >= 2 while another row never does:
    used as EOS, it finishes that row mid-batch and leaves the other running."""
    out, _ = guided(lm, rm, ids, mask, max_new_tokens=10, do_sample=False)
    generated = out[:, ids.shape[1] :].tolist()
    for token in sorted({t for row in generated for t in row} - {PAD}):
        first = [row.index(token) if token in row else None for row in generated]
        seen = [f for f in first if f is not None]
        if min(seen) >= 2 and None in first:
            return token
    pytest.skip("no token finishes one row while another goes on")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_fast_path_matches_reference_with_left_padding_and_eos_mid_batch(arch):
    lm, rm = models(arch)
    ids, mask = left_padded()
    eos = eos_mid_batch(lm, rm, ids, mask)
    outs = {}
    for scorer in ("cached", "reference"):
        outs[scorer] = guided(
            lm, rm, ids, mask, scorer=scorer, eos_token_id=eos, max_new_tokens=10, do_sample=False
        )
    (out, fast), (ref_out, reference) = outs["cached"], outs["reference"]
    assert torch.equal(out, ref_out)
    # Row 1 finished early; the others went on, so the batch really had EOS mid-generation.
    generated = out[:, ids.shape[1] :]
    finished = [i for i in range(len(out)) if eos in generated[i].tolist()]
    assert finished and len(finished) < len(out)
    for i in finished:
        finished_at = generated[i].tolist().index(eos)
        assert (generated[i, finished_at + 1 :] == PAD).all()
        assert len(fast.trace.steps(out[i], ids.shape[1])) == finished_at + 1
    assert_traces_agree(out, fast, reference, ids.shape[1])
    # Every recorded prefix reward is the reward model's reward of that prefix, recomputed in one forward.
    full_mask = torch.cat([mask, torch.ones_like(generated)], dim=1)
    direct = rm(out, attention_mask=full_mask).rewards[:, ids.shape[1] :]
    for i, row in enumerate(out):
        rewards = fast.trace.rewards_of(row[None], ids.shape[1])[0]
        torch.testing.assert_close(torch.tensor(rewards), direct[i, : len(rewards)], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sampling_with_several_return_sequences_matches_reference(arch):
    lm, rm = models(arch)
    ids, mask = left_padded()
    kwargs = {"max_new_tokens": 8, "do_sample": True, "num_return_sequences": 2, "beta": 2.0, "seed": 7}
    out, fast = guided(lm, rm, ids, mask, scorer="cached", **kwargs)
    ref_out, reference = guided(lm, rm, ids, mask, scorer="reference", **kwargs)
    assert out.shape[0] == 6
    assert torch.equal(out, ref_out)
    assert_traces_agree(out, fast, reference, ids.shape[1])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_beam_search_matches_reference(arch):
    lm, rm = models(arch)
    ids, mask = left_padded()
    kwargs = {"max_new_tokens": 7, "do_sample": False, "num_beams": 3, "num_return_sequences": 2}
    out, fast = guided(lm, rm, ids, mask, scorer="cached", **kwargs)
    ref_out, reference = guided(lm, rm, ids, mask, scorer="reference", **kwargs)
    assert torch.equal(out, ref_out)
    assert_traces_agree(out, fast, reference, ids.shape[1])
    # Beam search reorders rows: the returned beams are not simply rows 0, 1 of each prompt's expansion. Every
    # generated token has its reward in the trace, the last one (never committed by a later step) included.
    direct = rm(
        out,
        attention_mask=torch.cat([mask.repeat_interleave(2, 0), torch.ones_like(out[:, ids.shape[1] :])], 1),
    )
    eos = lm.generation_config.eos_token_id
    for i, row in enumerate(out):
        rewards = fast.trace.rewards_of(row[None], ids.shape[1])[0]
        generated = row[ids.shape[1] :].tolist()
        assert len(rewards) == (generated.index(eos) + 1 if eos in generated else len(generated))
        torch.testing.assert_close(
            torch.tensor(rewards),
            direct.rewards[i, ids.shape[1] : ids.shape[1] + len(rewards)],
            atol=1e-4,
            rtol=0,
        )


def test_eager_attention_uses_an_additive_mask_and_matches_reference():
    lm, _ = models("llama")
    torch.manual_seed(2)
    config = PrefixRewardConfig(text_config=tiny_config("llama"))
    config.text_config._attn_implementation = "eager"
    rm = PrefixRewardModel(config).eval()
    assert rm.config.text_config._attn_implementation == "eager"
    ids, mask = left_padded()
    out, fast = guided(lm, rm, ids, mask, scorer="cached", max_new_tokens=6, do_sample=False)
    ref_out, reference = guided(lm, rm, ids, mask, scorer="reference", max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref_out)
    assert_traces_agree(out, fast, reference, ids.shape[1])


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    k=st.integers(1, 6),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    reorder=st.booleans(),
    arch=st.sampled_from(ARCHITECTURES),
    head_layer=st.sampled_from([None, 1, -1]),
    incremental=st.booleans(),
    growth=st.sampled_from([1, 3, 256]),
    mapped=st.booleans(),
    reserved=st.booleans(),
    block=st.sampled_from([1, 3, 64]),
)
def test_property_cached_scorer_matches_reference_under_any_padding_and_reordering(
    lengths, k, steps, seed, reorder, arch, head_layer, incremental, growth, mapped, reserved, block
):
    rm = shared_prefix_rm(arch, head_layer)
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, VOCAB_SIZE, (n,), generator=generator).tolist() for n in lengths]
    ids, mask = left_padded(rows)
    cached, reference = CachedScorer(rm, incremental=incremental), ReferenceScorer(rm)
    # Every test architecture has an incremental decoder; `incremental=False` takes the transformers forward.
    assert (cached.decoder is not None) == incremental
    # Small growth steps reallocate the buffer often; `mapped` puts even these tiny buffers in memory mappings, and
    # `reserved` (the number of candidates known up front) reserves mapped buffers for the model's whole length;
    # `block` is how far past the written positions attention reads (masked out).
    with (
        patch.object(hf_rgtg.incremental.buffer, "ATTEND_BLOCK", block),
        patch.object(hf_rgtg.incremental.buffer, "GROWTH", growth),
        patch.object(hf_rgtg.incremental.buffer, "MMAP_MIN_BYTES", 1 if mapped else 1 << 40),
    ):
        rewards = cached.reset(ids, mask, k if reserved else None)
        torch.testing.assert_close(rewards, reference.reset(ids, mask), atol=1e-4, rtol=0)
        for _ in range(steps):
            candidates = torch.randint(1, VOCAB_SIZE, (len(rows), k), generator=generator)
            torch.testing.assert_close(
                cached.score(candidates), reference.score(candidates), atol=1e-4, rtol=0
            )
            parents = torch.randint(0, len(rows), (len(rows),), generator=generator) if reorder else None
            chosen = torch.randint(0, k, (len(rows),), generator=generator)
            source = candidates if parents is None else candidates[parents]
            tokens = source.gather(1, chosen[:, None])[:, 0]
            off = (
                torch.rand(len(rows), generator=generator) < 0.2
            )  # sometimes a token that was not a candidate
            tokens = torch.where(off, torch.full_like(tokens, PAD), tokens)
            chosen = torch.where(off, torch.full_like(chosen, -1), chosen)
            cached.advance(tokens, parents, chosen)
            reference.advance(tokens, parents, chosen)
        final = torch.randint(1, VOCAB_SIZE, (len(rows), k), generator=generator)
        torch.testing.assert_close(cached.score(final), reference.score(final), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# The three ways in


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


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.ended = True


def test_opt_in_streams_and_honours_stop_strings(restore_generate, tokenizer):
    lm, rm = models("llama")  # its random weights do not just repeat one token here
    ids = tokenizer("Thank you so much", return_tensors="pt").input_ids
    common = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": PAD}
    settings = {"beta": 2.0, "top_k": 6}
    eos = lm.generation_config.eos_token_id

    def explicit(**kwargs):
        guidance = RewardGuidance(rm, eos_token_id=eos, pad_token_id=PAD, **settings)
        return lm.generate(ids, **common, **kwargs, **guidance.generate_kwargs())

    enable_reward_guided_generate()
    streamed = {}
    for way, run in {
        "explicit": lambda s: explicit(streamer=s),
        "opt-in": lambda s: lm.generate(ids, **common, streamer=s, reward_model=rm, **settings),
        "custom_generate": lambda s: lm.generate(
            ids,
            **common,
            streamer=s,
            guided_streamer=s,
            custom_generate=reward_guided_generate,
            reward_model=rm,
            **settings,
        ),
    }.items():
        streamer = RecordingStreamer()
        out = run(streamer)
        assert streamer.ended, way
        streamed[way] = (out, streamer.chunks)
    out, chunks = streamed["explicit"]
    assert chunks == [ids[0].tolist()] + [[t] for t in out[0, ids.shape[1] :].tolist()]
    assert all(streamed[way][1] == chunks for way in streamed)

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


# ---------------------------------------------------------------------------------------------------------------
# The rule and its options


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


# ---------------------------------------------------------------------------------------------------------------
# Stopping criteria, trace, reuse


def test_reward_threshold_stops_a_sequence():
    lm, rm = models("llama")
    ids, mask = left_padded()
    first, guidance = guided(lm, rm, ids, mask, max_new_tokens=8, do_sample=False)
    rewards = guidance.trace.rewards_of(first, ids.shape[1])
    threshold = max(rewards[0][2:]) if max(rewards[0][2:]) > max(rewards[0][:2]) else None
    if threshold is None:
        pytest.skip("row 0's rewards do not rise after step 2")
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=8, do_sample=False, reward_threshold=threshold)
    stop_step = next(i for i, r in enumerate(rewards[0]) if r >= threshold)
    assert out[0, ids.shape[1] + stop_step + 1 :].eq(PAD).all()
    assert len(guidance.trace.steps(out[0], ids.shape[1])) == stop_step + 1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_threshold_stops_beams(arch):
    # Beam search shows the stopping criteria its 2 * num_beams best continuations, not the next step's rows: a
    # continuation that reaches the threshold has to end there, and stay readable in the trace.
    lm, rm = models(arch)
    ids, mask = left_padded()
    kwargs = {"max_new_tokens": 8, "do_sample": False, "num_beams": 3}
    _, free = guided(lm, rm, ids, mask, **kwargs)
    threshold = sorted(free.trace.rewards[len(free.trace.prompts) :])[-len(free.trace.rewards) // 4]
    out, guidance = guided(lm, rm, ids, mask, reward_threshold=threshold, **kwargs)
    eos = lm.generation_config.eos_token_id
    stopped_early = 0
    for row in out:
        generated = row[ids.shape[1] :].tolist()
        rewards = guidance.trace.rewards_of(row[None], ids.shape[1])[0]
        assert rewards and all(r < threshold for r in rewards[:-1])
        if rewards[-1] >= threshold:  # it ends here: only padding follows
            assert set(generated[len(rewards) :]) <= {PAD, eos}
            stopped_early += len(rewards) < kwargs["max_new_tokens"]
        else:  # it ran to the end or produced EOS, and the trace covers every token
            assert len(rewards) == kwargs["max_new_tokens"] or generated[len(rewards) - 1] == eos
    assert stopped_early > 0


def test_budgets_stop_every_sequence():
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=10, do_sample=False, max_reward_calls=3)
    assert out.shape[1] == ids.shape[1] + 3 and guidance.state.reward_calls == 3
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=10, do_sample=False, max_time=1e-9)
    assert out.shape[1] == ids.shape[1] + 1


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


def test_results_are_read_from_the_output_object_of_return_dict_in_generate():
    lm, rm = models("llama")
    ids, mask = left_padded()
    tensor_out, guidance = guided(lm, rm, ids, mask, max_new_tokens=4, do_sample=False)
    rewards, final = guidance.trace.rewards_of(tensor_out, 6), guidance.sequence_rewards(tensor_out, 6, mask)
    dict_out, guidance = guided(
        lm, rm, ids, mask, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True
    )
    assert torch.equal(dict_out.sequences, tensor_out)
    assert guidance.trace.rewards_of(dict_out, 6) == rewards and all(len(r) == 4 for r in rewards)
    torch.testing.assert_close(guidance.sequence_rewards(dict_out, 6, mask), final)
    assert guidance.trace.rewards_of(tensor_out.tolist(), 6) == rewards
    with pytest.raises(TypeError, match=r"\(rows, length\).*shape \(10,\).*sequence\[None\]"):
        guidance.trace.rewards_of(tensor_out[0], 6)


def test_reward_model_in_another_dtype():
    lm, rm = models("llama")
    rm = rm.to(torch.bfloat16)
    ids, mask = left_padded()
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=5, do_sample=False)
    direct = rm(out, attention_mask=torch.cat([mask, torch.ones_like(out[:, ids.shape[1] :])], 1)).rewards
    for i, row in enumerate(out):
        rewards = torch.tensor(guidance.trace.rewards_of(row[None], ids.shape[1])[0])
        assert rewards.dtype == torch.float32
        torch.testing.assert_close(rewards, direct[i, ids.shape[1] :], atol=5e-2, rtol=0)


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


def test_processor_and_criteria_opt_out_of_continuous_batching():
    guidance = RewardGuidance(tiny_prefix_rm("gpt2"), top_k=2)
    assert guidance.logits_processor.supports_continuous_batching is False
    assert guidance.stopping_criteria and all(
        criterion.supports_continuous_batching is False for criterion in guidance.stopping_criteria
    )


# ---------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), -math.inf, "2"])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="`beta`.*finite number"):
        RewardGuidance(tiny_prefix_rm("gpt2"), beta=beta)


@pytest.mark.parametrize("top_k", [0, -3, VOCAB_SIZE + 1])
def test_bad_top_k(top_k):
    with pytest.raises(ValueError, match="`top_k`"):
        RewardGuidance(tiny_prefix_rm("gpt2"), top_k=top_k)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"reward_threshold": "0.5"}, "`reward_threshold`.*finite number"),
        ({"max_time": "3"}, "`max_time`.*finite number"),
        ({"max_time": 0}, "`max_time`.*positive"),
        ({"max_reward_calls": 2.5}, "`max_reward_calls`.*positive integer"),
        ({"standardize_rewards": "no"}, "`standardize_rewards`.*True or False"),
        ({"record_candidates": 1}, "`record_candidates`.*True or False"),
        ({"top_k": torch.tensor(2.5)}, "`top_k`.*positive integer"),
    ],
)
def test_bad_settings_are_named(setting, message):
    with pytest.raises(ValueError, match=message):
        RewardGuidance(tiny_prefix_rm("gpt2"), **setting)


def test_numpy_and_tensor_scalars_are_accepted_as_settings():
    import numpy as np

    config = RewardGuidanceConfig(beta=np.float32(2), top_k=np.int64(5), max_reward_calls=torch.tensor(3))
    assert (config.beta, config.top_k, config.max_reward_calls) == (2.0, 5, 3)
    assert type(config.beta) is float and type(config.top_k) is int and type(config.max_reward_calls) is int


def test_reward_model_with_another_vocabulary_is_rejected():
    lm, _ = models("llama")
    torch.manual_seed(0)
    rm = PrefixRewardModel(
        PrefixRewardConfig(text_config=tiny_config("llama", vocab_size=VOCAB_SIZE + 16))
    ).eval()
    ids, mask = left_padded()
    guidance = RewardGuidance(rm, top_k=3, pad_token_id=PAD)
    with pytest.raises(ValueError, match="Tokenizer bridging.*not supported yet"):
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


def test_reward_model_argument_checks(tmp_path):
    lm, rm = models("gpt2")
    with pytest.raises(ValueError, match="has to be a PrefixRewardModel.*got int"):
        RewardGuidance(42)
    with pytest.raises(
        ValueError, match="GPT2LMHeadModel, not a PrefixRewardModel.*AutoModelForPrefixReward"
    ):
        RewardGuidance(lm)
    rm.save_pretrained(tmp_path)
    loaded = RewardGuidance(str(tmp_path), top_k=2)
    assert isinstance(loaded.reward_model, PrefixRewardModel) and not loaded.reward_model.training
    for missing in (str(tmp_path / "nope"), tmp_path / "nope", "./my_rm"):
        with pytest.raises(
            ValueError, match="`reward_model` .* is not a folder.*save_pretrained.*'org/name'"
        ):
            RewardGuidance(missing)
    with pytest.raises(OSError, match="Could not load `reward_model` 'no-such-org/no-such-rm'"):
        RewardGuidance("no-such-org/no-such-rm")


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


@pytest.mark.parametrize("incremental", [True, False])
def test_cached_scorer_follows_a_change_of_k_between_steps(incremental):
    rm = shared_prefix_rm("llama")
    ids, mask = left_padded()
    cached, reference = CachedScorer(rm, incremental=incremental), ReferenceScorer(rm)
    torch.testing.assert_close(cached.reset(ids, mask), reference.reset(ids, mask), atol=1e-4, rtol=0)
    generator = torch.Generator().manual_seed(0)
    for k in (3, 5, 1, 4):
        candidates = torch.randint(1, VOCAB_SIZE, (len(ids), k), generator=generator)
        torch.testing.assert_close(cached.score(candidates), reference.score(candidates), atol=1e-4, rtol=0)
        chosen = torch.randint(0, k, (len(ids),), generator=generator)
        advance_all((cached, reference), candidates, chosen)
