"""hf_rgtg: reward-guided text generation for Hugging Face transformers.

The public names below are imported lazily, the way `transformers` imports its own: `import hf_rgtg` reads only
the installed transformers' version (and refuses one outside the supported range with an `ImportError` naming the
fix), so the command line answers `--help` without loading torch. A name is imported from its module on first use,
and an error inside that module surfaces then, unchanged.

`PrefixRewardConfig` is registered with `AutoConfig`, so that saved prefix reward models load without
`trust_remote_code`, as soon as its module is imported: at `import hf_rgtg` when transformers is already imported,
and otherwise on first use of any model, Auto class or loader of the package. The pipeline tasks
`"reward-guided-text-generation"` and `"token-rewards"` are registered when `hf_rgtg.pipelines` is imported: at
`import hf_rgtg` when `transformers.pipelines` is already imported (after `from transformers import pipeline`), and
otherwise by `import hf_rgtg.pipelines`. The package patches nothing else.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from . import compat as _compat  # noqa: F401  (checks the installed transformers at import)

__version__ = "0.1.0.dev0"

#: Each public name and the module that defines it.
_EXPORTS: dict[str, str] = {
    "AutoModelForPrefixReward": "auto",
    "PrefixRewardConfig": "configuration",
    "RewardGuidanceConfig": "configuration",
    "PreferenceData": "data",
    "PrefixRewardCollator": "data",
    "load_preference_data": "data",
    "DEFAULT_LM_INSTALL_COMMAND": "defaults",
    "DEFAULT_LM_NAME": "defaults",
    "default_cache_dir": "defaults",
    "load_default_lm": "defaults",
    "load_default_rm": "defaults",
    "PrefixAccuracy": "evaluation",
    "evaluate_prefix_accuracy": "evaluation",
    "RewardGuidance": "generation",
    "reward_guided_generate": "custom_generate",
    "disable_reward_guided_generate": "opt_in",
    "enable_reward_guided_generate": "opt_in",
    "reward_guided_generate_enabled": "opt_in",
    "score_sequences": "redistribution",
    "PrefixRewardModel": "modeling",
    "PrefixRewardOutput": "modeling",
    "PrefixRewardPreTrainedModel": "modeling",
    "RewardGuidedLogitsProcessor": "processing",
    "RewardStoppingCriteria": "stopping",
    "GenerationResult": "redistribution",
    "prefix_rewards": "redistribution",
    "sequence_reward": "redistribution",
    "TokenRewards": "redistribution",
    "dense_rewards": "redistribution",
    "token_rewards": "redistribution",
    "CachedScorer": "scoring",
    "CandidateScorer": "scoring",
    "ReferenceScorer": "scoring",
    "register_scorer": "scoring",
    "encode_prompt": "tokenization",
    "ensure_pad_token": "tokenization",
    "GuidanceTrace": "trace",
    "StepRecord": "trace",
    "GuidanceState": "tracking",
    "RowTracker": "tracking",
    "token_rewards_html": "visualization",
    "token_rewards_png": "visualization",
    "RewardGuidedTextGenerationPipeline": "pipelines",
    "TokenRewardsPipeline": "pipelines",
    "PrefixRewardTrainer": "training",
    "PrefixRewardTrainingConfig": "training",
    "prefix_bradley_terry_loss": "training",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if "transformers" in sys.modules:  # transformers' import is paid for already: register the configuration now
    importlib.import_module(f"{__name__}.configuration")
if "transformers.pipelines" in sys.modules:  # and transformers' pipelines': register the two tasks
    importlib.import_module(f"{__name__}.pipelines")
