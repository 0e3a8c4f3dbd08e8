"""The shared core of the vLLM processors (hf_rgtg/integrations/vllm/core.py and settings.py), without vLLM: driven
with fake batches as the processor classes build them."""

import json

import pytest
import torch
from conftest import VOCAB_SIZE, drive_serving, tiny_prefix_rm

from hf_rgtg.integrations.vllm.core import GuidanceCore, GuidedRow
from hf_rgtg.integrations.vllm.settings import SETTINGS_ENV, VllmGuidanceSettings, request_guidance


@pytest.fixture(scope="module")
def rm():
    return tiny_prefix_rm("llama", seed=3)


def core_step(core):
    """A `drive_serving` step over the core itself: requests keyed by slot, added when a slot's occupant changes."""
    occupants = {}

    def step(rows, sequences, logits):
        from conftest import SERVED_REQUESTS

        for name, slot in rows:
            if occupants.get(slot) != name:
                occupants[slot] = name
                core.add(slot, SERVED_REQUESTS[name][1])
        guided = []
        for index, (name, slot) in enumerate(rows):
            prompt, output = sequences[name]
            tokens = [*prompt, *output]
            guided.append(GuidedRow(index, slot, len(tokens), tokens[-1], lambda tokens=tokens: list(tokens)))
        return core.apply(logits, guided)

    return step


@pytest.mark.parametrize("scorer", ["auto", "reference"])
def test_core_follows_a_serving_schedule_exactly(rm, scorer):
    core = GuidanceCore(rm, VOCAB_SIZE, scorer=scorer)
    assert drive_serving(core_step(core), rm) == 7
    # b and d remain, in one cohort each (d arrived alone; b was rebuilt after it was not scheduled)
    assert sorted(len(cohort.members) for cohort in core.cohorts) == [1, 1]


def test_core_shares_one_scorer_among_requests_that_start_together(rm):
    core = GuidanceCore(rm, VOCAB_SIZE)
    for key in range(3):
        core.add(key, {"beta": 1.0, "top_k": 4})
    rows = [GuidedRow(key, key, 2 + key, 5, lambda key=key: [4] * (1 + key) + [5]) for key in range(3)]
    core.apply(torch.randn(3, VOCAB_SIZE), rows)
    assert len(core.cohorts) == 1 and len(core.cohorts[0].members) == 3
    core.remove(1)
    rows = [GuidedRow(index, key, 3 + key, 6, lambda: []) for index, key in enumerate([0, 2])]
    core.apply(torch.randn(2, VOCAB_SIZE), rows)
    assert len(core.cohorts) == 1 and len(core.cohorts[0].members) == 2  # the finished row was dropped


def test_requests_without_guidance_cost_nothing(rm):
    core = GuidanceCore(rm, VOCAB_SIZE)
    assert core.add(0, None) is False and core.add(1, {"max_tokens_hint": 3}) is False
    logits = torch.randn(2, VOCAB_SIZE)
    out = core.apply(logits, [GuidedRow(0, 0, 1, 1, lambda: [1])])
    assert out is logits and not core.cohorts


def test_trace_file_records_prompt_rewards_and_candidates(rm, tmp_path):
    trace = tmp_path / "trace.jsonl"
    core = GuidanceCore(rm, VOCAB_SIZE, trace_file=str(trace))
    core.add(0, {"beta": 1.0, "top_k": 3, "reward_trace_id": "p0"})
    core.apply(torch.randn(1, VOCAB_SIZE), [GuidedRow(0, 0, 2, 7, lambda: [6, 7])])
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["p0", "p0"]
    assert set(lines[0]) == {"id", "length", "reward"} and len(lines[1]["candidates"]) == 3


def test_rows_past_the_reward_models_positions_pass_through(rm, caplog):
    core = GuidanceCore(rm, VOCAB_SIZE)
    core.add(0, {"beta": 1.0, "top_k": 3})
    long = [5] * rm.max_positions
    logits = torch.randn(1, VOCAB_SIZE)
    out = core.apply(logits.clone(), [GuidedRow(0, 0, len(long), 5, lambda: long)])
    assert torch.equal(out, logits)
    assert "continue unguided" in caplog.text


def test_a_reward_model_with_another_vocabulary_is_refused(rm):
    with pytest.raises(ValueError, match="served model's vocabulary.*bridged"):
        GuidanceCore(rm, VOCAB_SIZE + 1)


@pytest.mark.parametrize(
    "extra_args, message",
    [
        ({"beta": 1.0, "reward_threshold": 2.0}, "`reward_threshold` in `extra_args` is not supported"),
        ({"top_k": 0}, "`top_k`"),
        ({"beta": [1.0, 2.0]}, "single value"),
        ({"beta": 1.0, "reward_transform": 3}, "name of a transform"),
    ],
)
def test_bad_request_settings_name_the_setting(extra_args, message):
    with pytest.raises(ValueError, match=message):
        request_guidance(extra_args)


def test_engine_settings_from_the_environment_and_additional_config(monkeypatch, tmp_path):
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    assert VllmGuidanceSettings.from_engine({}) == VllmGuidanceSettings()
    monkeypatch.setenv(SETTINGS_ENV, '{"dtype": "bfloat16"}')
    assert VllmGuidanceSettings.from_engine(None).dtype == "bfloat16"
    path = tmp_path / "settings.json"
    path.write_text('{"scorer": "reference"}')
    monkeypatch.setenv(SETTINGS_ENV, str(path))
    assert VllmGuidanceSettings.from_engine(None).scorer == "reference"
    assert VllmGuidanceSettings.from_engine({"hf_rgtg": {"trace_file": "t"}}).trace_file == "t"
    monkeypatch.setenv(SETTINGS_ENV, "no/such/file.json")
    with pytest.raises(ValueError, match="neither a JSON object nor the path"):
        VllmGuidanceSettings.from_engine(None)
    with pytest.raises(ValueError, match="`dtype`"):
        VllmGuidanceSettings(dtype="float8")


def test_importing_the_integration_imports_no_vllm():
    import subprocess
    import sys

    code = "import sys, hf_rgtg.integrations.vllm; assert 'vllm' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
