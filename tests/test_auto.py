import logging
import os

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    ENCODER_ARCHITECTURES,
    VOCAB_SIZE,
    tiny_causal_lm,
    tiny_config,
    tiny_prefix_rm,
    tiny_sequence_classifier,
)
from safetensors.torch import load_file, save_file
from test_modeling import left_pad, right_pad
from transformers import BartConfig

from hf_rgtg import AutoModelForPrefixReward, PrefixRewardConfig, PrefixRewardModel


def test_hub_offline_for_the_whole_session():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saved_prefix_reward_model_from_hub_id(arch, hub_cache):
    model = tiny_prefix_rm(arch, head_bias=True)
    repo = hub_cache(model, f"org/prefix-rm-{arch}")
    loaded = AutoModelForPrefixReward.from_pretrained(repo).eval()
    assert isinstance(loaded, PrefixRewardModel)
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    ids = torch.randint(1, VOCAB_SIZE, (2, 7))
    torch.testing.assert_close(loaded(ids).rewards, model(ids).rewards, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_causal_lm_checkpoint_gives_backbone_and_untrained_head(arch, hub_cache, caplog):
    lm = tiny_causal_lm(arch, seed=1)
    repo = hub_cache(lm, f"org/causal-lm-{arch}")
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        rm = AutoModelForPrefixReward.from_pretrained(repo).eval()
    assert "newly initialised and untrained" in caplog.text
    assert rm.config.base_model_name_or_path == repo
    assert rm.config.text_config.model_type == arch
    expected = lm.base_model.state_dict()
    actual = rm.backbone.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    ids = torch.randint(1, VOCAB_SIZE, (1, 5))
    hidden = lm.base_model(ids).last_hidden_state
    torch.testing.assert_close(rm(ids).rewards, rm.score(hidden).squeeze(-1))


def test_the_load_report_of_a_new_head_is_left_out_and_real_problems_are_reported(tmp_path, transformers_log):
    lm = tiny_causal_lm("llama", seed=1)
    lm.save_pretrained(tmp_path / "lm")
    AutoModelForPrefixReward.from_pretrained(tmp_path / "lm")
    # transformers' report of the new head's weights is expected: only hf_rgtg's one line about the head remains.
    assert "LOAD REPORT" not in transformers_log.text and "MISSING" not in transformers_log.text
    assert [record.name for record in transformers_log.records] == ["hf_rgtg.auto.new_head"]
    assert "newly initialised and untrained" in transformers_log.text
    transformers_log.clear()

    # A checkpoint that lacks a backbone weight is a real problem: the report names it, with the head.
    weights = load_file(tmp_path / "lm" / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, tmp_path / "lm" / "model.safetensors", metadata={"format": "pt"})
    AutoModelForPrefixReward.from_pretrained(tmp_path / "lm")
    (report,) = [record for record in transformers_log.records if "LOAD REPORT" in record.getMessage()]
    assert report.name == "transformers.modeling_utils" and report.levelno == logging.WARNING
    assert (
        "backbone.layers.0.mlp.down_proj.weight" in report.getMessage()
        and "score.weight" in report.getMessage()
    )


def classifier_from_hub(arch, repo_id, hub_cache, caplog):
    """A tiny sequence classifier of `arch` and the prefix reward model loaded from it under `repo_id` in the hub
    cache, which says nothing of an untrained head."""
    classifier = tiny_sequence_classifier(arch, seed=2)
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        rm = AutoModelForPrefixReward.from_pretrained(hub_cache(classifier, repo_id)).eval()
    assert "untrained" not in caplog.text
    return classifier, rm


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sequence_classifier_reward_equals_original_logit(arch, hub_cache, caplog):
    classifier, rm = classifier_from_hub(arch, f"org/seq-cls-rm-{arch}", hub_cache, caplog)
    generator = torch.Generator().manual_seed(0)
    for length in (1, 4, 11):
        ids = torch.randint(1, VOCAB_SIZE, (3, length), generator=generator)
        expected = classifier(ids).logits[:, 0]
        out = rm(ids)
        torch.testing.assert_close(out.reward, expected, atol=1e-5, rtol=0)
        # Every prefix's reward is the classifier's logit on that prefix.
        prefix = classifier(ids[:, : (length + 1) // 2]).logits[:, 0]
        torch.testing.assert_close(out.rewards[:, (length + 1) // 2 - 1], prefix, atol=1e-5, rtol=0)
    # Right padding: the classifier finds the last non-pad token by pad id, the prefix RM by the mask.
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = (ids != 0).long()
    torch.testing.assert_close(
        rm(ids, attention_mask=mask).reward,
        classifier(ids, attention_mask=mask).logits[:, 0],
        atol=1e-5,
        rtol=0,
    )


def test_from_pretrained_keyword_arguments_pass_through(hub_cache, tmp_path):
    repo = hub_cache(tiny_causal_lm("llama"), "org/kwargs-lm")
    rm = AutoModelForPrefixReward.from_pretrained(
        repo,
        dtype=torch.bfloat16,
        attn_implementation="eager",
        device_map="cpu",
        revision="main",
        token=False,
    )
    assert all(p.dtype == torch.bfloat16 for p in rm.parameters())
    assert rm.config.text_config._attn_implementation == "eager"
    assert next(rm.parameters()).device.type == "cpu"
    rm = AutoModelForPrefixReward.from_pretrained(repo, torch_dtype=torch.float16, head_layer=1)
    assert next(rm.parameters()).dtype == torch.float16
    assert rm.config.head_layer == 1
    # An explicit `cache_dir` is honoured: the repo is not in an empty one, and offline mode says so.
    with pytest.raises(OSError):
        AutoModelForPrefixReward.from_pretrained(repo, cache_dir=tmp_path / "empty-cache")


def test_local_directory_and_from_config(tmp_path):
    tiny_causal_lm("qwen2").save_pretrained(tmp_path)
    assert isinstance(AutoModelForPrefixReward.from_pretrained(tmp_path), PrefixRewardModel)
    model = AutoModelForPrefixReward.from_config(tiny_config("gpt2"), head_hidden_size=8)
    assert isinstance(model, PrefixRewardModel) and model.config.head_hidden_size == 8
    config = PrefixRewardConfig(text_config=tiny_config("llama"))
    assert AutoModelForPrefixReward.from_config(config).config is not None
    with pytest.raises(OSError, match="from_pretrained"):
        AutoModelForPrefixReward()


def test_sequence_classifier_with_several_labels_is_rejected(hub_cache):
    repo = hub_cache(tiny_sequence_classifier("llama", num_labels=3), "org/three-labels")
    with pytest.raises(ValueError, match="num_labels=3.*exactly one output"):
        AutoModelForPrefixReward.from_pretrained(repo)


@pytest.mark.parametrize(
    "config",
    [
        tiny_config("t5"),
        BartConfig(
            vocab_size=VOCAB_SIZE,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
        ),
    ],
    ids=["t5", "bart"],
)
def test_encoder_decoder_checkpoint_is_rejected(config, tmp_path):
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="encoder-decoder.*decoder-only backbone"):
        AutoModelForPrefixReward.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="encoder-decoder"):
        AutoModelForPrefixReward.from_config(config)


ENCODER_ROWS = [[2, 17, 33, 5, 81, 9, 120], [2, 40, 41], [2, 7, 300, 301, 12]]


@pytest.mark.parametrize("arch", ENCODER_ARCHITECTURES)
def test_an_encoder_classifier_s_reward_is_its_own_pooled_logit(arch, hub_cache, caplog):
    classifier, rm = classifier_from_hub(arch, f"org/encoder-cls-{arch}", hub_cache, caplog)
    assert rm.config.head_type == "classifier" and not rm.supports_incremental_scoring
    ids, mask = right_pad(ENCODER_ROWS)
    left_ids, left_mask = left_pad(ENCODER_ROWS)
    with torch.no_grad():
        expected = classifier(ids, attention_mask=mask).logits[:, 0]
        right = rm(ids, attention_mask=mask)
        left = rm(left_ids, attention_mask=left_mask)
        alone = [rm(torch.tensor([row])).reward for row in ENCODER_ROWS]
    torch.testing.assert_close(right.reward, expected, atol=1e-5, rtol=0)
    # The classifier pools the first token and numbers positions from the first column: left padding is moved to
    # the right before the forward, and a row scores the same alone.
    torch.testing.assert_close(left.reward, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(alone), expected, atol=1e-5, rtol=0)
    # Per-position values of an encoder are no prefix rewards: there are none to misread.
    assert right.rewards is None and right.to_tuple()[0] is right.reward


@pytest.mark.parametrize("arch", ENCODER_ARCHITECTURES)
def test_an_encoder_classifier_round_trips_as_a_prefix_reward_model(arch, hub_cache, tmp_path):
    classifier = tiny_sequence_classifier(arch, seed=3)
    classifier.save_pretrained(tmp_path / "classifier")
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path / "classifier").eval()
    rm.save_pretrained(tmp_path / "rm")
    assert all(key.startswith("backbone.") for key in load_file(tmp_path / "rm" / "model.safetensors"))
    for source in (tmp_path / "rm", hub_cache(rm, f"org/encoder-prefix-rm-{arch}")):
        loaded = AutoModelForPrefixReward.from_pretrained(source).eval()
        assert loaded.config.head_type == "classifier"
        expected, actual = rm.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
        ids, mask = right_pad(ENCODER_ROWS)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(ids, attention_mask=mask).reward,
                classifier(ids, attention_mask=mask).logits[:, 0],
                atol=1e-5,
                rtol=0,
            )


def test_an_encoder_classifier_s_head_settings_cannot_be_changed(tmp_path):
    tiny_sequence_classifier("bert").save_pretrained(tmp_path / "classifier")
    with pytest.raises(ValueError, match="`head_layer` only apply to `head_type='per_position'`"):
        AutoModelForPrefixReward.from_pretrained(tmp_path / "classifier", head_layer=1)
    tiny_sequence_classifier("roberta", num_labels=2).save_pretrained(tmp_path / "two-labels")
    with pytest.raises(ValueError, match="num_labels=2; a reward model has exactly one output"):
        AutoModelForPrefixReward.from_pretrained(tmp_path / "two-labels")


def test_an_encoder_base_model_gets_a_new_per_position_head(tmp_path, caplog):
    tiny_sequence_classifier("bert").base_model.save_pretrained(tmp_path / "encoder")
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        model = AutoModelForPrefixReward.from_pretrained(tmp_path / "encoder")
    assert "untrained" in caplog.text
    assert model.config.head_type == "per_position" and not model.supports_incremental_scoring
    assert AutoModelForPrefixReward.from_config(tiny_config("bert")).config.head_type == "per_position"
    classifier_config = tiny_config(
        "deberta-v2", num_labels=1, architectures=["DebertaV2ForSequenceClassification"]
    )
    assert AutoModelForPrefixReward.from_config(classifier_config).config.head_type == "classifier"


@pytest.mark.parametrize("source", ["causal_lm", "base_model", "sequence_classifier"])
def test_converted_checkpoints_save_as_prefix_reward_models(source, tmp_path):
    arch = "llama"
    model = {
        "causal_lm": lambda: tiny_causal_lm(arch),
        "base_model": lambda: tiny_causal_lm(arch).base_model,
        "sequence_classifier": lambda: tiny_sequence_classifier(arch),
    }[source]()
    model.save_pretrained(tmp_path / "source")
    converted = AutoModelForPrefixReward.from_pretrained(tmp_path / "source")
    converted.save_pretrained(tmp_path / "converted")
    reloaded, info = PrefixRewardModel.from_pretrained(tmp_path / "converted", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    expected, actual = converted.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_head_settings_of_a_saved_prefix_reward_model_cannot_change_on_loading(tmp_path):
    tiny_prefix_rm("gpt2", head_layer=1).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"already a prefix reward model; its head \(head_layer=1.*\['head_layer'\]"
    ):
        AutoModelForPrefixReward.from_pretrained(tmp_path, head_layer=2)


def test_an_explicit_prefix_reward_config_wraps_a_causal_lm_checkpoint(tmp_path):
    lm = tiny_causal_lm("llama", seed=1)
    lm.save_pretrained(tmp_path)
    config = PrefixRewardConfig(text_config=lm.config, head_layer=1)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path, config=config)
    assert rm.config.head_layer == 1
    expected, actual = lm.base_model.state_dict(), rm.backbone.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    with pytest.raises(ValueError, match="text_config` is a GPT2Config.*LlamaConfig checkpoint"):
        AutoModelForPrefixReward.from_pretrained(
            tmp_path, config=PrefixRewardConfig(text_config=tiny_config("gpt2"))
        )


def test_a_backbone_config_given_with_head_settings_wraps_a_causal_lm_checkpoint(tmp_path):
    lm = tiny_causal_lm("llama", seed=1)
    lm.save_pretrained(tmp_path)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path, config=lm.config, head_layer=1)
    assert rm.config.head_layer == 1 and rm.config.base_model_name_or_path == str(tmp_path)
    assert type(rm.config.text_config) is type(lm.config)
    with pytest.raises(ValueError, match=r"Set \['head_layer'\] on the `config` you pass"):
        AutoModelForPrefixReward.from_pretrained(
            tmp_path, config=PrefixRewardConfig(text_config=lm.config), head_layer=1
        )


def test_custom_code_backbones_are_refused_by_name():
    from transformers import PreTrainedConfig

    from hf_rgtg.auto import _check_backbone_config

    with pytest.raises(ValueError, match="custom code, `auto_map`, are not supported"):
        _check_backbone_config(PreTrainedConfig(auto_map={"AutoModel": "modeling.Custom"}), "org/custom")
