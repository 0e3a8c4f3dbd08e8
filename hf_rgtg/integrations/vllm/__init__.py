"""Reward-guided decoding inside vLLM, as a logits processor with the reward model in the engine's worker.

One processor class per vLLM interface, both thin over one shared core ([`core.GuidanceCore`]), which does not
import vLLM:

- `hf_rgtg.integrations.vllm.v1:RewardGuidedProcessor`: the V1 model runner (vLLM's CPU build, and GPU builds with
  `VLLM_USE_V2_MODEL_RUNNER=0`);
- `hf_rgtg.integrations.vllm.v2:RewardGuidedProcessor`: Model Runner V2 (the GPU default).

The engine's settings (which reward model) are [`settings.VllmGuidanceSettings`]; a request's guidance settings
travel in `SamplingParams.extra_args` (`vllm_xargs` over HTTP). Importing this package imports neither vLLM nor
torch; its two processor modules import vLLM.
"""

#: The class path of each processor, by vLLM model runner, for `--logits-processors`.
PROCESSOR_PATHS = {
    "v1": "hf_rgtg.integrations.vllm.v1:RewardGuidedProcessor",
    "v2": "hf_rgtg.integrations.vllm.v2:RewardGuidedProcessor",
}

__all__ = ["PROCESSOR_PATHS"]
