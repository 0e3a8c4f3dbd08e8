"""RewardGuidance, the façade: what it accepts as a reward model."""

import pytest
from conftest import (
    models,
)

from hf_rgtg import (
    PrefixRewardModel,
    RewardGuidance,
)


def test_reward_model_argument_checks(tmp_path):
    lm, rm = models("gpt2")
    with pytest.raises(ValueError, match="has to be a PrefixRewardModel.*got int"):
        RewardGuidance(42)
    with pytest.raises(
        ValueError, match="GPT2LMHeadModel, not a PrefixRewardModel.*AutoModelForPrefixReward"
    ):
        RewardGuidance(lm)
    rm.save_pretrained(tmp_path)
    loaded = RewardGuidance(str(tmp_path), top_k=2)
    assert isinstance(loaded.reward_model, PrefixRewardModel) and not loaded.reward_model.training
    for missing in (str(tmp_path / "nope"), tmp_path / "nope", "./my_rm"):
        with pytest.raises(
            ValueError, match="`reward_model` .* is not a folder.*save_pretrained.*'org/name'"
        ):
            RewardGuidance(missing)
    with pytest.raises(OSError, match="Could not load `reward_model` 'no-such-org/no-such-rm'"):
        RewardGuidance("no-such-org/no-such-rm")
