"""Several reward models at once: guided decoding with `reward_model=[rm1, rm2]` against a hand-written reference
of the rule `log p + b1 * r1 + b2 * r2`, the trace's per-model rewards, and what one reward model keeps."""

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    PAD,
    VOCAB_SIZE,
    guided,
    left_padded,
    models,
    tiny_config,
    tiny_prefix_rm,
)
from transformers import LogitsProcessor, LogitsProcessorList

from hf_rgtg import PrefixRewardConfig, PrefixRewardModel, ReferenceScorer, RewardGuidance
from hf_rgtg.scorer_set import ScorerSet

BETAS = [1.0, 0.5]
TOP_K = 5


def two_models(arch):
    lm, rm1 = models(arch)
    return lm, rm1, tiny_prefix_rm(arch, seed=9)


class ReferenceRule(LogitsProcessor):
    """The rule, written out: every row re-encoded with each reward model's reference scorer at every step (so
    beam search's reordering needs no bookkeeping), and `log p + sum_i b_i * r_i` over the top-k."""

    def __init__(self, reward_models, betas, prompt_mask, top_k=TOP_K):
        self.reward_models, self.betas, self.prompt_mask, self.top_k = (
            reward_models,
            betas,
            prompt_mask,
            top_k,
        )

    def mask(self, input_ids):
        prompt = self.prompt_mask.repeat_interleave(len(input_ids) // len(self.prompt_mask), dim=0)
        generated = torch.ones(len(input_ids), input_ids.shape[1] - prompt.shape[1], dtype=torch.long)
        return torch.cat([prompt, generated], dim=1)

    def __call__(self, input_ids, scores):
        top, candidates = scores.log_softmax(-1).topk(self.top_k)
        combined = top
        for beta, rm in zip(self.betas, self.reward_models, strict=True):
            scorer = ReferenceScorer(rm)
            scorer.reset(input_ids, self.mask(input_ids))
            combined = combined + beta * scorer.score(candidates)
        return torch.full_like(scores, float("-inf")).scatter(1, candidates, combined)


class Recorder(LogitsProcessor):
    """Keeps the scores it sees (the processors' output before it) at every step."""

    def __init__(self):
        self.steps = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.clone())
        return scores


MODES = {
    "greedy": {"do_sample": False},
    "sample": {"do_sample": True, "temperature": 0.8},
    "beams": {"do_sample": False, "num_beams": 3},
}


def run_both(lm, reward_models, betas, ids, mask, scorer="cached", eos_token_id=None, **gen):
    """The guided run (way 1) and the reference rule's, each with the same seed; the outputs, the scores of every
    step, and the guidance."""
    eos = lm.generation_config.eos_token_id if eos_token_id is None else eos_token_id
    common = {"attention_mask": mask, "max_new_tokens": 8, "pad_token_id": PAD, "eos_token_id": eos, **gen}
    guidance = RewardGuidance(
        reward_models, beta=betas, top_k=TOP_K, eos_token_id=eos, pad_token_id=PAD, scorer=scorer
    )
    kwargs, recorded = guidance.generate_kwargs(attention_mask=mask), Recorder()
    kwargs["logits_processor"].append(recorded)
    torch.manual_seed(0)
    out = lm.generate(ids, **common, **kwargs)
    reference = Recorder()
    rule = ReferenceRule(
        reward_models, betas if isinstance(betas, list) else [betas] * len(reward_models), mask
    )
    torch.manual_seed(0)
    expected = lm.generate(ids, **common, logits_processor=LogitsProcessorList([rule, reference]))
    return out, expected, recorded.steps, reference.steps, guidance


def assert_same_scores(steps, reference_steps):
    assert len(steps) == len(reference_steps)
    for got, want in zip(steps, reference_steps, strict=True):
        assert torch.equal(got.isfinite(), want.isfinite())
        torch.testing.assert_close(got[got.isfinite()], want[want.isfinite()], atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_two_reward_models_follow_the_reference_rule(arch, mode):
    lm, rm1, rm2 = two_models(arch)
    ids, mask = left_padded()
    out, expected, steps, reference_steps, _ = run_both(lm, [rm1, rm2], BETAS, ids, mask, **MODES[mode])
    assert torch.equal(out, expected)
    assert_same_scores(steps, reference_steps)


def test_sampling_with_the_reference_scorers_gives_the_reference_rule_bit_for_bit():
    lm, rm1, rm2 = two_models("llama")
    ids, mask = left_padded()
    out, expected, steps, reference_steps, _ = run_both(
        lm, [rm1, rm2], [2.0, -1.0], ids, mask, scorer="reference", do_sample=True, num_return_sequences=2
    )
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(steps, reference_steps, strict=True))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eos_mid_batch_ends_one_row_and_the_others_follow_the_rule(arch):
    lm, rm1, rm2 = two_models(arch)
    ids, mask = left_padded()
    # A token that one row produces first at step 1 or later, and another row never: as EOS it ends one row only.
    free, _ = guided(lm, [rm1, rm2], ids, mask, max_new_tokens=10, do_sample=False, top_k=TOP_K)
    rows = free[:, ids.shape[1] :].tolist()
    eos = next(
        token
        for token in sorted({t for row in rows for t in row} - {PAD})
        if min(row.index(token) for row in rows if token in row) >= 1
        and any(token not in row for row in rows)
    )
    out, expected, steps, reference_steps, guidance = run_both(
        lm, [rm1, rm2], 1.0, ids, mask, eos_token_id=eos, do_sample=False, max_new_tokens=10
    )  # a single beta, 1.0, weighs both
    assert torch.equal(out, expected)
    lengths = [len(guidance.trace.steps(row, ids.shape[1])) for row in out]
    assert min(lengths) < 10 == max(lengths), lengths
    # Rows that ended keep being padded; the rows still running were scored as the rule scores them.
    running = [row for row, length in enumerate(lengths) if length == 10]
    assert_same_scores([s[running] for s in steps], [s[running] for s in reference_steps])


def test_the_trace_records_each_reward_models_reward_and_their_combination():
    lm, rm1, rm2 = two_models("qwen2")
    ids, mask = left_padded()
    out, guidance = guided(
        lm, [rm1, rm2], ids, mask, max_new_tokens=6, do_sample=False, beta=BETAS, top_k=TOP_K
    )
    width = ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(3, out.shape[1] - width, dtype=torch.long)], dim=1)
    direct = [rm(out, attention_mask=full_mask).rewards for rm in (rm1, rm2)]  # every prefix's reward
    for row, sequence in enumerate(out):
        steps = guidance.trace.steps(sequence, width)
        assert len(steps) == 6
        prompt = guidance.trace.prompt_rewards_per_model(sequence, width)
        assert prompt == pytest.approx([d[row, width - 1].item() for d in direct], abs=1e-4)
        assert guidance.trace.prompt_reward(sequence, width) == pytest.approx(
            BETAS[0] * prompt[0] + BETAS[1] * prompt[1], abs=1e-5
        )
        for t, step in enumerate(steps):
            assert step.rewards_per_model == pytest.approx(
                [d[row, width + t].item() for d in direct], abs=1e-4
            )
            assert step.reward == pytest.approx(
                BETAS[0] * step.rewards_per_model[0] + BETAS[1] * step.rewards_per_model[1], abs=1e-5
            )
            # The candidates' rewards, combined and per model; greedy decoding took the best combined score.
            assert len(step.candidate_rewards_per_model) == len(step.candidates) == TOP_K
            for reward, each in zip(step.candidate_rewards, step.candidate_rewards_per_model, strict=True):
                assert reward == pytest.approx(BETAS[0] * each[0] + BETAS[1] * each[1], abs=1e-5)
            assert step.token in step.candidates
            index = step.candidates.index(step.token)
            assert step.candidate_rewards_per_model[index] == step.rewards_per_model


def test_candidates_rewards_per_model_match_each_reference_scorer():
    lm, rm1, rm2 = two_models("gpt2")
    ids, mask = left_padded()
    out, guidance = guided(lm, [rm1, rm2], ids, mask, max_new_tokens=4, do_sample=False, beta=BETAS)
    width = ids.shape[1]
    for t in range(4):
        prefix = out[:, : width + t]
        prefix_mask = torch.cat([mask, torch.ones(3, t, dtype=torch.long)], dim=1)
        steps = [guidance.trace.steps(row, width)[t] for row in out]
        candidates = torch.tensor([step.candidates for step in steps])
        for model, rm in enumerate((rm1, rm2)):
            scorer = ReferenceScorer(rm)
            scorer.reset(prefix, prefix_mask)
            expected = scorer.score(candidates)
            got = torch.tensor([[each[model] for each in step.candidate_rewards_per_model] for step in steps])
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("do_sample", [False, True])
def test_a_second_reward_model_with_beta_0_changes_nothing(do_sample):
    lm, rm1, rm2 = two_models("llama")
    ids, mask = left_padded()
    gen = {"max_new_tokens": 8, "do_sample": do_sample}
    alone, _ = guided(lm, rm1, ids, mask, beta=2.0, **gen)
    with_second, guidance = guided(lm, [rm1, rm2], ids, mask, beta=[2.0, 0.0], **gen)
    assert torch.equal(alone, with_second)
    other_alone, _ = guided(lm, rm2, ids, mask, beta=1.5, **gen)
    first_zero, _ = guided(lm, [rm1, rm2], ids, mask, beta=[0.0, 1.5], **gen)
    assert torch.equal(other_alone, first_zero)
    # The weightless one is still scored, and its rewards are in the trace.
    assert len(guidance.trace.steps(with_second[0], ids.shape[1])[0].rewards_per_model) == 2


def test_one_reward_model_in_a_list_is_the_single_reward_model():
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    runs = [
        guided(lm, reward_models, ids, mask, max_new_tokens=6, do_sample=False, beta=beta)
        for reward_models, beta in ((rm, 1.5), ([rm], 1.5), ([rm], [1.5]), ((rm,), (1.5,)))
    ]
    (out, first), *others = runs
    for other_out, other in others:
        assert torch.equal(out, other_out)
        assert other.trace.rewards == first.trace.rewards
    # One reward model's trace gives its reward as the only one per model.
    step = first.trace.steps(out[0], ids.shape[1])[0]
    assert step.rewards_per_model == (step.reward,)
    assert step.candidate_rewards_per_model == [(reward,) for reward in step.candidate_rewards]
    assert first.trace.rewards_per_model == [None] * len(first.trace.rewards)  # nothing more is stored
    assert first.reward_model is rm and first.scorer is first.scorers[0]


def test_each_reward_model_has_its_own_transform_and_standardisation():
    rm1, rm2 = tiny_prefix_rm("llama", seed=4), tiny_prefix_rm("llama", seed=5)
    settings = {
        "beta": [2.0, -0.5],
        "reward_transform": ["sigmoid", lambda r: 3 * r],
        "standardize_rewards": [False, True],
    }
    guidance = RewardGuidance([rm1, rm2], top_k=4, scorer="reference", **settings)
    ids, mask = left_padded()
    guidance.tracker.prepare(mask)
    scores = torch.randn(3, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    out = guidance.logits_processor(ids, scores.clone())

    top, candidates = scores.log_softmax(-1).topk(4)
    rewards = []
    for rm in (rm1, rm2):
        scorer = ReferenceScorer(rm)
        scorer.reset(ids, mask)
        rewards.append(scorer.score(candidates))
    second = 3 * rewards[1]
    second = (second - second.mean(-1, keepdim=True)) / (second.std(-1, unbiased=False, keepdim=True) + 1e-6)
    combined = top + 2.0 * rewards[0].sigmoid() - 0.5 * second
    expected = torch.full_like(scores, float("-inf")).scatter(1, candidates, combined)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    # The trace keeps the raw rewards, combined with the betas alone, and each reward model's.
    roots = [guidance.trace.roots[tuple(row)] for row in ids.tolist()]
    recorded = torch.tensor([guidance.trace.candidates[root][1] for root in roots])
    torch.testing.assert_close(recorded, 2.0 * rewards[0] - 0.5 * rewards[1], atol=1e-4, rtol=0)
    per_model = torch.tensor([guidance.trace.candidates_per_model[root] for root in roots])
    torch.testing.assert_close(per_model, torch.stack(rewards, dim=-1), atol=1e-4, rtol=0)


def test_one_transform_or_flag_applies_to_every_reward_model():
    rm1, rm2 = tiny_prefix_rm("gpt2", seed=4), tiny_prefix_rm("gpt2", seed=5)
    ids, mask = left_padded()
    scores = torch.randn(3, VOCAB_SIZE, generator=torch.Generator().manual_seed(1))
    outputs = []
    for settings in (
        {"reward_transform": "clamp", "standardize_rewards": True},
        {"reward_transform": ["clamp", "clamp"], "standardize_rewards": [True, True]},
    ):
        guidance = RewardGuidance([rm1, rm2], beta=[1.0, 0.5], top_k=4, scorer="reference", **settings)
        guidance.tracker.prepare(mask)
        outputs.append(guidance.logits_processor(ids, scores.clone()))
    assert torch.equal(*outputs)


def test_sequence_rewards_are_per_model_and_combined():
    lm, rm1, rm2 = two_models("gpt2")
    ids, mask = left_padded()
    out, guidance = guided(lm, [rm1, rm2], ids, mask, max_new_tokens=5, do_sample=False, beta=BETAS)
    width = ids.shape[1]
    per_model = guidance.sequence_rewards(out, width, mask, per_model=True)
    assert per_model.shape == (3, 2)
    for model, rm in enumerate((rm1, rm2)):
        alone = RewardGuidance(rm, eos_token_id=lm.generation_config.eos_token_id, pad_token_id=PAD)
        assert torch.equal(per_model[:, model], alone.sequence_rewards(out, width, mask))
    combined = guidance.sequence_rewards(out, width, mask)
    torch.testing.assert_close(combined, BETAS[0] * per_model[:, 0] + BETAS[1] * per_model[:, 1])
    # The last step's reward in the trace is the sequence's reward.
    last = [guidance.trace.steps(row, width)[-1] for row in out]
    assert [step.reward for step in last] == pytest.approx(combined.tolist(), abs=1e-4)


def test_the_reward_threshold_reads_the_combination():
    lm, rm1, rm2 = two_models("llama")
    ids, mask = left_padded()
    gen = {"max_new_tokens": 8, "do_sample": False, "beta": BETAS}
    free, guidance = guided(lm, [rm1, rm2], ids, mask, **gen)
    steps = guidance.trace.steps(free[0], ids.shape[1])
    combined = [step.reward for step in steps]
    first_models = [step.rewards_per_model[0] for step in steps]
    # A threshold that the combination reaches later than the first reward model alone does.
    candidates = [c for c in combined[2:] if any(r >= c for r in first_models[: combined.index(c)])]
    if not candidates:
        pytest.skip("the combination never crosses later than the first reward model")
    threshold = candidates[0]
    stop = next(i for i, r in enumerate(combined) if r >= threshold)
    out, stopped = guided(lm, [rm1, rm2], ids, mask, reward_threshold=threshold, **gen)
    assert len(stopped.trace.steps(out[0], ids.shape[1])) == stop + 1
    assert out[0, ids.shape[1] + stop + 1 :].eq(PAD).all()


def test_the_reward_model_with_the_fewest_positions_limits_the_call():
    lm, rm1 = models("gpt2")
    torch.manual_seed(0)
    short = PrefixRewardModel(PrefixRewardConfig(text_config=tiny_config("gpt2", n_positions=32))).eval()
    ids, mask = left_padded()
    guidance = RewardGuidance([rm1, short], top_k=3, pad_token_id=PAD)
    assert guidance.scorers.max_positions == 32 and guidance.scorers.positions_holder == "`reward_model[1]`"
    with pytest.warns(UserWarning, match=r"stopped after 26 new tokens.*`reward_model\[1\]` has at most 32"):
        out = lm.generate(
            ids, attention_mask=mask, max_new_tokens=30, pad_token_id=PAD, **guidance.generate_kwargs(mask)
        )
    assert out.shape[1] == ids.shape[1] + 27


def test_a_scorer_set_answers_as_its_only_scorer_does():
    rm = tiny_prefix_rm("gpt2")
    scorer = ReferenceScorer(rm)
    scorers = ScorerSet.of(scorer)
    assert ScorerSet.of(scorers) is scorers and list(scorers) == [scorer] and len(scorers) == 1
    assert scorers.max_positions == scorer.max_positions and scorers.positions_holder == "the reward model"
    assert scorers.default_eos_token_id == scorer.default_eos_token_id
    with pytest.raises(ValueError, match="at least one scorer"):
        ScorerSet([])
