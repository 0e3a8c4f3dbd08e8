"""The stopping criteria: the reward threshold and the budgets."""

import pytest
from conftest import (
    PAD,
    guided,
    left_padded,
    models,
)


def test_reward_threshold_stops_a_sequence():
    lm, rm = models("llama")
    ids, mask = left_padded()
    first, guidance = guided(lm, rm, ids, mask, max_new_tokens=8, do_sample=False)
    rewards = guidance.trace.rewards_of(first, ids.shape[1])
    threshold = max(rewards[0][2:]) if max(rewards[0][2:]) > max(rewards[0][:2]) else None
    if threshold is None:
        pytest.skip("row 0's rewards do not rise after step 2")
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=8, do_sample=False, reward_threshold=threshold)
    stop_step = next(i for i, r in enumerate(rewards[0]) if r >= threshold)
    assert out[0, ids.shape[1] + stop_step + 1 :].eq(PAD).all()
    assert len(guidance.trace.steps(out[0], ids.shape[1])) == stop_step + 1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_threshold_stops_beams(arch):
    # Beam search shows the stopping criteria its 2 * num_beams best continuations, not the next step's rows: a
    # continuation that reaches the threshold has to end there, and stay readable in the trace.
    lm, rm = models(arch)
    ids, mask = left_padded()
    kwargs = {"max_new_tokens": 8, "do_sample": False, "num_beams": 3}
    _, free = guided(lm, rm, ids, mask, **kwargs)
    threshold = sorted(free.trace.rewards[len(free.trace.prompts) :])[-len(free.trace.rewards) // 4]
    out, guidance = guided(lm, rm, ids, mask, reward_threshold=threshold, **kwargs)
    eos = lm.generation_config.eos_token_id
    stopped_early = 0
    for row in out:
        generated = row[ids.shape[1] :].tolist()
        rewards = guidance.trace.rewards_of(row[None], ids.shape[1])[0]
        assert rewards and all(r < threshold for r in rewards[:-1])
        if rewards[-1] >= threshold:  # it ends here: only padding follows
            assert set(generated[len(rewards) :]) <= {PAD, eos}
            stopped_early += len(rewards) < kwargs["max_new_tokens"]
        else:  # it ran to the end or produced EOS, and the trace covers every token
            assert len(rewards) == kwargs["max_new_tokens"] or generated[len(rewards) - 1] == eos
    assert stopped_early > 0


def test_budgets_stop_every_sequence():
    lm, rm = models("gpt2")
    ids, mask = left_padded()
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=10, do_sample=False, max_reward_calls=3)
    assert out.shape[1] == ids.shape[1] + 3 and guidance.state.reward_calls == 3
    out, guidance = guided(lm, rm, ids, mask, max_new_tokens=10, do_sample=False, max_time=1e-9)
    assert out.shape[1] == ids.shape[1] + 1
