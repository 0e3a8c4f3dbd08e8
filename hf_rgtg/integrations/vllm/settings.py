"""What the vLLM integration is told: the engine's settings (which reward model, read once per worker) and each
request's guidance settings (from `SamplingParams.extra_args`). Neither imports vLLM."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...configuration import RewardGuidanceConfig

#: The environment variable that holds the engine's settings: a JSON object, or the path of a JSON file holding one.
SETTINGS_ENV = "HF_RGTG_VLLM_CONFIG"

#: The key of the engine's settings in vLLM's `additional_config` (`LLM(additional_config={"hf_rgtg": {...}})`,
#: `vllm serve --additional-config '{"hf_rgtg": {...}}'`); they win over the environment variable.
ADDITIONAL_CONFIG_KEY = "hf_rgtg"

#: The `extra_args` keys that switch guidance on for a request, each a field of [`RewardGuidanceConfig`].
GUIDANCE_KEYS = ("beta", "top_k", "score_with", "reward_transform", "standardize_rewards")

#: The `extra_args` key under which a request names itself in the engine's `trace_file`.
TRACE_ID_KEY = "reward_trace_id"

#: Guidance settings of `generate()` that the vLLM processor does not take, and why.
UNSUPPORTED_KEYS = {
    "reward_threshold": "vLLM's own stop conditions end requests (`stop`, `max_tokens`)",
    "max_reward_calls": "vLLM's own stop conditions end requests (`stop`, `max_tokens`)",
    "max_time": "vLLM's own stop conditions end requests (`stop`, `max_tokens`)",
    "reward_max_time": "vLLM's own stop conditions end requests (`stop`, `max_tokens`)",
    "record_candidates": "the engine writes candidates to its `trace_file` instead",
    "scorer": "the scorer is chosen once per engine (`scorer` in the engine's settings)",
    "reward_scorer": "the scorer is chosen once per engine (`scorer` in the engine's settings)",
    "reward_model": "the reward model is loaded once per engine (`reward_model` in the engine's settings)",
}


@dataclass
class VllmGuidanceSettings:
    """The engine-wide settings of reward-guided decoding in vLLM, read once per worker when the engine starts.

    They come from vLLM's `additional_config["hf_rgtg"]` if given, else from the environment variable
    `HF_RGTG_VLLM_CONFIG` (a JSON object, or the path of a JSON file holding one), else the defaults.

    Args:
        reward_model (`str`, defaults to `"default"`): `"default"` (the packaged default reward model over the
            embedded SmolLM2, see [`load_default_rm`][hf_rgtg.load_default_rm]), or the folder or Hub id of a
            prefix reward model that shares the served model's tokenizer.
        dtype (`str`, defaults to `"float32"`): the reward model's dtype, a `torch` dtype's name.
        scorer (`str`, defaults to `"auto"`): the scorer kind that keeps each request's reward-model state; see
            [`RewardGuidanceConfig`]. The kinds that read text (a reward model with another tokenizer) are refused.
        trace_file (`str`, *optional*): a JSON Lines file that every guided step of a request with a
            `reward_trace_id` in its `extra_args` is appended to: its candidates, their rewards and the prompt's
            reward. For tests and debugging; it costs a write per step.

    Examples:

    ```python
    >>> from hf_rgtg.integrations.vllm.settings import VllmGuidanceSettings
    >>> VllmGuidanceSettings.from_json('{"reward_model": "default", "dtype": "float32"}').reward_model
    'default'
    >>> VllmGuidanceSettings.from_mapping({"reward_modle": "x"})
    Traceback (most recent call last):
    ...
    ValueError: The hf_rgtg vLLM settings have no field 'reward_modle'; the fields are ['reward_model', 'dtype', \
'scorer', 'trace_file'].
    ```
    """

    reward_model: str = "default"
    dtype: str = "float32"
    scorer: str = "auto"
    trace_file: str | None = None

    def __post_init__(self):
        if not isinstance(self.reward_model, str) or not self.reward_model:
            raise ValueError(
                f"`reward_model` (={self.reward_model!r}) has to be 'default' or the folder or Hub id of a prefix "
                "reward model."
            )
        if self.dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise ValueError(
                f"`dtype` (={self.dtype!r}) has to be 'float32', 'float16', 'bfloat16' or 'float64'."
            )
        if not isinstance(self.scorer, str) or not self.scorer:
            raise ValueError(f"`scorer` (={self.scorer!r}) has to be the name of a scorer kind, e.g. 'auto'.")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> VllmGuidanceSettings:
        """Settings from a mapping of field names, refusing a name that is no field."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"The hf_rgtg vLLM settings have to be a JSON object, got {type(values).__name__}: e.g. "
                '\'{"reward_model": "default"}\'.'
            )
        names = [item.name for item in dataclasses.fields(cls)]
        for name in values:
            if name not in names:
                raise ValueError(f"The hf_rgtg vLLM settings have no field {name!r}; the fields are {names}.")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> VllmGuidanceSettings:
        """Settings from a JSON object, or from the path of a JSON file holding one."""
        stripped = text.strip()
        if not stripped.startswith("{"):
            path = Path(stripped).expanduser()
            if not path.is_file():
                raise ValueError(
                    f"`{SETTINGS_ENV}` (={text!r}) is neither a JSON object nor the path of a JSON file; set it to "
                    'e.g. \'{"reward_model": "default"}\'.'
                )
            stripped = path.read_text(encoding="utf-8")
        try:
            values = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"The hf_rgtg vLLM settings are not valid JSON ({error}): {stripped[:200]!r}"
            ) from error
        return cls.from_mapping(values)

    @classmethod
    def from_engine(cls, additional_config: Mapping[str, Any] | None) -> VllmGuidanceSettings:
        """The engine's settings: `additional_config["hf_rgtg"]` if given, else `$HF_RGTG_VLLM_CONFIG`, else the
        defaults."""
        if additional_config and ADDITIONAL_CONFIG_KEY in additional_config:
            return cls.from_mapping(additional_config[ADDITIONAL_CONFIG_KEY])
        text = os.environ.get(SETTINGS_ENV)
        return cls.from_json(text) if text else cls()


def request_guidance(extra_args: Mapping[str, Any] | None) -> RewardGuidanceConfig | None:
    """A request's guidance settings from its `SamplingParams.extra_args`: `None` (no guidance) when they hold none
    of [`GUIDANCE_KEYS`], else a checked [`RewardGuidanceConfig`].

    Raises:
        `ValueError`: for a setting the vLLM processor does not take (naming it and why), a reward transform that is
            not a name, or any value [`RewardGuidanceConfig`] refuses.

    Examples:

    ```python
    >>> from hf_rgtg.integrations.vllm.settings import request_guidance
    >>> request_guidance({"beta": 2.0, "top_k": 5}).top_k
    5
    >>> request_guidance({"temperature_hint": 1}) is None
    True
    ```
    """
    if not extra_args:
        return None
    for name, reason in UNSUPPORTED_KEYS.items():
        if name in extra_args:
            raise ValueError(
                f"`{name}` in `extra_args` is not supported by hf_rgtg's vLLM processor: {reason}. Remove it."
            )
    settings = {name: extra_args[name] for name in GUIDANCE_KEYS if name in extra_args}
    if not settings:
        return None
    transform = settings.get("reward_transform")
    if transform is not None and not isinstance(transform, str):
        raise ValueError(
            f"`reward_transform` (={transform!r}) has to be the name of a transform over vLLM ('identity', 'clamp' "
            "or 'sigmoid'): a request's settings travel as JSON."
        )
    for name in ("beta", "reward_transform", "standardize_rewards"):
        if isinstance(settings.get(name), (list, tuple)):
            raise ValueError(
                f"`{name}` (={settings[name]!r}) has to be a single value: the vLLM processor guides with one "
                "reward model."
            )
    return RewardGuidanceConfig(**settings)


def trace_id(extra_args: Mapping[str, Any] | None) -> str | None:
    """The request's name in the engine's `trace_file`, if it gave one."""
    value = (extra_args or {}).get(TRACE_ID_KEY)
    return None if value is None else str(value)


__all__ = [
    "ADDITIONAL_CONFIG_KEY",
    "GUIDANCE_KEYS",
    "SETTINGS_ENV",
    "TRACE_ID_KEY",
    "UNSUPPORTED_KEYS",
    "VllmGuidanceSettings",
    "request_guidance",
    "trace_id",
]
