"""The incremental decoder and its key/value buffer: built on any backbone to a depth, against the transformers
forward, and the buffer's memory policy (mapped, reserved, grown, read in blocks)."""

import math
from unittest.mock import patch

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    VOCAB_SIZE,
    advance_all,
    left_padded,
    shared_prefix_rm,
    tiny_causal_lm,
    tiny_prefix_rm,
)

import hf_rgtg.incremental.buffer
from hf_rgtg import CachedScorer, ReferenceScorer
from hf_rgtg.incremental import Depth, IncrementalDecoder, KVBuffer

# ---------------------------------------------------------------------------------------------------------------
# The decoder


def test_incremental_decoder_covers_the_test_architectures_and_not_encoders():
    for arch in ARCHITECTURES:
        rm = tiny_prefix_rm(arch)
        assert IncrementalDecoder.for_backbone(rm.backbone, rm.head_depth) is not None
    # A head on the embeddings has no layer to run.
    rm = tiny_prefix_rm("llama", head_layer=0)
    assert IncrementalDecoder.for_backbone(rm.backbone, rm.head_depth) is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_decoder_on_a_causal_lms_own_backbone_gives_its_hidden_states_at_every_depth(arch):
    lm = tiny_causal_lm(arch, seed=6)
    backbone = lm.base_model
    rows, width, prompt = 2, 6, 4
    ids = torch.randint(1, VOCAB_SIZE, (rows, width), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(width).expand(rows, -1)
    with torch.no_grad():
        expected = backbone(ids, output_hidden_states=True).hidden_states
    total = len(expected) - 1
    assert IncrementalDecoder.for_backbone(backbone, Depth(0)) is None
    causal = torch.ones(prompt, prompt, dtype=torch.bool).tril().expand(rows, 1, prompt, prompt)
    for layers in range(1, total + 1):
        # `hidden_states[total]` is the final norm's output; every earlier one is a layer's raw output.
        decoder = IncrementalDecoder.for_backbone(backbone, Depth(layers, final_norm=layers == total))
        like = torch.empty(0, dtype=lm.dtype)
        buffer = KVBuffer.empty(decoder.num_layers, rows, *decoder.kv_shape, prompt, like)
        pieces = [decoder(ids[:, :prompt], positions[:, :prompt], causal, buffer)]
        buffer.commit(prompt)
        for t in range(prompt, width):  # the rest one token at a time, on top of the buffer
            everything = torch.ones(rows, 1, 1, t + 1, dtype=torch.bool)
            pieces.append(decoder(ids[:, t : t + 1], positions[:, t : t + 1], everything, buffer))
            buffer.commit(1)
        torch.testing.assert_close(torch.cat(pieces, dim=1), expected[layers], atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth", [Depth(3), Depth(-1), Depth(1, final_norm=True)])
def test_a_depth_the_backbone_does_not_have_is_refused(depth):
    backbone = tiny_causal_lm("llama").base_model
    with pytest.raises(ValueError, match="does not fit a backbone of 2 layers"):
        IncrementalDecoder.for_backbone(backbone, depth)


def test_incremental_decoder_follows_the_backbones_own_mlp_for_other_activations():
    rm = tiny_prefix_rm("gpt2", seed=3)
    rm.config.text_config.activation_function = "relu"
    for block in rm.backbone.h:
        block.mlp.act = torch.nn.ReLU()
    cached = CachedScorer(rm)
    assert cached.decoder is not None and not cached.decoder.tanh_gelu
    assert_first_step_matches_reference(cached)


def assert_first_step_matches_reference(cached: CachedScorer) -> None:
    """The prompts' rewards and one step of candidates agree with a re-encoding of every prefix."""
    reference = ReferenceScorer(cached.reward_model)
    ids, mask = left_padded()
    torch.testing.assert_close(cached.reset(ids, mask), reference.reset(ids, mask), atol=1e-4, rtol=0)
    candidates = torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11]])
    torch.testing.assert_close(cached.score(candidates), reference.score(candidates), atol=1e-4, rtol=0)


class _Adapter(torch.nn.Module):
    """Stands in for an adapter wrapped around a projection: the base output plus a learned offset."""

    def __init__(self, base: torch.nn.Module, width: int):
        super().__init__()
        self.base = base
        self.offset = torch.nn.Parameter(torch.full((width,), 0.5))

    def forward(self, x):
        return self.base(x) + self.offset


def test_gpt2_blocks_with_replaced_modules_take_the_transformers_forward():
    rm = tiny_prefix_rm("gpt2", seed=4)
    block = rm.backbone.h[1]
    block.mlp.c_fc = _Adapter(block.mlp.c_fc, block.mlp.c_fc.nf)
    cached = CachedScorer(rm)
    # The decoder reads the Conv1D weights directly, so it would miss the adapter: it declines such a backbone.
    assert cached.decoder is None
    assert_first_step_matches_reference(cached)


# ---------------------------------------------------------------------------------------------------------------
# The buffer's memory policy


def test_mapped_buffer_is_reserved_once_for_the_whole_length_when_k_is_known():
    rm = shared_prefix_rm("gpt2")
    ids, mask = left_padded()
    width, longest = ids.shape[1], int(mask.sum(-1).max())
    with patch.object(hf_rgtg.incremental.buffer, "MMAP_MIN_BYTES", 1):
        reserved, growing = CachedScorer(rm), CachedScorer(rm)
        reserved.reset(ids, mask, max_candidates=3)
        growing.reset(ids, mask)
        first = list(reserved.buffer.layers)
        # The longest row can reach the model's last position, the candidates need room after it.
        assert reserved.buffer.capacity == width - longest + rm.max_positions - 1 + 3
        assert growing.buffer.capacity < reserved.buffer.capacity
        generator = torch.Generator().manual_seed(1)
        for _ in range(40):
            candidates = torch.randint(1, VOCAB_SIZE, (len(ids), 3), generator=generator)
            torch.testing.assert_close(
                reserved.score(candidates), growing.score(candidates), atol=1e-5, rtol=0
            )
            chosen = torch.randint(0, 3, (len(ids),), generator=generator)
            advance_all((reserved, growing), candidates, chosen)
        assert all(a is b for a, b in zip(reserved.buffer.layers, first, strict=True))  # never reallocated
    # Past `RESERVE_MAX_BYTES` of address space, the buffer grows step by step instead.
    with (
        patch.object(hf_rgtg.incremental.buffer, "MMAP_MIN_BYTES", 1),
        patch.object(hf_rgtg.incremental.buffer, "RESERVE_MAX_BYTES", 1024),
    ):
        small = CachedScorer(rm)
        small.reset(ids, mask, max_candidates=3)
        assert small.buffer.capacity == hf_rgtg.incremental.buffer.grown_capacity(width)


def test_attention_reads_whole_blocks_of_zeros_past_the_written_positions():
    rm = shared_prefix_rm("llama")
    ids, mask = left_padded()
    with patch.object(hf_rgtg.incremental.buffer, "MMAP_MIN_BYTES", 1):
        cached = CachedScorer(rm)
        cached.reset(ids, mask, max_candidates=3)
        buffer = cached.buffer
        seen = []
        original = buffer.write

        def spy(layer, keys, values):
            views = original(layer, keys, values)
            seen.append((buffer.length + keys.shape[2], views))
            return views

        buffer.write = spy
        cached.score(torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11]]))
    block = hf_rgtg.incremental.buffer.ATTEND_BLOCK
    for end, (keys, values) in seen:
        assert keys.shape[2] == values.shape[2] == -(-end // block) * block
        # What lies past the new tokens was written as zeros, not left to whatever the memory held.
        assert not keys[:, :, end:].any() and not values[:, :, end:].any()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_buffer_memory_never_written_is_never_read(arch):
    """Fresh buffers full of NaN (as uninitialised memory may be): rewards still match the reference."""
    original = hf_rgtg.incremental.buffer._empty

    def poisoned(shape, like):
        return original(shape, like).fill_(math.nan)

    with patch.object(hf_rgtg.incremental.buffer, "_empty", poisoned):
        cached = CachedScorer(shared_prefix_rm(arch))
        reference = ReferenceScorer(cached.reward_model)
        ids, mask = left_padded()
        torch.testing.assert_close(cached.reset(ids, mask, 3), reference.reset(ids, mask), atol=1e-4, rtol=0)
        generator = torch.Generator().manual_seed(2)
        for step in range(70):  # past a growth step and a new attention block
            candidates = torch.randint(1, VOCAB_SIZE, (len(ids), 3), generator=generator)
            rewards = cached.score(candidates)
            if step % 10 == 0:
                torch.testing.assert_close(rewards, reference.score(candidates), atol=1e-4, rtol=0)
            assert torch.isfinite(rewards).all()
            chosen = torch.randint(0, 3, (len(ids),), generator=generator)
            parents = torch.tensor([1, 0, 2]) if step % 7 == 3 else None  # beam-style reorders too
            advance_all((cached, reference), candidates, chosen, parents)


def test_a_refused_reservation_falls_back_to_growing_the_buffer():
    rm = shared_prefix_rm("gpt2")
    ids, mask = left_padded()
    real_mmap = hf_rgtg.incremental.buffer.mmap.mmap
    heads, dim = IncrementalDecoder.for_backbone(rm.backbone, rm.head_depth).kv_shape
    width, longest = ids.shape[1], int(mask.sum(-1).max())
    reservation = 2 * len(ids) * heads * dim * 4 * (width - longest + rm.max_positions - 1 + 3)

    def strict_overcommit(fileno, length, *args, **kwargs):
        if length >= reservation:  # the system refuses the whole-length reservation, not a growth step
            raise OSError(12, "Cannot allocate memory")
        return real_mmap(fileno, length, *args, **kwargs)

    with (
        patch.object(hf_rgtg.incremental.buffer, "MMAP_MIN_BYTES", 1),
        patch.object(hf_rgtg.incremental.buffer.mmap, "mmap", strict_overcommit),
    ):
        cached = CachedScorer(rm)
        reference = ReferenceScorer(rm)
        torch.testing.assert_close(cached.reset(ids, mask, 3), reference.reset(ids, mask), atol=1e-4, rtol=0)
        assert cached.buffer.capacity == hf_rgtg.incremental.buffer.grown_capacity(ids.shape[1])
        candidates = torch.tensor([[3, 4, 5], [6, 7, 8], [9, 10, 11]])
        torch.testing.assert_close(cached.score(candidates), reference.score(candidates), atol=1e-4, rtol=0)
