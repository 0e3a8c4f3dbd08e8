"""Bad arguments to guided decoding, the data loader, the trainer and the CLI: each is refused by name, with the
fix, before any model runs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB_SIZE, build_tokenizer, tiny_causal_lm, tiny_prefix_rm

from hf_rgtg import RewardGuidance, reward_guided_generate
from hf_rgtg.cli import main
from hf_rgtg.data import load_preference_data
from hf_rgtg.training import PrefixRewardTrainingConfig

PAD = 0


@pytest.fixture(scope="module")
def rm():
    return tiny_prefix_rm("gpt2", seed=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tokenizer": 42}, TypeError, r"`tokenizer` has to be the language model's tokenizer.*got int"),
        (
            {"config": {"beta": 1}},
            TypeError,
            r"`config` has to be a RewardGuidanceConfig, got dict.*\*\*config",
        ),
        (
            {"reward_transform": ["clamp", "cube"]},
            ValueError,
            r"`reward_transform` \(=\['clamp', 'cube'\]\) holds one value per reward model: "
            r"`reward_transform\[1\]` \(='cube'\) has to be one of",
        ),
        (
            {"eos_token_id": 1.5},
            ValueError,
            r"`eos_token_id` \(=1.5\) has to be a token id or a list of them",
        ),
        ({"eos_token_id": "x"}, ValueError, r"`eos_token_id` \(='x'\)"),
        ({"eos_token_id": [None]}, ValueError, r"`eos_token_id` \(=\[None\]\)"),
        ({"pad_token_id": "x"}, ValueError, r"`pad_token_id` \(='x'\) has to be one token id"),
        ({"pad_token_id": [0]}, ValueError, r"`pad_token_id` \(=\[0\]\) has to be one token id"),
        ({"pad_token_id": 1.5}, ValueError, r"`pad_token_id` \(=1.5\)"),
        ({"pad_token_id": -5}, ValueError, r"`pad_token_id` \(=-5\)"),
    ],
)
def test_guidance_arguments_are_refused_by_name(rm, kwargs, error, message):
    tokenizer = kwargs.pop("tokenizer", None)
    with pytest.raises(error, match=message):
        RewardGuidance(rm, tokenizer, **kwargs)


@pytest.fixture(scope="module")
def rm2():
    return tiny_prefix_rm("gpt2", seed=3)


@pytest.mark.parametrize(
    ("models", "kwargs", "message"),
    [
        (
            1,
            {"beta": [1, 2]},
            r"`beta` \(=\[1.0, 2.0\]\) has 2 values for 1 reward model: give one value per reward model "
            r"\(a list of 1\), or a single value for all of them",
        ),
        (
            2,
            {"reward_transform": ["clamp"]},
            r"`reward_transform` \(=\['clamp'\]\) has 1 value for 2 reward models: give one value per reward "
            r"model \(a list of 2\)",
        ),
        (2, {"standardize_rewards": [True, False, True]}, r"`standardize_rewards` .* has 3 values for 2"),
        (2, {"beta": []}, r"`beta` is an empty list: give one value per reward model, or a single value"),
        (
            2,
            {"beta": [1.0, math.nan, "x"]},
            r"`beta` \(=\[1.0, nan, 'x'\]\) holds one value per reward model: `beta\[1\]` \(=nan\) has to be a "
            r"finite number.* `beta\[2\]` \(='x'\) has to be a finite number",
        ),
        (
            2,
            {"standardize_rewards": [True, "yes"]},
            r"`standardize_rewards\[1\]` \(='yes'\) has to be True or False",
        ),
        (
            0,
            {},
            r"`reward_model` is an empty list: give a reward model, or a list of them with one `beta` each",
        ),
    ],
)
def test_settings_per_reward_model_are_refused_by_name(rm, rm2, models, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardGuidance([rm, rm2][:models], **kwargs)


def test_a_bad_reward_model_in_a_list_is_named_by_its_index(rm, tmp_path):
    with pytest.raises(
        ValueError, match=r"`reward_model\[1\]`: `reward_model` has to be a PrefixRewardModel.*int"
    ):
        RewardGuidance([rm, 42])
    with pytest.raises(ValueError, match=r"`reward_model\[2\]`: `reward_model` .* is not a folder"):
        RewardGuidance([rm, rm, str(tmp_path / "nowhere")])
    with pytest.raises(
        OSError, match=r"`reward_model\[1\]`: Could not load `reward_model` 'no-such-org/no-rm'"
    ):
        RewardGuidance([rm, "no-such-org/no-rm"])
    other = tiny_prefix_rm("gpt2", seed=3)
    other.resize_token_embeddings(VOCAB_SIZE + 16)
    guidance = RewardGuidance([rm, other], top_k=3, pad_token_id=PAD)
    with pytest.raises(
        ValueError, match=r"`reward_model\[1\]`: The language model scores 384 tokens.*has 400"
    ):
        guidance.check_language_model(tiny_causal_lm("gpt2"), torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"`reward_model\[1\]`: `eos_token_id` \(390\) lies outside"):
        RewardGuidance([other, rm], eos_token_id=390)


def test_a_guidance_of_several_reward_models_has_no_single_one(rm, rm2):
    guidance = RewardGuidance([rm, rm2])
    assert guidance.reward_models == (rm, rm2) and len(guidance.scorers) == 2
    for name in ("reward_model", "scorer"):
        with pytest.raises(
            ValueError, match=rf"has 2 reward models, so it has no single `{name}`: read `{name}s`"
        ):
            getattr(guidance, name)


def test_the_processor_refuses_settings_for_another_number_of_reward_models(rm):
    from hf_rgtg import ReferenceScorer, RewardGuidanceConfig, RewardGuidedLogitsProcessor, RowTracker

    config = RewardGuidanceConfig(beta=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"`beta` \(=\[1.0, 2.0\]\) has 2 values for 1 reward model"):
        RewardGuidedLogitsProcessor(ReferenceScorer(rm), RowTracker(), config)


def test_ways_2_and_3_refuse_settings_for_another_number_of_reward_models(rm, rm2, restore_generate):
    from hf_rgtg import enable_reward_guided_generate

    lm = tiny_causal_lm("gpt2")
    ids = torch.tensor([[5, 6, 7]])
    too_many = r"`beta` \(=\[1.0, 2.0, 3.0\]\) has 3 values for 2 reward models"
    with pytest.raises(ValueError, match=too_many):
        lm.generate(
            ids,
            max_new_tokens=2,
            custom_generate=reward_guided_generate,
            reward_model=[rm, rm2],
            beta=[1, 2, 3],
        )
    enable_reward_guided_generate()
    with pytest.raises(ValueError, match=too_many):
        lm.generate(ids, max_new_tokens=2, reward_model=[rm, rm2], beta=[1, 2, 3])
    with pytest.raises(ValueError, match=r"`reward_model` is an empty list"):
        lm.generate(ids, max_new_tokens=2, reward_model=[])


@pytest.mark.parametrize(
    "ids", [{"eos_token_id": VOCAB_SIZE}, {"eos_token_id": [3, 10**9]}, {"pad_token_id": VOCAB_SIZE}]
)
def test_token_ids_outside_the_vocabulary_are_refused(rm, ids):
    (name,) = ids
    with pytest.raises(
        ValueError,
        match=rf"`{name}` \(\d+\) lies outside the reward model's vocabulary \({VOCAB_SIZE} tokens\)",
    ):
        RewardGuidance(rm, **ids)


def test_a_misspelt_setting_is_named_with_the_closest_one(rm):
    with pytest.raises(TypeError, match=r"RewardGuidance has no setting `betta`. Did you mean `beta`\?"):
        RewardGuidance(rm, betta=1.0)


def test_token_ids_of_numpy_and_tensor_types_are_accepted(rm):
    numpy = pytest.importorskip("numpy")
    guidance = RewardGuidance(rm, eos_token_id=numpy.int64(3), pad_token_id=torch.tensor(0))
    assert guidance.eos_token_id == [3] and guidance.pad_token_id == 0
    assert RewardGuidance(rm, eos_token_id=torch.tensor([3, 4])).eos_token_id == [3, 4]


def test_a_reward_guidance_that_is_not_one_is_refused(rm):
    lm = tiny_causal_lm("gpt2", seed=1, pad_token_id=PAD)
    with pytest.raises(TypeError, match=r"`reward_guidance` has to be a RewardGuidance, got str"):
        lm.generate(torch.tensor([[5, 6]]), custom_generate=reward_guided_generate, reward_guidance="x")


@pytest.mark.parametrize("mask_row", [[0, 0, 0], None])
def test_a_prompt_that_is_all_padding_is_refused(rm, mask_row):
    lm = tiny_causal_lm("gpt2", seed=1, pad_token_id=PAD)
    guidance = RewardGuidance(rm, eos_token_id=VOCAB_SIZE - 1, pad_token_id=PAD)
    ids = torch.tensor([[5, 6, 7], [PAD, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1], mask_row or [1, 1, 1]])
    with pytest.raises(ValueError, match=r"Prompt row\(s\) \[1\] are all padding"):
        if mask_row is None:  # no mask: the padding is read from the pad id
            lm.generate(ids, max_new_tokens=2, pad_token_id=PAD, **guidance.generate_kwargs())
        else:
            lm.generate(
                ids, attention_mask=mask, max_new_tokens=2, pad_token_id=PAD, **guidance.generate_kwargs()
            )


@pytest.mark.parametrize("prompt_length", [0, -2, 100, 1.5, True])
def test_sequence_rewards_and_the_trace_refuse_a_wrong_prompt_length(rm, prompt_length):
    lm = tiny_causal_lm("gpt2", seed=1, pad_token_id=PAD)
    guidance = RewardGuidance(rm, eos_token_id=VOCAB_SIZE - 1, pad_token_id=PAD)
    out = lm.generate(
        torch.tensor([[5, 6, 7]]), max_new_tokens=3, pad_token_id=PAD, **guidance.generate_kwargs()
    )
    with pytest.raises(
        ValueError,
        match=r"`prompt_length` \(=.*\) has to be the prompts' length.*from 1 to their length \(6\)",
    ):
        guidance.sequence_rewards(out, prompt_length=prompt_length)
    with pytest.raises(ValueError, match=r"`prompt_length`"):
        guidance.trace.rewards_of(out, prompt_length=prompt_length)


def test_the_trace_refuses_a_prompt_length_that_is_not_the_prompts(rm):
    lm = tiny_causal_lm("gpt2", seed=1, pad_token_id=PAD)
    guidance = RewardGuidance(rm, eos_token_id=VOCAB_SIZE - 1, pad_token_id=PAD)
    out = lm.generate(
        torch.tensor([[5, 6, 7]]), max_new_tokens=3, pad_token_id=PAD, **guidance.generate_kwargs()
    )
    assert len(guidance.trace.rewards_of(out, prompt_length=3)[0]) == 3
    with pytest.raises(ValueError, match=r"first 2 tokens.*not a prompt.*prompts have \[3\] tokens"):
        guidance.trace.rewards_of(out, prompt_length=2)


# ---- data


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


ROWS = [{"prompt": "hi", "chosen": "good day", "rejected": "bad day"}]


@pytest.mark.parametrize("max_length", [None, "8", 1.5, 0, -1, True])
def test_load_preference_data_refuses_a_bad_max_length(tokenizer, max_length):
    with pytest.raises(ValueError, match=r"`max_length` \(=.*\) has to be an integer of at least 2"):
        load_preference_data(ROWS, tokenizer, max_length=max_length)


@pytest.mark.parametrize("bad", [None, 3])
def test_load_preference_data_refuses_a_bad_tokenizer_or_source(tokenizer, bad):
    with pytest.raises(TypeError, match=r"`tokenizer` has to be the reward model's tokenizer"):
        load_preference_data(ROWS, bad)
    with pytest.raises(TypeError, match=r"\(`source`\) has to be a file path or rows"):
        load_preference_data(bad, tokenizer)


def test_a_bytes_path_is_read_as_a_path(tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "hi", "chosen": "good day", "rejected": "bad day"}\n')
    assert len(load_preference_data(bytes(path), tokenizer)) == 1


def test_deeply_nested_json_is_named(tokenizer, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep.json.*nested too deeply"):
        load_preference_data(path, tokenizer)


def test_a_none_field_and_an_empty_file_are_named(tokenizer, tmp_path):
    data = load_preference_data([*ROWS, {"prompt": None, "chosen": "a", "rejected": "b"}], tokenizer)
    assert dict(data.skipped) == {"empty field 'prompt' (None)": 1}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(
        ValueError, match=r"No usable preference pair in the data '.*empty.jsonl' \(it holds no rows\)"
    ):
        load_preference_data(empty, tokenizer)


def test_csv_rows_with_another_number_of_fields_are_skipped_and_counted(tokenizer, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected\nhi,good day,bad day\nhi,good, nice day,bad day\nhi,only two\nhi,fine,worse\n"
    )
    data = load_preference_data(path, tokenizer)
    assert [e["chosen_ids"] for e in data.examples] == [
        tokenizer("good day")["input_ids"],
        tokenizer("fine")["input_ids"],
    ]
    ((reason, count),) = data.skipped.items()
    assert count == 2 and "number of fields differs from the header" in reason and "lines 3, 4" in reason


# ---- training


@pytest.mark.parametrize(
    "setting",
    [
        {"margin": math.nan},
        {"margin": math.inf},
        {"center_rewards_coefficient": math.nan},
        {"center_rewards_coefficient": -1.0},
        {"learning_rate": math.nan},
        {"lora_dropout": 1.5},
        {"lora_r": 0},
    ],
)
def test_training_settings_are_validated_by_name(tmp_path, setting):
    (name,) = setting
    with pytest.raises(ValueError, match=rf"`{name}` \("):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), **setting)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_length": "512"}, r"`max_length` \(='512'\) has to be an integer, e.g. `max_length=512`"),
        ({"num_random_prefixes": 2.7}, r"`num_random_prefixes` \(=2.7\) has to be an integer"),
        ({"lora_alpha": None}, r"`lora_alpha` \(=None\) has to be an integer"),
        ({"margin": "0.1"}, r"`margin` \(='0.1'\) has to be a number"),
        ({"margin": None}, r"`margin` \(=None\) has to be a number"),
        ({"learning_rate": "1e-3"}, r"`learning_rate` \(='1e-3'\) has to be a number, e.g. `learning_rate="),
        ({"remove_unused_columns": True}, r"`remove_unused_columns` has to be False"),
        (
            {"lora_target_modules": "c_attn"},
            r"`lora_target_modules` \(='c_attn'\) has to be a list of module names",
        ),
    ],
)
def test_training_settings_of_the_wrong_type_are_named(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        PrefixRewardTrainingConfig(output_dir=str(tmp_path), **setting)


def test_a_numpy_integer_max_length_is_accepted(tokenizer):
    numpy = pytest.importorskip("numpy")
    assert len(load_preference_data(ROWS, tokenizer, max_length=numpy.int64(64))) == 1


def test_the_fallback_line_names_the_reason_and_how_to_choose_the_reference_scorer(caplog):
    from conftest import tiny_config

    from hf_rgtg.configuration import PrefixRewardConfig
    from hf_rgtg.modeling import PrefixRewardModel

    config = tiny_config("mistral", sliding_window=4)
    rm = PrefixRewardModel(PrefixRewardConfig(text_config=config)).eval()
    with caplog.at_level("WARNING", logger="hf_rgtg"):
        RewardGuidance(rm, eos_token_id=1, pad_token_id=0)
    (record,) = [r for r in caplog.records if r.name.startswith("hf_rgtg")]
    assert "reference scorer" in record.message and "full attention only" in record.message
    assert 'Pass `scorer="reference"` to choose it explicitly' in record.message
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_rgtg"):
        RewardGuidance(rm, eos_token_id=1, pad_token_id=0, scorer="reference")
    assert not [r for r in caplog.records if r.name.startswith("hf_rgtg")]


@pytest.mark.parametrize("flag", ["--margin", "--center-rewards-coefficient"])
def test_the_cli_refuses_a_nan_loss_setting_and_saves_nothing(tmp_path, capsys, flag):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "good day", "rejected": "bad day"}\n' * 4)
    out = tmp_path / "out"
    assert (
        main(["train", "--model", "gpt2-like", "--data", str(data), "--output-dir", str(out), flag, "nan"])
        == 2
    )
    assert "finite" in capsys.readouterr().err
    assert not out.exists()


def test_a_loss_that_becomes_non_finite_stops_training_and_saves_nothing(tmp_path, tokenizer):
    from hf_rgtg.training import PrefixRewardTrainer

    model = tiny_prefix_rm("llama", seed=0)
    data = load_preference_data(ROWS * 8, tokenizer, max_length=32)
    config = PrefixRewardTrainingConfig(
        output_dir=str(tmp_path / "out"),
        learning_rate=1e38,
        num_train_epochs=4,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=1,
        report_to=[],
        logging_strategy="no",
        use_cpu=True,
    )
    trainer = PrefixRewardTrainer(model, config, train_dataset=data.examples, processing_class=tokenizer)
    with pytest.raises(
        ValueError, match=r"(training loss became .* at step \d+|weight\(s\) of the model are not finite)"
    ):
        trainer.train()
    for checkpoint in (tmp_path / "out").glob("checkpoint-*"):
        from safetensors.torch import load_file

        for tensor in load_file(checkpoint / "model.safetensors").values():
            assert torch.isfinite(tensor).all()


# ---- command line


def test_the_cli_names_a_seed_out_of_range(capsys):
    assert main(["generate", "hi", "--seed", "99999999999999999999"]) == 2
    assert "argument --seed: has to be an integer from 0 to 2**63 - 1" in capsys.readouterr().err


@pytest.mark.parametrize("max_length", ["0", "-5"])
def test_eval_rm_names_a_max_length_below_two(capsys, tmp_path, max_length):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "good day", "rejected": "bad day"}\n')
    assert main(["eval-rm", "--rm", str(tmp_path), "--data", str(data), "--max-length", max_length]) == 2
    assert "argument --max-length: has to be at least 2" in capsys.readouterr().err
