import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import (
    CHAT_TEMPLATE,
    build_other_tokenizer,
    build_tokenizer,
    tiny_causal_lm,
    tiny_config,
    tiny_prefix_rm,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin

import hf_rgtg.defaults
import hf_rgtg.scoring
from hf_rgtg import (
    DEFAULT_LM_INSTALL_COMMAND,
    AutoModelForPrefixReward,
    PrefixRewardConfig,
    PrefixRewardModel,
    RewardGuidance,
    ensure_pad_token,
    score_sequences,
)
from hf_rgtg.cli import main

PROMPT = "hello there"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny LM with its tokenizer (no chat template, no pad token), the same LM with a chat template, and two
    tiny prefix reward models, saved to folders."""
    root = tmp_path_factory.mktemp("cli-models")
    lm = tiny_causal_lm("llama", seed=0, pad_token_id=0)
    tokenizer = build_tokenizer()
    lm.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    lm.save_pretrained(root / "chat-lm")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "chat-lm")
    tiny_prefix_rm("llama", seed=1).save_pretrained(root / "rm")
    tiny_prefix_rm("llama", seed=3).save_pretrained(root / "rm2")
    return {name: str(root / name) for name in ("lm", "chat-lm", "rm", "rm2")}


def run(capsys, *args):
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def models(folders, lm="lm", greedy=True):
    """The models' flags; with `greedy`, `--greedy` too, as most tests compare against a greedy reference (the
    CLI samples by default)."""
    return ("--lm", folders[lm], "--rm", folders["rm"], *(("--greedy",) if greedy else ()))


def reference(folders, max_new_tokens=5, beta=1.0, top_k=10, sample=False, seed=0):
    """What the CLI should print, computed with the library: the guided and unguided runs, their texts, the guided
    trace's prefix rewards and both sequence rewards."""
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(folders["lm"]))
    lm = AutoModelForCausalLM.from_pretrained(folders["lm"]).eval()
    rm = AutoModelForPrefixReward.from_pretrained(folders["rm"]).eval()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    guidance = RewardGuidance(rm, tokenizer, beta=beta, top_k=top_k, eos_token_id=0)
    settings = {"max_new_tokens": max_new_tokens, "do_sample": sample, "pad_token_id": 0}
    torch.manual_seed(seed)
    guided = lm.generate(**inputs, **settings, **guidance.generate_kwargs())
    torch.manual_seed(seed)
    unguided = lm.generate(**inputs, **settings)
    return {
        "guided_text": tokenizer.decode(guided[0, length:], skip_special_tokens=True),
        "unguided_text": tokenizer.decode(unguided[0, length:], skip_special_tokens=True),
        "prefix_rewards": [step.reward for step in guidance.trace.steps(guided[0], prompt_length=length)],
        "guided_reward": float(score_sequences(rm, guided, length, eos_token_id=0, pad_token_id=0)[0]),
        "unguided_reward": float(score_sequences(rm, unguided, length, eos_token_id=0, pad_token_id=0)[0]),
    }


def table_lines(lines):
    """The `step token r_t R` header and the lines under it, up to the sequence reward."""
    start = next(i for i, line in enumerate(lines) if line.split() == ["step", "token", "r_t", "R"])
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("sequence reward:"))
    return lines[start:end]


def reward_table(lines):
    """The rows of the reward table: `(step, token repr, prefix reward R)`, checking that each credit `r_t` is
    the step's change of `R`."""
    rows, before = [], None
    for line in table_lines(lines)[1:]:
        step, rest = line.split(maxsplit=1)
        token, credit, reward = rest.rsplit(maxsplit=2)
        if before is not None:
            assert float(credit) == pytest.approx(float(reward) - before, abs=2e-4)
        before = float(reward)
        rows.append((int(step), token, float(reward)))
    return rows


def lines_of(text):
    """The printed lines; not `splitlines()`, which also breaks at control characters a random model prints."""
    return text.removesuffix("\n").split("\n")


def sequence_reward(line):
    assert line.startswith("sequence reward: ")
    return float(line.removeprefix("sequence reward: "))


def test_generate_prints_the_guided_continuation(folders, capsys):
    code, out, err = run(capsys, PROMPT, *models(folders), "--max-new-tokens", "5")
    assert code == 0
    expected = reference(folders)
    assert out == expected["guided_text"] + "\n"
    assert expected["guided_text"] != expected["unguided_text"], "guidance should change this continuation"


def test_show_rewards_prints_one_aligned_line_per_token_and_the_sequence_reward(folders, capsys):
    code, out, _ = run(capsys, PROMPT, *models(folders), "--max-new-tokens", "5", "--show-rewards")
    assert code == 0
    expected = reference(folders)
    lines = lines_of(out)
    rows = reward_table(lines)
    assert [step for step, _, _ in rows] == [1, 2, 3, 4, 5]
    assert all(token[0] in "'\"" and token[-1] == token[0] for _, token, _ in rows)
    assert [reward for _, _, reward in rows] == pytest.approx(expected["prefix_rewards"], abs=1e-4)
    assert sequence_reward(lines[-1]) == pytest.approx(expected["guided_reward"], abs=1e-4)
    # The last prefix is the whole sequence.
    assert rows[-1][2] == pytest.approx(expected["guided_reward"], abs=1e-4)
    assert len({len(line) for line in table_lines(lines)}) == 1, "the reward column is aligned"
    assert out.startswith(expected["guided_text"] + "\n")


def test_compare_prints_unguided_and_guided_with_their_rewards(folders, capsys):
    code, out, _ = run(
        capsys,
        PROMPT,
        *models(folders),
        "--max-new-tokens",
        "5",
        "--compare",
        "--beta",
        "1.5",
        "--top-k",
        "7",
    )
    assert code == 0
    expected = reference(folders, beta=1.5, top_k=7)
    unguided, guided = out.split("\n\n=== guided")
    assert lines_of(unguided) == [
        "=== unguided ===",
        expected["unguided_text"],
        f"sequence reward: {expected['unguided_reward']:+.4f}",
    ]
    assert lines_of("=== guided" + guided) == [
        "=== guided (beta=1.5, top-k=7) ===",
        expected["guided_text"],
        f"sequence reward: {expected['guided_reward']:+.4f}",
    ]


def test_compare_with_show_rewards_gives_both_tables(folders, capsys):
    code, out, _ = run(
        capsys,
        PROMPT,
        *models(folders),
        "--max-new-tokens",
        "5",
        "--compare",
        "--show-rewards",
    )
    assert code == 0
    expected = reference(folders)
    unguided, guided = (lines_of(section) for section in out.split("\n\n=== guided"))
    unguided_rows, guided_rows = reward_table(unguided), reward_table(guided)
    assert len(unguided_rows) == len(guided_rows) == 5
    assert [reward for _, _, reward in guided_rows] == pytest.approx(expected["prefix_rewards"], abs=1e-4)
    # Unguided prefix rewards come from one reward-model pass; the last one is the sequence's reward.
    assert unguided_rows[-1][2] == pytest.approx(expected["unguided_reward"], abs=1e-4)
    assert sequence_reward(unguided[-1]) == pytest.approx(expected["unguided_reward"], abs=1e-4)
    assert sequence_reward(guided[-1]) == pytest.approx(expected["guided_reward"], abs=1e-4)


def test_sampling_is_the_default_at_beta_2_and_is_reproducible_with_a_seed(folders, capsys):
    args = (PROMPT, *models(folders, greedy=False), "--max-new-tokens", "5")
    code, out, _ = run(capsys, *args, "--compare", "--seed", "3")
    assert code == 0
    assert "=== guided (beta=2.0, top-k=10) ===" in out
    assert run(capsys, *args, "--compare", "--seed", "3")[1] == out
    assert run(capsys, *args, "--sample", "--compare", "--seed", "3")[1] == out
    code, out, _ = run(capsys, *args, "--seed", "3")
    assert out == reference(folders, beta=2.0, sample=True, seed=3)["guided_text"] + "\n"


def test_greedy_decodes_at_beta_1_and_excludes_sample(folders, capsys):
    flags = models(folders, greedy=False)
    code, out, _ = run(capsys, PROMPT, *flags, "--max-new-tokens", "5", "--greedy", "--compare")
    assert code == 0 and "=== guided (beta=1.0, top-k=10) ===" in out
    code, out, _ = run(capsys, PROMPT, *flags, "--max-new-tokens", "5", "--greedy")
    assert out == reference(folders, beta=1.0, sample=False)["guided_text"] + "\n"
    code, out, err = run(capsys, PROMPT, *flags, "--greedy", "--sample")
    assert code == 2 and out == ""
    assert "--sample" in err and "--greedy" in err


@pytest.fixture
def generate_inputs(monkeypatch):
    """Record the `input_ids` of every `generate()` call."""
    calls = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        calls.append(kwargs["input_ids"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls


def test_chat_template_is_applied_unless_disabled(folders, capsys, generate_inputs):
    tokenizer = AutoTokenizer.from_pretrained(folders["chat-lm"])
    messages = [{"role": "user", "content": PROMPT}]
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    templated = templated["input_ids"]
    plain = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert templated.shape[1] > plain.shape[1]
    args = (PROMPT, *models(folders, lm="chat-lm"), "--max-new-tokens", "2")

    assert run(capsys, *args)[0] == 0
    assert run(capsys, *args, "--no-chat-template")[0] == 0
    assert len(generate_inputs) == 2
    assert torch.equal(generate_inputs[0], templated)
    assert torch.equal(generate_inputs[1], plain)


@pytest.mark.parametrize(
    "flag, value, mentions",
    [
        ("--top-k", "0", "top_k"),
        ("--top-k", "-3", "top_k"),
        ("--beta", "nan", "beta"),
        ("--beta", "inf", "beta"),
        ("--max-new-tokens", "0", "positive integer"),
        ("--num-return-sequences", "0", "positive integer"),
        ("--temperature", "0.5", "drop --greedy"),
        ("--top-p", "0.9", "drop --greedy"),
        ("--device", "gpu7", "not a device"),
        ("--device", "cuda:3", "cuda"),
    ],
)
def test_bad_values_give_a_one_line_error_naming_the_flag(folders, capsys, flag, value, mentions):
    code, out, err = run(capsys, PROMPT, *models(folders), flag, value)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("hf-rgtg: error: ")
    assert flag in err and mentions in err


def test_top_k_larger_than_the_vocabulary_is_an_error(folders, capsys):
    code, _, err = run(capsys, PROMPT, *models(folders), "--top-k", "1000")
    assert code == 2
    assert "hf-rgtg: error: argument --top-k: `top_k` (=1000) is larger than" in err


def test_prompt_plus_new_tokens_beyond_either_model_is_refused_before_generating(folders, capsys, tmp_path):
    # The tiny LM and RM both have 128 positions.
    generate_calls = []
    original = GenerationMixin.generate
    GenerationMixin.generate = lambda *a, **k: generate_calls.append(1) or original(*a, **k)
    try:
        code, out, err = run(capsys, PROMPT, *models(folders), "--max-new-tokens", "127", "--compare")
        assert code == 2 and out == "" and err.count("\n") == 1
        prompt_tokens = int(
            re.search(r"argument --max-new-tokens: the prompt has (\d+) tokens", err).group(1)
        )
        assert f"at most {128 - prompt_tokens} new tokens fit" in err
        code, _, err = run(capsys, "hello " * 130, *models(folders), "--max-new-tokens", "1")
        assert code == 2 and "shorten it" in err
    finally:
        GenerationMixin.generate = original
    assert generate_calls == []
    code, _, _ = run(
        capsys, PROMPT, *models(folders), "--max-new-tokens", str(128 - prompt_tokens), "--compare"
    )
    assert code == 0


def test_folders_without_a_tokenizer_and_a_reward_model_given_as_lm_are_named(folders, capsys, tmp_path):
    tiny_causal_lm("llama").save_pretrained(tmp_path / "no-tokenizer")
    code, _, err = run(capsys, PROMPT, "--lm", str(tmp_path / "no-tokenizer"), "--rm", folders["rm"])
    assert code == 2 and "argument --lm" in err and "has no tokenizer" in err
    code, _, err = run(capsys, PROMPT, "--lm", folders["rm"], "--rm", folders["rm"])
    assert code == 2 and "prefix reward model, not a language model: pass it as --rm" in err


def test_reward_model_with_another_vocabulary_is_an_error(folders, capsys, tmp_path):
    other = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("llama", vocab_size=200)))
    other.save_pretrained(tmp_path / "other-rm")
    code, out, err = run(capsys, PROMPT, "--lm", folders["lm"], "--rm", str(tmp_path / "other-rm"))
    assert code == 2 and out == ""
    assert "vocabulary" in err and err.count("\n") == 1


def test_only_the_top_k_check_of_the_guidance_names_the_flag(folders, capsys, tmp_path):
    other = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("llama", vocab_size=200)))
    other.save_pretrained(tmp_path / "other-rm")
    lm = AutoModelForCausalLM.from_pretrained(folders["lm"])
    lm.generation_config.eos_token_id = 250
    lm.save_pretrained(tmp_path / "lm")
    AutoTokenizer.from_pretrained(folders["lm"]).save_pretrained(tmp_path / "lm")
    args = (PROMPT, "--lm", str(tmp_path / "lm"), "--rm", str(tmp_path / "other-rm"))
    code, _, err = run(capsys, *args, "--top-k", "300")
    assert code == 2
    assert err.startswith(
        "hf-rgtg: error: argument --top-k: `top_k` (=300) is larger than the reward model's "
    )
    code, _, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("hf-rgtg: error: `eos_token_id` (250) lies outside the reward model's vocabulary")


def test_missing_default_reward_model_asks_for_rm_before_loading_anything(
    folders, capsys, monkeypatch, tmp_path
):
    monkeypatch.setattr(hf_rgtg.defaults, "DEFAULT_RM_DIR", tmp_path / "no-default-rm")
    monkeypatch.setattr(hf_rgtg.defaults, "load_default_lm", lambda *a, **k: pytest.fail("loaded the LM"))
    code, out, err = run(capsys, PROMPT)
    assert code == 2 and out == ""
    assert err.startswith("hf-rgtg: error: ") and err.count("\n") == 1
    assert "--rm <folder or Hub id of a prefix reward model>" in err
    assert "AutoModelForPrefixReward" in err and "untrained" in err


def test_packaged_default_reward_model_is_used_when_rm_is_not_given(folders, capsys, monkeypatch):
    rm = AutoModelForPrefixReward.from_pretrained(folders["rm"])
    monkeypatch.setattr(hf_rgtg.defaults, "default_rm_available", lambda: True)
    monkeypatch.setattr(hf_rgtg.defaults, "load_default_rm", lambda: rm)
    # The default reward model reads the default language model's tokenizer: here the test LM's.
    monkeypatch.setattr(hf_rgtg.defaults, "default_lm_path", lambda *args, **kwargs: Path(folders["lm"]))
    code, out, _ = run(capsys, PROMPT, "--lm", folders["lm"], "--max-new-tokens", "5", "--greedy")
    assert code == 0
    assert out == reference(folders)["guided_text"] + "\n"


def test_the_default_reward_model_guides_another_lm_through_its_own_tokenizer(
    folders, capsys, monkeypatch, tmp_path
):
    """--lm with another vocabulary than the default reward model's: the text is bridged to the default language
    model's tokenizer, which the default reward model reads."""
    other_tokenizer = build_other_tokenizer("byte-level")
    other_tokenizer.save_pretrained(tmp_path / "default-lm")
    other = PrefixRewardModel(
        PrefixRewardConfig(text_config=tiny_config("llama", vocab_size=len(other_tokenizer)))
    )
    monkeypatch.setattr(hf_rgtg.defaults, "default_rm_available", lambda: True)
    monkeypatch.setattr(hf_rgtg.defaults, "load_default_rm", lambda: other.eval())
    monkeypatch.setattr(hf_rgtg.defaults, "default_lm_path", lambda *args, **kwargs: tmp_path / "default-lm")
    code, out, err = run(capsys, PROMPT, "--lm", folders["lm"], "--max-new-tokens", "4", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["reward"] is not None


def test_missing_default_lm_package_surfaces_the_install_command(folders, capsys, without_smollm2):
    code, out, err = run(capsys, PROMPT, "--rm", folders["rm"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert DEFAULT_LM_INSTALL_COMMAND in err


@pytest.mark.parametrize("flag", ["--lm", "--rm"])
def test_missing_folder_names_the_flag(folders, capsys, tmp_path, flag):
    paths = {"--lm": folders["lm"], "--rm": folders["rm"], flag: str(tmp_path / "nowhere")}
    code, _, err = run(capsys, PROMPT, "--lm", paths["--lm"], "--rm", paths["--rm"])
    assert code == 2
    assert f"argument {flag}: the folder" in err and "does not exist" in err


def test_unknown_hub_id_offline_names_the_flag(folders, capsys):
    code, _, err = run(capsys, PROMPT, "--lm", folders["lm"], "--rm", "nobody/no-such-reward-model")
    assert code == 2
    assert "argument --rm: cannot load 'nobody/no-such-reward-model'" in err and err.count("\n") == 1


def test_usage_errors_and_help_return_exit_codes(capsys):
    assert main(["generate", "--help"]) == 0
    assert "--show-rewards" in capsys.readouterr().out
    assert main(["generate", PROMPT, "--top-k", "x"]) == 2
    assert "invalid int value" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["no-such-command"]) == 2


def test_python_dash_m_runs_the_command_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hf_rgtg", "generate", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: hf-rgtg generate")
    for flag in ("--lm", "--rm", "--beta", "--top-k", "--sample", "--compare", "--no-chat-template"):
        assert flag in result.stdout


@pytest.mark.parametrize("sample", [False, True])
def test_beta_0_without_a_trace_skips_the_reward_model_while_decoding(
    folders, capsys, monkeypatch, sample, tmp_path
):
    calls = []
    for scorer in (hf_rgtg.scoring.CachedScorer, hf_rgtg.scoring.ReferenceScorer):
        original = scorer.score
        monkeypatch.setattr(
            scorer, "score", lambda self, c, original=original: calls.append(1) or original(self, c)
        )
    args = (
        PROMPT,
        *models(folders, greedy=False),
        "--max-new-tokens",
        "5",
        "--beta",
        "0",
        "--seed",
        "3",
        *([] if sample else ["--greedy"]),
    )
    code, out, _ = run(capsys, *args)
    assert code == 0 and calls == []
    assert out == reference(folders, beta=0.0, sample=sample, seed=3)["guided_text"] + "\n"
    # Shown per token, the rewards come from one pass of the reward model over the result.
    calls.clear()
    code, shown, _ = run(capsys, *args, "--show-rewards")
    assert code == 0 and calls == [] and shown.startswith(out)
    # A trace does need the guided run's own rewards.
    code, _, _ = run(capsys, *args, "--trace-html", str(tmp_path / "trace.html"))
    assert code == 0 and len(calls) == 5


def test_trace_html_writes_the_guided_run_with_its_candidates(folders, capsys, tmp_path):
    page = tmp_path / "trace.html"
    code, out, _ = run(
        capsys, PROMPT, *models(folders), "--max-new-tokens", "5", "--top-k", "4", "--trace-html", str(page)
    )
    assert code == 0
    text = page.read_text()
    assert text.count('class="tok"') == 5 and text.count("candidates: ") == 5
    assert out == reference(folders, top_k=4)["guided_text"] + "\n"
    code, _, err = run(capsys, PROMPT, *models(folders), "--trace-html", str(tmp_path / "no" / "t.html"))
    assert code == 2 and "argument --trace-html" in err


@pytest.mark.parametrize(
    "args, mentions",
    [
        (("--sample", "--temperature", "0"), ["--temperature", "a positive number"]),
        (("--sample", "--top-p", "1.5"), ["--top-p", "(0, 1]"]),
        (("--system-prompt", "Be kind.", "--no-chat-template"), ["--system-prompt", "chat template"]),
        (("--output", "out.jsonl"), ["--output", "goes with --input"]),
        (("--dtype", "float64"), ["--dtype", "invalid choice"]),
    ],
)
def test_generate_options_are_checked_by_flag(folders, capsys, args, mentions):
    code, out, err = run(capsys, PROMPT, *models(folders, greedy="--sample" not in args), *args)
    assert code == 2 and out == ""
    assert all(mention in err for mention in mentions), err


def test_the_streamed_reply_is_the_one_printed_whole(folders, capsys):
    args = (PROMPT, *models(folders), "--max-new-tokens", "5", "--compare")
    code, streamed, _ = run(capsys, *args)
    assert code == 0
    code, whole, _ = run(capsys, *args, "--no-stream")
    assert code == 0 and whole == streamed


def test_streaming_prints_the_reply_token_by_token(folders, capsys, monkeypatch):
    """The reply goes to stdout through a TextStreamer handed each token while generate() runs."""
    expected = reference(folders, max_new_tokens=8)["guided_text"] + "\n"
    seen_during_generation = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        streamer = kwargs["streamer"]
        real_put = streamer.put

        def put(value):
            real_put(value)
            seen_during_generation.append(capsys.readouterr().out)

        streamer.put = put
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    code, out, _ = run(capsys, PROMPT, *models(folders), "--max-new-tokens", "8")
    assert code == 0
    printed = "".join(seen_during_generation) + out
    assert printed == expected
    # TextStreamer prints at word boundaries: what it printed during the call plus its end is the reply.
    assert len(seen_during_generation) == 1 + 8  # the prompt, then each new token


def test_several_sequences_json_and_a_system_prompt(folders, capsys, generate_inputs):
    code, out, _ = run(
        capsys,
        PROMPT,
        *models(folders, greedy=False),
        "--max-new-tokens",
        "4",
        "--sample",
        "--num-return-sequences",
        "3",
    )
    assert code == 0
    assert [line for line in lines_of(out) if line.startswith("===")] == [
        f"=== guided (beta=2.0, top-k=10) {i}/3 ===" for i in (1, 2, 3)
    ]
    assert out.count("sequence reward: ") == 3
    code, out, _ = run(
        capsys,
        PROMPT,
        *models(folders, lm="chat-lm"),
        "--max-new-tokens",
        "4",
        "--json",
        "--compare",
        "--system-prompt",
        "Be kind.",
    )
    assert code == 0
    record = json.loads(out)
    assert record["prompt"] == PROMPT and record["settings"]["system_prompt"] == "Be kind."
    assert {"response", "reward", "unguided_response", "unguided_reward"} <= set(record)
    tokenizer = AutoTokenizer.from_pretrained(folders["chat-lm"])
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": PROMPT}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")[
        "input_ids"
    ]
    assert torch.equal(generate_inputs[-1], expected)
    code, _, err = run(capsys, PROMPT, *models(folders), "--system-prompt", "Be kind.")
    assert (
        code == 2 and "argument --system-prompt: the language model's tokenizer has no chat template" in err
    )


def test_dtype_and_device_place_both_models(folders, capsys, monkeypatch):
    placed = []
    original = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        if isinstance(self, (PrefixRewardModel, GenerationMixin)):
            placed.append((type(self).__name__, args))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    code, _, _ = run(
        capsys, PROMPT, *models(folders), "--max-new-tokens", "2", "--dtype", "bfloat16", "--device", "cpu"
    )
    assert code == 0
    assert {args for _, args in placed} == {(torch.device("cpu"), torch.bfloat16)}
    assert len(placed) == 2


def test_trace_png_draws_the_guided_run_as_steps_png_does(folders, capsys, tmp_path):
    from matplotlib.image import imread

    from hf_rgtg.visualization import steps_png

    image = tmp_path / "trace.png"
    code, _, _ = run(capsys, PROMPT, *models(folders), "--max-new-tokens", "5", "--trace-png", str(image))
    assert code == 0
    lm = AutoModelForCausalLM.from_pretrained(folders["lm"]).eval()
    rm = AutoModelForPrefixReward.from_pretrained(folders["rm"]).eval()
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(folders["lm"]))
    generator = transformers.pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm
    )
    [record] = generator(PROMPT, max_new_tokens=5, do_sample=False, return_full_text=False, return_trace=True)
    assert len(record["trace"]["steps"]) == 5
    expected = tmp_path / "expected.png"
    steps_png(
        [record["trace"]["steps"]], [record["trace"]["prompt_reward"]], tokenizer, expected, labels=["guided"]
    )
    assert (imread(image) == imread(expected)).all()


def test_trace_png_without_matplotlib_is_refused_before_loading(
    folders, capsys, tmp_path, without_matplotlib
):
    code, out, err = run(capsys, PROMPT, *models(folders), "--trace-png", str(tmp_path / "t.png"))
    assert code == 2 and out == "" and "hf_rgtg[plot]" in err


def two_rms(folders, *betas):
    return (
        "--lm",
        folders["lm"],
        "--rm",
        folders["rm"],
        "--rm",
        folders["rm2"],
        *(f"--beta={b}" for b in betas),
        "--greedy",
    )


def multi_reference(folders, beta, max_new_tokens=5, top_k=10):
    """What the CLI should print with both reward models, from the library: the text, each step's combined and
    per-model prefix rewards, and the sequence's combined and per-model rewards."""
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(folders["lm"]))
    lm = AutoModelForCausalLM.from_pretrained(folders["lm"]).eval()
    rms = [AutoModelForPrefixReward.from_pretrained(folders[name]).eval() for name in ("rm", "rm2")]
    inputs = tokenizer(PROMPT, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    guidance = RewardGuidance(rms, tokenizer, beta=beta, top_k=top_k, eos_token_id=0)
    torch.manual_seed(0)
    out = lm.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, **guidance.generate_kwargs()
    )
    steps = guidance.trace.steps(out[0], prompt_length=length)
    return {
        "text": tokenizer.decode(out[0, length:], skip_special_tokens=True),
        "prefix_rewards": [step.reward for step in steps],
        "prefix_rewards_per_model": [step.rewards_per_model for step in steps],
        "reward": guidance.sequence_rewards(out, length)[0].item(),
        "rewards_per_model": guidance.sequence_rewards(out, length, per_model=True)[0].tolist(),
    }


def test_two_reward_models_guide_as_the_library_does(folders, capsys):
    code, out, _ = run(capsys, PROMPT, *two_rms(folders, 1, 0.5), "--max-new-tokens", "5")
    assert code == 0
    expected = multi_reference(folders, [1.0, 0.5])
    assert out == expected["text"] + "\n"
    assert expected["text"] != reference(folders)["guided_text"], "the second reward model should change it"
    # One --beta weighs both.
    code, out, _ = run(
        capsys, PROMPT, *two_rms(folders, 0.5), "--max-new-tokens", "5", "--compare", "--no-stream"
    )
    assert code == 0 and "=== guided (beta=0.5, top-k=10) ===" in out
    assert multi_reference(folders, 0.5)["text"] in lines_of(out)


def test_show_rewards_with_two_reward_models_has_a_column_for_each(folders, capsys):
    code, out, _ = run(capsys, PROMPT, *two_rms(folders, 1, 0.5), "--max-new-tokens", "5", "--show-rewards")
    assert code == 0
    expected = multi_reference(folders, [1.0, 0.5])
    lines = lines_of(out)
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["step", "token"])
    assert lines[start].split() == ["step", "token", "r_t", "R", "R_1", "R_2"]
    rows = [line.rsplit(maxsplit=4) for line in lines[start + 1 : start + 6]]
    assert [float(row[2]) for row in rows] == pytest.approx(expected["prefix_rewards"], abs=1e-4)
    per_model = [(float(row[3]), float(row[4])) for row in rows]
    for got, want in zip(per_model, expected["prefix_rewards_per_model"], strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    a, b = expected["rewards_per_model"]
    assert lines[-1] == f"sequence reward: {expected['reward']:+.4f} = 1 * ({a:+.4f}) + 0.5 * ({b:+.4f})"


def test_json_with_two_reward_models_records_each_ones_reward(folders, capsys):
    code, out, _ = run(
        capsys,
        PROMPT,
        *two_rms(folders, 1, 0.5),
        "--max-new-tokens",
        "5",
        "--json",
        "--compare",
        "--show-rewards",
    )
    assert code == 0
    record = json.loads(out)
    expected = multi_reference(folders, [1.0, 0.5])
    assert record["response"] == expected["text"]
    assert record["reward"] == pytest.approx(expected["reward"], abs=1e-4)
    assert record["rewards_per_model"] == pytest.approx(expected["rewards_per_model"], abs=1e-4)
    assert len(record["unguided_rewards_per_model"]) == 2
    assert [len(each) for each in record["token_rewards_per_model"]] == [2]
    assert record["settings"]["rm"] == [folders["rm"], folders["rm2"]] and record["settings"]["beta"] == [
        1.0,
        0.5,
    ]


def test_one_reward_model_keeps_its_json_record(folders, capsys):
    code, out, _ = run(capsys, PROMPT, *models(folders), "--max-new-tokens", "3", "--json", "--show-rewards")
    assert code == 0
    record = json.loads(out)
    assert sorted(record) == ["prompt", "response", "reward", "settings", "token_rewards"]
    assert record["settings"]["rm"] == folders["rm"] and record["settings"]["beta"] == 1.0


@pytest.mark.parametrize(
    "rms, betas, mentions",
    [
        (
            2,
            ["1", "2", "3"],
            "argument --beta: given 3 times for 2 reward models (--rm): give one --beta per --rm",
        ),
        (1, ["1", "2"], "argument --beta: given 2 times for 1 reward model (--rm)"),
        (
            2,
            ["1", "nan"],
            "argument --beta: `beta` (=[1.0, nan]) holds one value per reward model: `beta[1]` (=nan)",
        ),
    ],
)
def test_the_betas_of_several_reward_models_are_checked_by_flag(folders, capsys, rms, betas, mentions):
    rm_flags = ("--rm", folders["rm"], "--rm", folders["rm2"])[: 2 * rms]
    code, out, err = run(capsys, PROMPT, "--lm", folders["lm"], *rm_flags, *(f"--beta={b}" for b in betas))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert mentions in err, err


def test_a_file_with_two_reward_models_resumes_under_the_same_settings(folders, capsys, tmp_path):
    prompts, output = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text('"hello there"\n"good day"\n')
    files = ("--input", str(prompts), "--output", str(output), "--max-new-tokens", "3")
    args = (*two_rms(folders, 1, 0.5), *files)
    assert run(capsys, *args)[0] == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [len(r["rewards_per_model"]) for r in records] == [2, 2]
    code, out, _ = run(capsys, *args)
    assert code == 0 and "0 generated now, 2 there before" in out
    code, _, err = run(capsys, *two_rms(folders, 1, 2), *files)
    assert code == 2 and "beta was [1.0, 0.5], now [1.0, 2.0]" in err
