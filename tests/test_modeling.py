import pytest
import torch
from conftest import (
    ARCHITECTURES,
    ENCODER_ARCHITECTURES,
    MAX_POSITIONS,
    VOCAB_SIZE,
    tiny_config,
    tiny_prefix_rm,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache, T5Config

from hf_rgtg import PrefixRewardConfig, PrefixRewardModel


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def right_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def random_rows(generator: torch.Generator, lengths: list[int]) -> list[list[int]]:
    return [torch.randint(1, VOCAB_SIZE, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rewards_shapes_and_last_token_reward(arch):
    model = tiny_prefix_rm(arch)
    ids = torch.randint(1, VOCAB_SIZE, (3, 9))
    out = model(ids)
    assert out.rewards.shape == (3, 9)
    assert out.reward.shape == (3,)
    assert out.rewards.dtype == torch.float32
    torch.testing.assert_close(out.reward, out.rewards[:, -1])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_incremental_matches_full_forward_with_left_padding(arch):
    model = tiny_prefix_rm(arch)
    rows = random_rows(torch.Generator().manual_seed(1), [12, 7, 10])
    ids, mask = left_pad(rows)
    full = model(ids, attention_mask=mask).rewards

    # Prompt of 5 columns, then one token at a time, then a chunk of 3 on top of the cache.
    prompt_len = 5
    out = model(ids[:, :prompt_len], attention_mask=mask[:, :prompt_len], use_cache=True)
    pieces, cache, t = [out.rewards], out.cache, prompt_len
    while t < ids.shape[1]:
        step = 1 if t < ids.shape[1] - 3 else 3
        out = model(ids[:, t : t + step], attention_mask=mask[:, : t + step], cache=cache, use_cache=True)
        pieces.append(out.rewards)
        cache, t = out.cache, t + step
    incremental = torch.cat(pieces, dim=1)
    real = mask.bool()
    torch.testing.assert_close(incremental[real], full[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reward_is_padding_side_independent(arch):
    model = tiny_prefix_rm(arch)
    rows = random_rows(torch.Generator().manual_seed(2), [4, 9, 6])
    alone = torch.stack([model(torch.tensor([r])).reward[0] for r in rows])
    for pad in (left_pad, right_pad):
        ids, mask = pad(rows)
        torch.testing.assert_close(model(ids, attention_mask=mask).reward, alone, atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=4),
    split=st.integers(min_value=1, max_value=9),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_property_padded_incremental_prefix_rewards_match_unpadded(lengths, split, seed):
    model = _llama_rm()
    rows = random_rows(torch.Generator().manual_seed(seed), lengths)
    ids, mask = left_pad(rows)
    split = min(split, ids.shape[1] - 1) if ids.shape[1] > 1 else 1
    first = model(ids[:, :split], attention_mask=mask[:, :split], use_cache=True)
    rest = (
        model(ids[:, split:], attention_mask=mask, cache=first.cache).rewards
        if split < ids.shape[1]
        else first.rewards[:, :0]
    )
    rewards = torch.cat([first.rewards, rest], dim=1)
    for i, row in enumerate(rows):
        expected = model(torch.tensor([row])).rewards[0]
        torch.testing.assert_close(rewards[i, -len(row) :], expected, atol=1e-5, rtol=0)


_LLAMA_RM = []


def _llama_rm():
    if not _LLAMA_RM:
        _LLAMA_RM.append(tiny_prefix_rm("llama", seed=3))
    return _LLAMA_RM[0]


def _settings(config: dict) -> dict:
    return {
        key: _settings(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in ("dtype", "_name_or_path")
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_load_round_trip_bit_for_bit(arch, tmp_path):
    model = tiny_prefix_rm(arch, head_bias=True)
    model.save_pretrained(tmp_path / "first")
    loaded = PrefixRewardModel.from_pretrained(tmp_path / "first").eval()
    loaded.save_pretrained(tmp_path / "second")
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (
        tmp_path / "second" / "model.safetensors"
    ).read_bytes()
    # Loading records the dtype and the source path; every other setting survives unchanged.
    assert _settings(loaded.config.to_dict()) == _settings(model.config.to_dict())
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key
    ids = torch.randint(1, VOCAB_SIZE, (2, 6))
    torch.testing.assert_close(model(ids).rewards, loaded(ids).rewards, atol=1e-6, rtol=0)


@pytest.mark.parametrize("head_layer", [1, -2])
def test_head_on_intermediate_layer_and_mlp_head(head_layer, tmp_path):
    model = tiny_prefix_rm("llama", head_layer=head_layer, head_hidden_size=16)
    ids = torch.randint(1, VOCAB_SIZE, (2, 6))
    full = model(ids)
    out = model(ids[:, :4], use_cache=True)
    step = model(ids[:, 4:], cache=out.cache)
    torch.testing.assert_close(step.rewards, full.rewards[:, 4:], atol=1e-5, rtol=0)
    # The intermediate layer really is the one read: it differs from the final output.
    hidden = model.backbone(ids, output_hidden_states=True)
    expected = model.score(hidden.hidden_states[head_layer]).squeeze(-1)
    torch.testing.assert_close(full.rewards, expected)
    model.save_pretrained(tmp_path)
    assert PrefixRewardModel.from_pretrained(tmp_path).config.head_layer == head_layer


def test_attention_mask_of_wrong_shape_is_rejected():
    model = tiny_prefix_rm("llama")
    ids = torch.randint(1, VOCAB_SIZE, (2, 5))
    with pytest.raises(ValueError, match=r"`attention_mask` has shape \(2, 4\).*must have shape \(2, 5\)"):
        model(ids, attention_mask=torch.ones(2, 4, dtype=torch.long))
    cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match=r"5 cached tokens.*\(2, 6\)"):
        model(ids[:, :1], attention_mask=torch.ones(2, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="2D"):
        model(ids, attention_mask=torch.ones(2, 1, 5, dtype=torch.long))


def test_inputs_of_the_wrong_rank_empty_inputs_and_labels_are_rejected():
    model = tiny_prefix_rm("gpt2")
    with pytest.raises(ValueError, match=r"`input_ids` has shape \(5,\).*`input_ids\[None\]`"):
        model(torch.arange(1, 6))
    for shape in ((1, 0), (0, 5)):
        with pytest.raises(ValueError, match="no token to score"):
            model(torch.zeros(shape, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`inputs_embeds` has shape \(5, 64\)"):
        model(inputs_embeds=torch.zeros(5, 64))
    with pytest.raises(ValueError, match="no loss from `labels`.*PrefixRewardTrainer"):
        model(torch.arange(1, 6)[None], labels=torch.tensor([1.0]))


def test_return_dict_false_gives_a_tuple_and_internal_callers_do_not_depend_on_it():
    model = tiny_prefix_rm("llama")
    ids = torch.randint(1, VOCAB_SIZE, (2, 5))
    out = model(ids)
    rewards, reward = model(ids, return_dict=False)[:2]
    torch.testing.assert_close(rewards, out.rewards)
    torch.testing.assert_close(reward, out.reward)
    model.config.return_dict = False
    assert isinstance(model(ids), tuple)
    from hf_rgtg import RewardGuidance, score_sequences

    torch.testing.assert_close(score_sequences(model, ids, 2), out.reward)
    guidance = RewardGuidance(model, top_k=3, scorer="reference", pad_token_id=0)
    assert guidance.scorer.reset(ids, torch.ones_like(ids), 3).shape == (2,)


def test_vocab_size_is_the_backbone_s_and_follows_resize_token_embeddings():
    model = tiny_prefix_rm("llama")
    assert model.vocab_size == VOCAB_SIZE == model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(VOCAB_SIZE + 8, mean_resizing=False)
    assert model.vocab_size == model.config.text_config.vocab_size == VOCAB_SIZE + 8
    assert model.get_input_embeddings().num_embeddings == VOCAB_SIZE + 8


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sequence_longer_than_max_positions_is_rejected(arch):
    model = tiny_prefix_rm(arch)
    with pytest.raises(
        ValueError, match=rf"reaches position {MAX_POSITIONS + 1}.*at most {MAX_POSITIONS} positions"
    ):
        model(torch.randint(1, VOCAB_SIZE, (1, MAX_POSITIONS + 1)))
    # Left padding does not count: positions only advance on real tokens.
    ids = torch.randint(1, VOCAB_SIZE, (1, MAX_POSITIONS + 4))
    mask = torch.ones_like(ids)
    mask[:, :4] = 0
    assert model(ids, attention_mask=mask).rewards.shape == (1, MAX_POSITIONS + 4)
    # The limit also holds for tokens fed on top of a cache.
    cache = DynamicCache(config=model.config.text_config)
    model(torch.randint(1, VOCAB_SIZE, (1, MAX_POSITIONS)), cache=cache, use_cache=True)
    with pytest.raises(ValueError, match="Truncate the prompt or generate fewer tokens"):
        model(torch.randint(1, VOCAB_SIZE, (1, 1)), cache=cache)


def test_encoder_backbone_is_allowed_but_not_incremental():
    model = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("bert"))).eval()
    assert not model.supports_incremental_scoring
    assert tiny_prefix_rm("gpt2").supports_incremental_scoring
    ids, mask = right_pad(random_rows(torch.Generator().manual_seed(4), [5, 3]))
    out = model(ids, attention_mask=mask)
    assert out.reward.shape == (2,)
    with pytest.raises(ValueError, match="not a causal decoder and cannot be scored incrementally"):
        model(ids, cache=DynamicCache())


def test_encoder_decoder_backbone_is_rejected():
    with pytest.raises(ValueError, match="encoder-decoder.*t5"):
        PrefixRewardConfig(text_config=T5Config(d_model=64, num_layers=1, num_heads=2, d_ff=64, d_kv=32))


def test_config_checks_head_settings():
    with pytest.raises(ValueError, match="`head_layer` \\(=5\\) is out of range"):
        PrefixRewardConfig(text_config=tiny_config("llama"), head_layer=5)
    with pytest.raises(ValueError, match="`head_hidden_size`"):
        PrefixRewardConfig(text_config=tiny_config("llama"), head_hidden_size=0)
    with pytest.raises(
        ValueError, match="`head_type` \\(='pooled'\\) has to be one of per_position, classifier"
    ):
        PrefixRewardConfig(text_config=tiny_config("bert"), head_type="pooled")
    with pytest.raises(ValueError, match="is for encoder backbones, but llama is a causal decoder"):
        PrefixRewardConfig(text_config=tiny_config("llama", num_labels=1), head_type="classifier")
    with pytest.raises(ValueError, match="`text_config.num_labels` is 2: set `num_labels=1`"):
        PrefixRewardConfig(text_config=tiny_config("bert"), head_type="classifier")
    with pytest.raises(
        ValueError, match="`head_hidden_size`, `head_bias` only apply to `head_type='per_position'`"
    ):
        PrefixRewardConfig(
            text_config=tiny_config("bert", num_labels=1),
            head_type="classifier",
            head_hidden_size=8,
            head_bias=True,
        )
    classifier = PrefixRewardModel(
        PrefixRewardConfig(text_config=tiny_config("deberta-v2", num_labels=1), head_type="classifier")
    )
    assert classifier.head_module_names == ["backbone.pooler", "backbone.classifier"]
    with pytest.raises(ValueError, match="reads its backbone's own pooled classifier output"):
        _ = classifier.head_depth


@pytest.mark.parametrize("arch", ENCODER_ARCHITECTURES)
def test_an_encoder_s_head_reads_each_whole_sequence_at_its_last_token(arch):
    torch.manual_seed(0)
    model = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config(arch, pad_token_id=0))).eval()
    rows = random_rows(torch.Generator().manual_seed(7), [6, 2, 4])
    ids, mask = right_pad(rows)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
        alone = torch.cat([model(torch.tensor([row])).reward for row in rows])
        hidden = model.backbone(ids, attention_mask=mask).last_hidden_state
        left = model(*left_pad(rows))
    last = hidden[torch.arange(3), mask.sum(-1) - 1]
    torch.testing.assert_close(out.reward, model.score(last).squeeze(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.reward, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left.reward, alone, atol=1e-5, rtol=0)
    # Each position sees the tokens after it, so no per-position value is a prefix reward: none is given.
    assert out.rewards is None and len(out.hidden_states) == 3


def test_roberta_s_positions_start_after_its_padding_index():
    for head_type, labels in (("per_position", {}), ("classifier", {"num_labels": 1})):
        config = PrefixRewardConfig(
            text_config=tiny_config("roberta", pad_token_id=1, **labels), head_type=head_type
        )
        model = PrefixRewardModel(config).eval()
        assert model.max_positions == MAX_POSITIONS - 2
        model(torch.randint(3, VOCAB_SIZE, (1, MAX_POSITIONS - 2)))
        with pytest.raises(
            ValueError, match=f"reaches position {MAX_POSITIONS - 1}, .* at most {MAX_POSITIONS - 2}"
        ):
            model(torch.randint(3, VOCAB_SIZE, (1, MAX_POSITIONS - 1)))
    assert (
        PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("bert"))).max_positions == MAX_POSITIONS
    )


def test_left_padding_of_an_encoder_moves_every_per_token_input_along():
    model = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("bert", pad_token_id=0))).eval()
    rows = random_rows(torch.Generator().manual_seed(8), [5, 3])
    ids, mask = left_pad(rows)
    token_types = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]])
    right_types = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]])
    with torch.no_grad():
        left = model(ids, attention_mask=mask, token_type_ids=token_types).reward
        right = model(*right_pad(rows), token_type_ids=right_types).reward
        positions = model(ids, attention_mask=mask, position_ids=torch.arange(5)[None]).reward
        counted = model(
            *right_pad(rows), position_ids=torch.tensor([[0, 1, 2, 3, 4], [2, 3, 4, 0, 1]])
        ).reward
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(positions, counted, atol=1e-5, rtol=0)


def test_config_round_trips_through_json(tmp_path):
    config = PrefixRewardConfig(
        text_config=tiny_config("qwen2"), head_layer=1, base_model_name_or_path="org/lm"
    )
    config.save_pretrained(tmp_path)
    loaded = PrefixRewardConfig.from_pretrained(tmp_path)
    assert loaded.text_config.model_type == "qwen2"
    assert loaded.text_config.hidden_size == 64
    assert (loaded.head_layer, loaded.base_model_name_or_path) == (1, "org/lm")
