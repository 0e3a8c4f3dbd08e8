"""The pipelines (hf_rgtg/pipelines.py): "reward-guided-text-generation", "token-rewards", and the plain
"text-generation" pipeline with the processor pair."""

import copy
import subprocess
import sys

import pytest
import torch
from conftest import CHAT_TEMPLATE, PAD, models
from transformers import pipeline

import hf_rgtg.pipelines  # noqa: F401  (registers the tasks)
from hf_rgtg import RewardGuidance, RewardGuidedTextGenerationPipeline, TokenRewardsPipeline, token_rewards

PROMPTS = ["Tell me a story.", "Hello there, how are you?"]


@pytest.fixture
def lm_rm():
    lm, rm = models("gpt2")
    lm.generation_config.pad_token_id = PAD
    return lm, rm


def guided_text(lm, rm, tokenizer, prompt, **settings):
    """Way 1, decoded as the text-generation pipeline decodes its new tokens."""
    inputs = tokenizer(prompt, return_tensors="pt")
    guidance = RewardGuidance(
        rm, tokenizer, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, **settings
    )
    out = lm.generate(**inputs, max_new_tokens=6, do_sample=False, **guidance.generate_kwargs())
    reward = guidance.sequence_rewards(out, inputs["input_ids"].shape[1]).item()
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True), reward


def test_the_guided_pipeline_equals_way_1_and_reports_the_reward(lm_rm, tokenizer):
    lm, rm = lm_rm
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, beta=2.0, top_k=4
    )
    assert isinstance(generator, RewardGuidedTextGenerationPipeline)
    for prompt in PROMPTS:
        [record] = generator(prompt, max_new_tokens=6, do_sample=False, return_full_text=False)
        text, reward = guided_text(lm, rm, tokenizer, prompt, beta=2.0, top_k=4)
        assert record["generated_text"] == text
        assert record["reward"] == pytest.approx(reward, abs=1e-5)
    # Settings per call override those of the construction.
    [per_call] = generator(
        PROMPTS[0], max_new_tokens=6, do_sample=False, return_full_text=False, beta=0.0, top_k=7
    )
    assert per_call["generated_text"] == guided_text(lm, rm, tokenizer, PROMPTS[0], beta=0.0, top_k=7)[0]


def test_batches_chat_inputs_and_several_return_sequences(lm_rm, tokenizer):
    lm, rm = lm_rm
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template, tokenizer.pad_token = CHAT_TEMPLATE, "<|endoftext|>"
    tokenizer.padding_side = "left"
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=4
    )
    chats = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    torch.manual_seed(0)
    out = generator(chats, max_new_tokens=5, do_sample=True, num_return_sequences=3, batch_size=2)
    assert len(out) == 2 and all(len(records) == 3 for records in out)
    for chat, records in zip(chats, out, strict=True):
        for record in records:
            messages = record["generated_text"]
            assert messages[:-1] == chat and messages[-1]["role"] == "assistant"
            assert isinstance(record["reward"], float)
    # Batched or one by one, greedy decoding gives the same replies.
    one_by_one = [generator(chat, max_new_tokens=5, do_sample=False)[0] for chat in chats]
    batched = [records[0] for records in generator(chats, max_new_tokens=5, do_sample=False, batch_size=2)]
    assert [r["generated_text"] for r in batched] == [r["generated_text"] for r in one_by_one]
    assert [r["reward"] for r in batched] == pytest.approx([r["reward"] for r in one_by_one], abs=1e-4)


def test_token_rewards_of_generated_sequences_telescope_to_their_reward(lm_rm, tokenizer):
    lm, rm = lm_rm
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=4
    )
    [record] = generator(PROMPTS[0], max_new_tokens=6, do_sample=False, return_token_rewards=True)
    credits = record["token_rewards"]
    assert len(credits["token_ids"]) == len(credits["rewards"]) == 6
    assert sum(credits["rewards"]) == pytest.approx(
        credits["prefix_rewards"][-1] - credits["prompt_reward"], abs=1e-5
    )
    assert credits["prefix_rewards"][-1] == pytest.approx(record["reward"], abs=1e-5)


def test_the_plain_text_generation_pipeline_takes_the_processor_pair(lm_rm, tokenizer):
    lm, rm = lm_rm
    plain = pipeline("text-generation", model=lm, tokenizer=tokenizer)
    guidance = RewardGuidance(
        rm, tokenizer, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD, top_k=4
    )
    [record] = plain(
        PROMPTS[1], max_new_tokens=6, do_sample=False, return_full_text=False, **guidance.generate_kwargs()
    )
    assert record["generated_text"] == guided_text(lm, rm, tokenizer, PROMPTS[1], top_k=4)[0]
    assert len(guidance.trace.roots) == 1


def test_names_resolve_through_the_hub_cache(lm_rm, tokenizer, hub_cache):
    lm, rm = lm_rm
    lm_id = hub_cache(lm, "org/tiny-lm", tokenizer=tokenizer)
    rm_id = hub_cache(rm, "org/tiny-rm", tokenizer=tokenizer)
    generator = pipeline("reward-guided-text-generation", model=lm_id, reward_model=rm_id, top_k=4)
    [record] = generator(PROMPTS[0], max_new_tokens=6, do_sample=False, return_full_text=False)
    assert record["generated_text"] == guided_text(lm, rm, tokenizer, PROMPTS[0], top_k=4)[0]
    scorer = pipeline("token-rewards", model=rm_id)
    assert isinstance(scorer, TokenRewardsPipeline)
    result = scorer({"prompt": PROMPTS[0], "response": " Once upon a time"})
    assert result["rewards"] == pytest.approx(
        token_rewards(rm, tokenizer, PROMPTS[0], " Once upon a time").rewards, abs=1e-5
    )


def test_the_token_rewards_pipeline_takes_dicts_tuples_and_lists(lm_rm, tokenizer):
    _, rm = lm_rm
    scorer = pipeline("token-rewards", model=rm, tokenizer=tokenizer)
    one = scorer(("Hello", "Thank you so much!"))
    expected = token_rewards(rm, tokenizer, "Hello", "Thank you so much!")
    assert one["tokens"] == expected.tokens and one["total"] == pytest.approx(expected.total, abs=1e-6)
    many = scorer([{"prompt": "Hello", "response": "Thank you so much!"}, ("Hi", "I hate it.")])
    assert len(many) == 2 and many[0]["rewards"] == pytest.approx(one["rewards"], abs=1e-6)
    with pytest.raises(ValueError, match="'prompt' and 'response' keys"):
        scorer({"prompt": "Hello"})
    with pytest.raises(TypeError, match="dict or a \\(prompt, response\\) tuple"):
        scorer("Hello")


def test_a_guided_pipeline_without_a_reward_model_says_what_to_pass(lm_rm, tokenizer):
    lm, _ = lm_rm
    generator = pipeline("reward-guided-text-generation", model=lm, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs `reward_model=`"):
        generator(PROMPTS[0], max_new_tokens=2)


def test_import_hf_rgtg_after_transformers_pipelines_registers_the_tasks(lm_rm, tokenizer, tmp_path):
    _, rm = lm_rm
    rm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    script = (
        "from transformers import pipeline\n"
        "import hf_rgtg\n"
        f"scorer = pipeline('token-rewards', model={str(tmp_path)!r})\n"
        "print(type(scorer).__name__, len(scorer(('Hello', 'Thank you'))['rewards']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["TokenRewardsPipeline", str(len(tokenizer("Thank you")["input_ids"]))]


def test_an_empty_prompt_is_refused_by_name(lm_rm, tokenizer):
    lm, rm = lm_rm
    generator = pipeline("reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm)
    with pytest.raises(ValueError, match="needs a non-empty one"):
        generator("", max_new_tokens=2)


def test_guide_false_generates_as_text_generation_and_still_reports_the_reward(lm_rm, tokenizer):
    lm, rm = lm_rm
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=4
    )
    plain = pipeline("text-generation", model=lm, tokenizer=tokenizer)
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    width = inputs["input_ids"].shape[1]
    guidance = RewardGuidance(rm, tokenizer, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD)
    for do_sample in (False, True):
        torch.manual_seed(3)
        [unguided] = generator(
            PROMPTS[0], max_new_tokens=6, do_sample=do_sample, return_full_text=False, guide=False
        )
        torch.manual_seed(3)
        [expected] = plain(PROMPTS[0], max_new_tokens=6, do_sample=do_sample, return_full_text=False)
        assert unguided["generated_text"] == expected["generated_text"]
        if do_sample:
            continue  # the pipeline draws its samples with the same seed, but not as a bare generate() does
        out = lm.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert tokenizer.decode(out[0, width:], skip_special_tokens=True) == unguided["generated_text"]
        assert unguided["reward"] == pytest.approx(guidance.sequence_rewards(out, width).item(), abs=1e-5)
    with pytest.raises(ValueError, match="`guide` \\(='no'\\) has to be True or False"):
        generator(PROMPTS[0], guide="no")


def test_beta_0_decodes_over_the_top_k_without_the_reward_model(lm_rm, tokenizer, monkeypatch):
    lm, rm = lm_rm
    generator = pipeline("reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm)
    plain = pipeline("text-generation", model=lm, tokenizer=tokenizer)
    torch.manual_seed(5)
    [expected] = plain(PROMPTS[1], max_new_tokens=6, do_sample=True, top_k=3, return_full_text=False)
    guided_steps = []
    monkeypatch.setattr(
        hf_rgtg.pipelines.RewardGuidance, "generate_kwargs", lambda *a, **k: guided_steps.append(1)
    )
    torch.manual_seed(5)
    [record] = generator(
        PROMPTS[1], max_new_tokens=6, do_sample=True, top_k=3, beta=0.0, return_full_text=False
    )
    assert guided_steps == []  # the guided processor never ran
    assert record["generated_text"] == expected["generated_text"]
    assert isinstance(record["reward"], float)


def test_return_trace_gives_each_guided_step_with_its_candidates(lm_rm, tokenizer):
    lm, rm = lm_rm
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=4
    )
    [record] = generator(
        PROMPTS[0], max_new_tokens=5, do_sample=False, return_full_text=False, return_trace=True, beta=0.0
    )
    trace = record["trace"]
    steps = trace["steps"]
    assert len(steps) == 5
    assert tokenizer.decode([step.token for step in steps]) == record["generated_text"]
    assert all(len(step.candidates) == 4 and step.token in step.candidates for step in steps)
    # Each step's reward is its own candidate's, and the last one is the sequence's reward.
    for step in steps:
        assert step.reward == pytest.approx(step.candidate_rewards[step.candidates.index(step.token)])
    assert steps[-1].reward == pytest.approx(record["reward"], abs=1e-4)
    [reference] = token_rewards(rm, tokenizer, PROMPTS[0], [record["generated_text"]])
    assert trace["prompt_reward"] == pytest.approx(reference.prompt_reward, abs=1e-4)


def test_token_rewards_and_traces_survive_batching(lm_rm, tokenizer):
    lm, rm = lm_rm
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token, tokenizer.padding_side = "<|endoftext|>", "left"
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=4
    )
    settings = {"max_new_tokens": 4, "do_sample": False, "return_token_rewards": True, "return_trace": True}
    batched = generator(PROMPTS, batch_size=2, num_return_sequences=1, **settings)
    for prompt, [record] in zip(PROMPTS, batched, strict=True):
        [alone] = generator(prompt, **settings)
        assert record["generated_text"] == alone["generated_text"]
        assert record["token_rewards"]["tokens"] == alone["token_rewards"]["tokens"]
        assert record["token_rewards"]["rewards"] == pytest.approx(
            alone["token_rewards"]["rewards"], abs=1e-4
        )
        assert [step.token for step in record["trace"]["steps"]] == [
            step.token for step in alone["trace"]["steps"]
        ]


@pytest.fixture
def second_rm():
    from conftest import tiny_prefix_rm

    return tiny_prefix_rm("gpt2", seed=9)


def test_two_reward_models_equal_way_1_and_report_each_ones_rewards(lm_rm, second_rm, tokenizer):
    lm, rm = lm_rm
    settings = {"beta": [2.0, 0.5], "top_k": 4}
    generator = pipeline(
        "reward-guided-text-generation",
        model=lm,
        tokenizer=tokenizer,
        reward_model=[rm, second_rm],
        **settings,
    )
    [record] = generator(
        PROMPTS[0],
        max_new_tokens=6,
        do_sample=False,
        return_full_text=False,
        return_token_rewards=True,
        return_trace=True,
    )
    text, reward = guided_text(lm, [rm, second_rm], tokenizer, PROMPTS[0], **settings)
    assert record["generated_text"] == text and record["reward"] == pytest.approx(reward, abs=1e-5)
    first, second = record["rewards_per_model"]
    assert record["reward"] == pytest.approx(2.0 * first + 0.5 * second, abs=1e-5)
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    way_1 = RewardGuidance(
        [rm, second_rm], tokenizer, eos_token_id=lm.generation_config.eos_token_id, **settings
    )
    out = lm.generate(**inputs, max_new_tokens=6, do_sample=False, **way_1.generate_kwargs())
    per_model = way_1.sequence_rewards(out, inputs["input_ids"].shape[1], per_model=True)[0]
    assert [first, second] == pytest.approx(per_model.tolist(), abs=1e-5)
    # Token rewards: each reward model's, and their weighted sum, which telescopes to the combined reward.
    combined, per_model = record["token_rewards"], record["token_rewards_per_model"]
    assert [d["prefix_rewards"][-1] for d in per_model] == pytest.approx([first, second], abs=1e-4)
    assert combined["prefix_rewards"][-1] == pytest.approx(record["reward"], abs=1e-4)
    assert combined["rewards"] == pytest.approx(
        [2.0 * a + 0.5 * b for a, b in zip(per_model[0]["rewards"], per_model[1]["rewards"], strict=True)]
    )
    assert combined["tokens"] == per_model[0]["tokens"] == per_model[1]["tokens"]
    # The trace: the combination, and each reward model's.
    trace = record["trace"]
    assert len(trace["prompt_rewards_per_model"]) == 2 and len(trace["steps"]) == 6
    assert trace["steps"][-1].rewards_per_model == pytest.approx((first, second), abs=1e-4)
    assert trace["steps"][-1].reward == pytest.approx(record["reward"], abs=1e-4)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_several_reward_models_survive_batching_and_several_return_sequences(
    lm_rm, second_rm, tokenizer, batch_size
):
    lm, rm = lm_rm
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token, tokenizer.padding_side = "<|endoftext|>", "left"
    generator = pipeline("reward-guided-text-generation", model=lm, tokenizer=tokenizer, top_k=4)
    torch.manual_seed(0)
    out = generator(
        PROMPTS,
        reward_model=[rm, second_rm],
        beta=1.0,
        max_new_tokens=4,
        do_sample=True,
        num_return_sequences=2,
        batch_size=batch_size,
        return_token_rewards=True,
    )
    assert len(out) == 2 and all(len(records) == 2 for records in out)
    for records in out:
        for record in records:
            assert len(record["rewards_per_model"]) == 2
            assert record["reward"] == pytest.approx(sum(record["rewards_per_model"]), abs=1e-5)
            per_model = record["token_rewards_per_model"]
            assert isinstance(per_model, list) and [type(d) for d in per_model] == [dict, dict]
            assert [d["prefix_rewards"][-1] for d in per_model] == pytest.approx(
                record["rewards_per_model"], abs=1e-4
            )


def test_one_reward_model_keeps_the_records_it_had(lm_rm, tokenizer):
    lm, rm = lm_rm
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=4
    )
    [record] = generator(PROMPTS[0], max_new_tokens=3, return_token_rewards=True, return_trace=True)
    assert sorted(record) == ["generated_text", "reward", "token_rewards", "trace"]
    assert sorted(record["trace"]) == ["prompt_reward", "steps"]


def test_every_beta_0_decodes_without_the_reward_models(lm_rm, second_rm, tokenizer, monkeypatch):
    lm, rm = lm_rm
    generator = pipeline(
        "reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=[rm, second_rm]
    )
    guided_steps = []
    monkeypatch.setattr(
        hf_rgtg.pipelines.RewardGuidance, "generate_kwargs", lambda *a, **k: guided_steps.append(1)
    )
    [record] = generator(PROMPTS[1], max_new_tokens=4, do_sample=False, beta=[0.0, 0.0])
    assert guided_steps == [] and len(record["rewards_per_model"]) == 2
    [record] = generator(PROMPTS[1], max_new_tokens=4, do_sample=False, beta=0.0)  # one beta for both
    assert guided_steps == []
