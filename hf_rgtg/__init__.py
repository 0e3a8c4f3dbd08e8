"""hf_rgtg: reward-guided text generation for Hugging Face transformers.

Importing the package registers `PrefixRewardConfig` with `AutoConfig`, so saved prefix reward models load without
`trust_remote_code`. It patches nothing else.
"""

from transformers import AutoConfig

from .auto import AutoModelForPrefixReward
from .configuration import PrefixRewardConfig
from .data import PreferenceData, load_preference_data
from .defaults import (
    DEFAULT_LM_INSTALL_COMMAND,
    DEFAULT_LM_NAME,
    default_cache_dir,
    load_default_lm,
    load_default_rm,
)
from .evaluation import PrefixAccuracy, evaluate_prefix_accuracy
from .generation import (
    RewardGuidance,
    disable_reward_guided_generate,
    enable_reward_guided_generate,
    reward_guided_generate,
    reward_guided_generate_enabled,
    score_sequences,
)
from .modeling import PrefixRewardModel, PrefixRewardOutput, PrefixRewardPreTrainedModel
from .processing import (
    GuidanceState,
    GuidanceTrace,
    RewardGuidanceConfig,
    RewardGuidedLogitsProcessor,
    RewardStoppingCriteria,
    StepRecord,
)
from .scoring import CachedScorer, CandidateScorer, ReferenceScorer
from .tokenization import ensure_pad_token
from .training import (
    PrefixRewardCollator,
    PrefixRewardTrainer,
    PrefixRewardTrainingConfig,
    prefix_bradley_terry_loss,
)

__version__ = "0.1.0.dev0"

AutoConfig.register(PrefixRewardConfig.model_type, PrefixRewardConfig, exist_ok=True)

__all__ = [
    "PreferenceData",
    "PrefixAccuracy",
    "PrefixRewardCollator",
    "PrefixRewardTrainer",
    "PrefixRewardTrainingConfig",
    "evaluate_prefix_accuracy",
    "load_preference_data",
    "prefix_bradley_terry_loss",
    "CachedScorer",
    "CandidateScorer",
    "GuidanceState",
    "GuidanceTrace",
    "ReferenceScorer",
    "RewardGuidance",
    "RewardGuidanceConfig",
    "RewardGuidedLogitsProcessor",
    "RewardStoppingCriteria",
    "StepRecord",
    "disable_reward_guided_generate",
    "enable_reward_guided_generate",
    "reward_guided_generate",
    "reward_guided_generate_enabled",
    "score_sequences",
    "DEFAULT_LM_INSTALL_COMMAND",
    "DEFAULT_LM_NAME",
    "AutoModelForPrefixReward",
    "PrefixRewardConfig",
    "PrefixRewardModel",
    "PrefixRewardOutput",
    "PrefixRewardPreTrainedModel",
    "__version__",
    "default_cache_dir",
    "ensure_pad_token",
    "load_default_lm",
    "load_default_rm",
]
