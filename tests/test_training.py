import csv
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB_SIZE, build_tokenizer, tiny_prefix_rm, tiny_sequence_classifier

from hf_rgtg import AutoModelForPrefixReward
from hf_rgtg.data import PrefixRewardCollator, load_preference_data
from hf_rgtg.evaluation import evaluate_prefix_accuracy
from hf_rgtg.training import (
    PrefixRewardTrainer,
    PrefixRewardTrainingConfig,
    prefix_bradley_terry_loss,
)

EOS = 0
PAD = 0


def random_pairs(n, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        return torch.randint(
            1, VOCAB_SIZE, (int(torch.randint(low, high, (1,), generator=g)),), generator=g
        ).tolist()

    return [{"prompt_ids": ids(2, 6), "chosen_ids": ids(1, 9), "rejected_ids": ids(1, 9)} for _ in range(n)]


def enumerated_loss(model, pairs, margin=0.0, min_prefix_length=1):
    """The paper's recipe: every prefix pair is its own example, each scored by its own forward."""
    losses = []
    for pair in pairs:
        length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
        chosen = pair["chosen_ids"] + [EOS] * (length - len(pair["chosen_ids"]))
        rejected = pair["rejected_ids"] + [EOS] * (length - len(pair["rejected_ids"]))
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


def separable_pairs(n, seed=0):
    """Chosen responses are made of low token ids, rejected ones of high ids: learnable from the first token on."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(1, VOCAB_SIZE, (3,), generator=g).tolist()
        chosen = torch.randint(1, 40, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        rejected = torch.randint(
            300, VOCAB_SIZE, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g
        ).tolist()
        pairs.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return pairs


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


def test_prefix_accuracy_is_measured_without_dropout_and_keeps_the_mode():
    model = tiny_prefix_rm("gpt2", seed=3)
    model.backbone.config.attn_pdrop = model.backbone.config.resid_pdrop = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.train()
    pairs = separable_pairs(8)
    first = evaluate_prefix_accuracy(model, pairs, PAD, EOS, show_progress=False)
    second = evaluate_prefix_accuracy(model, pairs, PAD, EOS, show_progress=False)
    assert first.mean_margin == second.mean_margin and model.training
    model.eval()
    assert (
        evaluate_prefix_accuracy(model, pairs, PAD, EOS, show_progress=False).mean_margin == first.mean_margin
    )


def test_trainer_needs_a_tokenizer_or_collator(tmp_path):
    args = PrefixRewardTrainingConfig(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match="processing_class"):
        PrefixRewardTrainer(tiny_prefix_rm("gpt2"), args, train_dataset=separable_pairs(2))


# ---------------------------------------------------------------------------------------------------------------
# Data


ROWS = [
    {"prompt": "Tell me a story.", "chosen": "What a great day to learn.", "rejected": "This is terrible."},
    {"prompt": "Hello", "chosen": "Thank you so much!", "rejected": "I hate it."},
    {"prompt": "Hi", "chosen": "", "rejected": "sad"},  # empty field
    {"prompt": "Hi", "chosen": "ok"},  # missing column
    {"prompt": "Hi", "chosen": 3, "rejected": "sad"},  # non-string field
    {"prompt": "The weather is cold and grey " * 20, "chosen": "a", "rejected": "b"},  # prompt too long
]


def write(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_files_load_and_bad_rows_are_counted(suffix, tmp_path, caplog):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = (
        ROWS
        if suffix in (".jsonl", ".json")
        else [r for r in ROWS if isinstance(r.get("chosen", ""), str) and "rejected" in r]
    )
    tokenizer = build_tokenizer()
    with caplog.at_level(logging.WARNING, logger="hf_rgtg"):
        data = load_preference_data(write(tmp_path / f"pairs{suffix}", rows), tokenizer, max_length=48)
    assert len(data) == 2
    expected = {"empty field": 1, "prompt longer than max_length": 1}
    if suffix in (".jsonl", ".json"):
        expected.update({"missing column 'rejected'": 1, "non-string field 'chosen' (int)": 1})
    assert dict(data.skipped) == expected
    assert "2 pairs kept; skipped:" in caplog.text
    assert data[0]["prompt_ids"] == tokenizer("Tell me a story.")["input_ids"]


def test_other_file_layouts_load_the_same_pairs(tmp_path):
    tokenizer = build_tokenizer()
    expected = load_preference_data(ROWS[:2], tokenizer).examples
    columns = {key: [row[key] for row in ROWS[:2]] for key in ("prompt", "chosen", "rejected")}
    (tmp_path / "columns.json").write_text(json.dumps(columns))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS[:2]}))
    write(tmp_path / "bom.csv", ROWS[:2])
    (tmp_path / "bom.csv").write_bytes(
        b"\xef\xbb\xbf" + (tmp_path / "bom.csv").read_bytes()
    )  # a spreadsheet export
    for name in ("columns.json", "wrapped.json", "bom.csv"):
        assert load_preference_data(tmp_path / name, tokenizer).examples == expected, name
    (tmp_path / "one.json").write_text(json.dumps(ROWS[0]))  # a single pair, not its characters
    assert load_preference_data(tmp_path / "one.json", tokenizer).examples == expected[:1]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "broken.jsonl",
            '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": oops}\n',
            "line 3: not valid JSON",
        ),
        ("broken.json", '[{"prompt": "a"},\n oops]', "line 2: not valid JSON"),
        ("number.json", "3", "holds a JSON int; expected a list of rows"),
        (
            "ragged.json",
            '{"prompt": ["a", "b"], "chosen": ["c"], "rejected": ["d", "e"]}',
            "different lengths",
        ),
        ("latin1.csv", "prompt,chosen,rejected\ncaf\xe9,b,c\n".encode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_unreadable_files_are_named_with_the_problem(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message) as error:
        load_preference_data(path, build_tokenizer())
    assert name in str(error.value)


def test_a_folder_or_a_dataset_dict_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_preference_data(tmp_path, build_tokenizer())
    with pytest.raises(ValueError, match="pass one split"):
        load_preference_data({"train": ROWS, "test": ROWS}, build_tokenizer())


def test_datasets_dataset_and_conversational_rows():
    datasets = pytest.importorskip("datasets")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|endoftext|>assistant: {% endif %}"
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": "Tell me a story."}],
            "chosen": [{"role": "assistant", "content": "What a great day!"}],
            "rejected": [{"role": "assistant", "content": "This is terrible."}],
        }
    ]
    data = load_preference_data(datasets.Dataset.from_list(rows), tokenizer, max_length=64)
    example = data[0]
    prompt_text = tokenizer.decode(example["prompt_ids"])
    assert prompt_text.endswith("assistant: ") and "user: Tell me a story." in prompt_text
    # The response is what the chat template adds after the prompt: the assistant turn, not the prompt again.
    assert tokenizer.decode(example["chosen_ids"]).strip() == "What a great day!"


def test_nothing_usable_raises():
    with pytest.raises(ValueError, match="No usable preference pair.*missing column"):
        load_preference_data([{"prompt": "a"}], build_tokenizer())


def test_prefix_accuracy_evaluates_an_ordinary_sequence_classifier(tmp_path):
    # Its pad id is not the EOS id, so it reads EOS-padded responses at their last token, as the evaluation does.
    classifier = tiny_sequence_classifier("gpt2", seed=1, pad_token_id=VOCAB_SIZE - 1)
    classifier.save_pretrained(tmp_path)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path).eval()
    pairs = random_pairs(6, seed=4)
    result = evaluate_prefix_accuracy(rm, pairs, PAD, EOS, batch_size=4, show_progress=False)
    full_wins = 0
    for pair in pairs:
        length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
        chosen = pair["prompt_ids"] + pair["chosen_ids"] + [EOS] * (length - len(pair["chosen_ids"]))
        rejected = pair["prompt_ids"] + pair["rejected_ids"] + [EOS] * (length - len(pair["rejected_ids"]))
        full_wins += bool(
            classifier(torch.tensor([chosen])).logits[0, 0]
            > classifier(torch.tensor([rejected])).logits[0, 0]
        )
    assert result.accuracy["full"] == full_wins / len(pairs)
    assert result.counts["full"] == 6
    assert sum(result.counts[b] for b in ("0-25%", "25-50%", "50-75%", "75-100%")) == sum(
        max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs
    )
    assert "| full |" in result.to_markdown()
