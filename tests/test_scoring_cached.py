"""The cached scorer against the reference scorer: rewards within 1e-4 and identical outputs, for GPT-2, Llama and
Qwen2, with left padding, EOS mid-batch, sampling and beam search."""

from unittest.mock import patch

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    PAD,
    VOCAB_SIZE,
    advance_all,
    eos_mid_batch,
    guided,
    left_padded,
    models,
    shared_prefix_rm,
    tiny_config,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_rgtg.incremental.buffer
from hf_rgtg import (
    CachedScorer,
    PrefixRewardConfig,
    PrefixRewardModel,
    ReferenceScorer,
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
