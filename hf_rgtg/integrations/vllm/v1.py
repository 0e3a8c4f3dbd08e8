"""The processor class of vLLM's V1 model runner (CPU, and GPU with `VLLM_USE_V2_MODEL_RUNNER=0`):
`vllm serve <model> --logits-processors hf_rgtg.integrations.vllm.v1:RewardGuidedProcessor`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from .core import GuidanceCore, GuidedRow
from .settings import VllmGuidanceSettings, request_guidance

if TYPE_CHECKING:
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)


class RewardGuidedProcessor(LogitsProcessor):
    r"""
    Reward-guided decoding (ARGS, PARGS) as a logits processor of vLLM's V1 model runner.

    Built once per engine worker: it loads the reward model the engine's settings name
    ([`VllmGuidanceSettings`][hf_rgtg.integrations.vllm.settings.VllmGuidanceSettings], from
    `additional_config["hf_rgtg"]` or `$HF_RGTG_VLLM_CONFIG`). A request is guided when its
    `SamplingParams.extra_args` hold `beta`, `top_k` or another guidance setting; each step its row becomes
    `log p + beta * r` over the top-k tokens and `-inf` elsewhere. Other requests pass through untouched. Batch
    indices, reordering and removal are translated for the shared [`GuidanceCore`].

    Args:
        vllm_config (`VllmConfig`): the engine's configuration.
        device (`torch.device`): where the logits live; the reward model is loaded there.
        is_pin_memory (`bool`): unused.

    Examples:

    ```python
    >>> from vllm import LLM, SamplingParams  # doctest: +SKIP
    >>> from hf_rgtg.defaults import default_lm_path
    >>> llm = LLM(str(default_lm_path()), dtype="float32", max_model_len=512,  # doctest: +SKIP
    ...           logits_processors=["hf_rgtg.integrations.vllm.v1:RewardGuidedProcessor"])
    >>> params = SamplingParams(temperature=0, max_tokens=32, extra_args={"beta": 2.0, "top_k": 10})
    >>> llm.generate(["Tell me about your day."], params)[0].outputs[0].text  # doctest: +SKIP
    ```
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a request's guidance settings at admission (an HTTP 400 behind `vllm serve`)."""
        request_guidance(sampling_params.extra_args)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        settings = VllmGuidanceSettings.from_engine(vllm_config.additional_config)
        vocab_size = vllm_config.model_config.get_vocab_size()
        self.core = GuidanceCore.from_settings(settings, vocab_size, device)

    def is_argmax_invariant(self) -> bool:
        """Guidance changes which token is the argmax: greedy requests need it too."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Follow the persistent batch: removed, then added, then moved requests (vLLM's order)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.core.remove(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            if prompt_ids is None:  # prompt embeddings: no token ids for the reward model
                self.core.remove(index)
                if request_guidance(params.extra_args) is not None:
                    logger.warning("hf_rgtg: a request given as prompt embeddings passes through unguided.")
                continue
            self.core.add(index, params.extra_args, (prompt_ids, output_ids))
        for source, target, direction in batch_update.moved:
            self.core.move(source, target, swap=direction == MoveDirectionality.SWAP)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Guide the rows of the guided requests; row `i` is the request at batch index `i`."""
        rows = [
            GuidedRow(
                index,
                index,
                len(prompt) + len(output),
                output[-1] if output else prompt[-1],
                lambda prompt=prompt, output=output: [*prompt, *output],
            )
            for index, (prompt, output) in self.core.sources()
            if index < logits.shape[0]
        ]
        return self.core.apply(logits, rows)


__all__ = ["RewardGuidedProcessor"]
