"""The processor class of vLLM's Model Runner V2 (the GPU default):
`vllm serve <model> --logits-processors hf_rgtg.integrations.vllm.v2:RewardGuidedProcessor`.

Untested on a GPU here: the CPU build runs the V1 model runner. `tests/test_vllm_core.py` drives this class with
fake request states and contexts shaped as the interface describes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from .core import GuidanceCore, GuidedRow
from .settings import VllmGuidanceSettings, request_guidance

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams


class RewardGuidedProcessor(LogitsProcessor):
    r"""
    Reward-guided decoding (ARGS, PARGS) as a logits processor of vLLM's Model Runner V2.

    The same guidance as [`hf_rgtg.integrations.vllm.v1.RewardGuidedProcessor`] over the V2 interface: requests are
    keyed by their slot, which `add_request` re-initialises when it is reused; each step's rows are mapped to slots
    through `ctx.expanded_idx_mapping`; a row's sequence is its slot's committed tokens up to `ctx.pos` and the token
    fed this step, `ctx.input_ids`. Speculative decoding (several rows per request) is refused.

    Args:
        vllm_config (`VllmConfig`): the engine's configuration.
        req_states (`LogitsProcRequestState`): the model runner's per-slot token buffers (read-only).

    Examples:

    ```python
    >>> from vllm import LLM  # doctest: +SKIP
    >>> llm = LLM("<model>", logits_processors=[  # doctest: +SKIP
    ...     "hf_rgtg.integrations.vllm.v2:RewardGuidedProcessor"])
    ```
    """

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a request's guidance settings at admission (an HTTP 400 behind `vllm serve`)."""
        request_guidance(sampling_params.extra_args)

    def __init__(self, vllm_config: VllmConfig, req_states: LogitsProcRequestState):
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError(
                "hf_rgtg's vLLM processor does not support speculative decoding (`speculative_config`): each draft "
                "token would need its own reward-model state. Serve without `--speculative-config`."
            )
        self.req_states = req_states
        settings = VllmGuidanceSettings.from_engine(vllm_config.additional_config)
        self.core = GuidanceCore.from_settings(settings, req_states.vocab_size, req_states.device)

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """A request enters slot `req_idx`, replacing its last occupant; returns whether it is guided."""
        return self.core.add(req_idx, sampling_params.extra_args)

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        """Guide the rows whose slots hold guided requests."""
        if not self.core.requests:
            return logits
        slots = ctx.expanded_idx_mapping.tolist()
        guided = [(row, slot) for row, slot in enumerate(slots) if self.core.is_guided(slot)]
        if not guided:
            return logits
        index = torch.tensor([row for row, _ in guided], dtype=torch.long, device=ctx.pos.device)
        positions = ctx.pos.index_select(0, index).tolist()
        fed = ctx.input_ids.index_select(0, index).tolist()
        committed = self.req_states.all_token_ids.gpu
        rows = [
            GuidedRow(
                row,
                slot,
                position + 1,
                token,
                lambda slot=slot, position=position, token=token: [
                    *committed[slot, :position].tolist(),
                    token,
                ],
            )
            for (row, slot), position, token in zip(guided, positions, fed, strict=True)
        ]
        return self.core.apply(logits, rows)


__all__ = ["RewardGuidedProcessor"]
