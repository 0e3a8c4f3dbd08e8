"""RewardGuidanceConfig: every setting checked by name."""

import math

import pytest
import torch
from conftest import (
    VOCAB_SIZE,
    tiny_prefix_rm,
)

from hf_rgtg import (
    RewardGuidance,
    RewardGuidanceConfig,
)


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), -math.inf, "2"])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="`beta`.*finite number"):
        RewardGuidance(tiny_prefix_rm("gpt2"), beta=beta)


@pytest.mark.parametrize("top_k", [0, -3, VOCAB_SIZE + 1])
def test_bad_top_k(top_k):
    with pytest.raises(ValueError, match="`top_k`"):
        RewardGuidance(tiny_prefix_rm("gpt2"), top_k=top_k)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"reward_threshold": "0.5"}, "`reward_threshold`.*finite number"),
        ({"max_time": "3"}, "`max_time`.*finite number"),
        ({"max_time": 0}, "`max_time`.*positive"),
        ({"max_reward_calls": 2.5}, "`max_reward_calls`.*positive integer"),
        ({"standardize_rewards": "no"}, "`standardize_rewards`.*True or False"),
        ({"record_candidates": 1}, "`record_candidates`.*True or False"),
        ({"top_k": torch.tensor(2.5)}, "`top_k`.*positive integer"),
    ],
)
def test_bad_settings_are_named(setting, message):
    with pytest.raises(ValueError, match=message):
        RewardGuidance(tiny_prefix_rm("gpt2"), **setting)


def test_numpy_and_tensor_scalars_are_accepted_as_settings():
    import numpy as np

    config = RewardGuidanceConfig(beta=np.float32(2), top_k=np.int64(5), max_reward_calls=torch.tensor(3))
    assert (config.beta, config.top_k, config.max_reward_calls) == (2.0, 5, 3)
    assert type(config.beta) is float and type(config.top_k) is int and type(config.max_reward_calls) is int


@pytest.mark.parametrize(
    ("settings", "needed"),
    [
        ({"beta": [0.0, 0.0]}, False),
        ({"beta": (0, 0, 0)}, False),
        ({"beta": [0.0, 1.0]}, True),
        ({"beta": [-1.0, 0.0]}, True),
        ({"beta": [0.0, 0.0], "record_candidates": True}, True),
        ({"beta": [0.0, 0.0], "reward_threshold": 1.0}, True),
        ({"beta": 0.0}, False),
    ],
)
def test_several_reward_models_need_rewards_while_decoding_unless_every_beta_is_0(settings, needed):
    assert RewardGuidanceConfig(**settings).needs_rewards_while_decoding is needed


def test_per_model_settings_and_their_combination():
    config = RewardGuidanceConfig(beta=(1.0, -2.0), reward_transform=["sigmoid", "clamp"])
    assert config.beta == [1.0, -2.0]  # a tuple is kept as a list
    assert config.per_model("beta", 2) == [1.0, -2.0]
    assert config.per_model("standardize_rewards", 2) == [False, False]
    rewards = torch.tensor([[[0.5, 0.25], [-1.0, 1.0]]])  # (rows, k, reward models)
    torch.testing.assert_close(config.combine_rewards(rewards), torch.tensor([[0.0, -3.0]]))
    torch.testing.assert_close(config.transform(rewards[..., 1], 1), rewards[..., 1].clamp(0, 1))
    torch.testing.assert_close(config.transform(rewards[..., 0], 0), rewards[..., 0].sigmoid())
    one = RewardGuidanceConfig(beta=3.0)
    assert one.per_model("beta", 3) == [3.0, 3.0, 3.0]
    # With one reward model the combination is its reward, whatever its weight.
    torch.testing.assert_close(one.combine_rewards(rewards[..., :1]), rewards[..., 0])
    with pytest.raises(ValueError, match=r"`beta` \(=\[1.0, -2.0\]\) has 2 values for 3 reward models"):
        config.check_num_models(3)
