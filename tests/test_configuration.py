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
