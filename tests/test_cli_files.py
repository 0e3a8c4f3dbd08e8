"""`hf-rgtg generate --input FILE --output FILE`: whole files of prompts, resumable, shared among processes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import CHAT_TEMPLATE, build_tokenizer, tiny_causal_lm, tiny_prefix_rm

import hf_rgtg.cli.generate
import hf_rgtg.cli.guided_run
from hf_rgtg.cli import main

LINES = [
    '"hello there"',
    '{"prompt": "Tell me a story.", "id": "a7"}',
    "not json",
    '[{"role": "user", "content": "How are you?"}]',
    "",
    '{"text": "no prompt key"}',
    '"good morning"',
    '{"messages": [{"role": "user", "content": "hi"}]}',
    '"thank you so much"',
]
#: The input lines above that are prompts, and what each is.
PROMPTS = {
    1: "hello there",
    2: "Tell me a story.",
    4: [{"role": "user", "content": "How are you?"}],
    7: "good morning",
    8: [{"role": "user", "content": "hi"}],
    9: "thank you so much",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tiny_causal_lm("llama", seed=0, pad_token_id=0).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    tiny_prefix_rm("llama", seed=1).save_pretrained(root / "rm")
    (root / "prompts.jsonl").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return root


def command(folders, output, *extra):
    """The file mode's command; greedy unless `extra` samples (the CLI samples by default)."""
    return [
        "generate",
        "--lm",
        str(folders / "lm"),
        "--rm",
        str(folders / "rm"),
        "--input",
        str(folders / "prompts.jsonl"),
        "--output",
        str(output),
        "--max-new-tokens",
        "4",
        "--batch-size",
        "2",
        *(() if "--sample" in extra else ("--greedy",)),
        *extra,
    ]


def records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_prompt_gets_a_record_and_every_malformed_line_is_reported(folders, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert main(command(folders, output, "--compare", "--show-rewards")) == 0
    out, err = capsys.readouterr()
    written = records(output)
    for record in written:  # each reply's token rewards telescope to its reward
        [credits] = record["token_rewards"]
        assert credits["prefix_rewards"][-1] == pytest.approx(record["reward"], abs=1e-4)
        assert sum(credits["rewards"]) == pytest.approx(record["reward"] - credits["prompt_reward"], abs=1e-4)
    assert [record["line"] for record in written] == list(PROMPTS)
    assert [record["prompt"] for record in written] == list(PROMPTS.values())
    assert written[1]["id"] == "a7" and "id" not in written[0]
    assert all(
        {"response", "reward", "unguided_response", "unguided_reward", "settings"} <= set(record)
        for record in written
    )
    assert written[0]["settings"]["beta"] == 1.0 and written[0]["settings"]["compare"] is True
    assert "prompts.jsonl:3: skipped: not JSON" in err
    assert 'prompts.jsonl:6: skipped: an object needs one "prompt"' in err
    assert "prompt/s" in err  # the progress bar
    assert f"{output}: 6 records for 6 prompts" in out and "2 malformed lines skipped (lines 3, 6)" in out
    # Each record is what generating its prompt alone gives (greedy decoding; batching pads, and changes nothing).
    for record in written[:2]:
        assert main(single(folders, record["prompt"])) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["response"] == record["response"]
        assert alone["reward"] == pytest.approx(record["reward"], abs=1e-4)


def single(folders, prompt):
    return [
        "generate",
        prompt,
        "--lm",
        str(folders / "lm"),
        "--rm",
        str(folders / "rm"),
        "--max-new-tokens",
        "4",
        "--json",
        "--greedy",
    ]


class Interrupt(KeyboardInterrupt):
    pass


def test_an_interrupted_run_resumes_where_it_stopped(folders, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    assert main(command(folders, whole, "--sample")) == 0
    output = tmp_path / "out.jsonl"
    calls = []
    original = hf_rgtg.cli.guided_run.GuidedRun.call

    def stop_at_the_second_batch(self, inputs, seed, **kwargs):
        calls.append(len(inputs))
        if len(calls) == 2:
            raise Interrupt
        return original(self, inputs, seed, **kwargs)

    monkeypatch.setattr(hf_rgtg.cli.guided_run.GuidedRun, "call", stop_at_the_second_batch)
    assert main(command(folders, output, "--sample")) == 130
    assert [record["line"] for record in records(output)] == [1, 2]  # only the batch in flight is lost
    # A record cut short by the interruption is passed over, and its prompt generated again.
    with output.open("a", encoding="utf-8") as file:
        file.write('{"line": 4, "prompt": [{"role": "us')
    calls.clear()
    monkeypatch.setattr(
        hf_rgtg.cli.guided_run.GuidedRun,
        "call",
        lambda self, *a, **k: calls.append(1) or original(self, *a, **k),
    )
    capsys.readouterr()
    assert main(command(folders, output, "--sample")) == 0
    out, err = capsys.readouterr()
    assert len(calls) == 2  # the two batches left of three
    assert "out.jsonl: dropped an unfinished record at its end" in err
    assert "(4 generated now, 2 there before)" in out
    assert output.read_text(encoding="utf-8") == whole.read_text(encoding="utf-8")
    # Rerun once more: nothing is left to do.
    calls.clear()
    assert main(command(folders, output, "--sample")) == 0
    assert calls == [] and "(0 generated now, 6 there before)" in capsys.readouterr().out


def test_resuming_with_other_settings_or_another_input_is_refused_before_loading(
    folders, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "out.jsonl"
    assert main(command(folders, output)) == 0
    capsys.readouterr()
    monkeypatch.setattr(
        hf_rgtg.cli.generate, "_load_language_model", lambda name: pytest.fail("loaded the language model")
    )
    assert main([*command(folders, output), "--beta", "2"]) == 2
    err = capsys.readouterr().err
    assert "argument --output" in err and "beta was 1.0, now 2.0" in err
    changed = tmp_path / "changed.jsonl"
    shutil.copy(folders / "prompts.jsonl", changed)
    changed.write_text(changed.read_text().replace("hello there", "hello again"))
    args = command(folders, output)
    args[args.index("--input") + 1] = str(changed)
    assert main(args) == 2
    assert "a record for line 1 of another prompt: the input changed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["a prompt too"], "give a PROMPT or --input FILE"),
        (["--trace-html", "t.html"], "argument --trace-html: applies to one PROMPT"),
        (["--batch-size", "0"], "argument --batch-size: has to be a positive integer"),
    ],
)
def test_file_mode_flags_are_checked(folders, tmp_path, capsys, extra, message):
    args = command(folders, tmp_path / "out.jsonl")
    if extra[0] == "a prompt too":
        args.insert(1, "a prompt too")
    else:
        args += extra
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_two_processes_under_accelerate_launch_write_what_one_does(folders, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(command(folders, one, "--sample", "--compare")) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_rgtg"]
    result = subprocess.run(
        [*launch, *command(folders, two, "--sample", "--compare")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[process 1/2]" in result.stderr and "[process 2/2]" in result.stderr
    single, shared = records(one), records(two)
    # The same texts; the rewards agree to float noise (each process computes with its own number of threads).
    for a, b in zip(single, shared, strict=True):
        for key in ("reward", "unguided_reward"):
            assert a.pop(key) == pytest.approx(b.pop(key), abs=1e-5)
    assert single == shared
