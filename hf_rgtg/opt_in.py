"""The explicit, reversible opt-in that lets `generate()` take `reward_model=`, `beta=`, ... directly: a wrapper
around `generate` that routes guided calls to [`reward_guided_generate`]. Importing hf_rgtg patches nothing."""

from __future__ import annotations

import functools
from typing import Any

from transformers import PreTrainedModel, StoppingCriteriaList, StopStringCriteria
from transformers.generation import GenerationMixin

from .custom_generate import reward_guided_generate

_GUIDANCE_KEYS = ("reward_model", "reward_guidance")


def _guided_generate_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`generate()` keyword arguments that reach `reward_guided_generate` whole.

    transformers 5 keeps only a callable `custom_generate`'s own arguments for it: stop strings become a
    `StopStringCriteria` here, since `generate()` would build theirs with the tokenizer it has just dropped (the
    callable finds the dropped streamer itself)."""
    kwargs = dict(kwargs)
    if kwargs.pop("custom_generate", None) not in (None, reward_guided_generate):
        raise ValueError("`reward_model=` cannot be combined with another `custom_generate`.")
    for name in ("assistant_model", "prompt_lookup_num_tokens"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"Reward-guided generation does not support assisted decoding (`{name}`): every token is chosen "
                "from the reward-scored candidates of the main model."
            )
    stop_strings = kwargs.pop("stop_strings", None)
    if stop_strings is not None:
        tokenizer = kwargs.get("tokenizer")
        if tokenizer is None:
            raise ValueError("`stop_strings` needs the model's tokenizer: pass `tokenizer=` as well.")
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [
                *(kwargs.get("stopping_criteria") or []),
                StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings),
            ]
        )
    if kwargs.get("tokenizer") is not None:
        # `generate()` would drop it on the way to the callable; it is the language model's, to compare with the RM's.
        kwargs["guided_tokenizer"] = kwargs.pop("tokenizer")
    return {**kwargs, "custom_generate": reward_guided_generate}


def _guided(generate):
    @functools.wraps(generate)
    def generate_with_reward_guidance(self, *args, **kwargs):
        if all(kwargs.get(key) is None for key in _GUIDANCE_KEYS):
            for key in _GUIDANCE_KEYS:
                kwargs.pop(key, None)
            return generate(self, *args, **kwargs)
        return generate(self, *args, **_guided_generate_kwargs(kwargs))

    generate_with_reward_guidance.__wrapped_generate__ = generate
    return generate_with_reward_guidance


def enable_reward_guided_generate(model: PreTrainedModel | None = None) -> None:
    """Let `generate()` take `reward_model=`, `beta=`, `top_k=`, ... directly. Explicit and reversible.

    Importing hf_rgtg patches nothing; this call does. Without `reward_model` (or `reward_guidance`), `generate`
    behaves exactly as before. Undo it with [`disable_reward_guided_generate`].

    Args:
        model (`PreTrainedModel`, *optional*): patch only this model. By default every model that inherits
            `GenerationMixin.generate` is patched.

    Examples:

    ```python
    >>> from hf_rgtg import enable_reward_guided_generate, disable_reward_guided_generate
    >>> enable_reward_guided_generate()
    >>> # model.generate(**inputs, reward_model=rm, beta=2.0, top_k=10, do_sample=True)
    >>> disable_reward_guided_generate()
    ```
    """
    if model is not None:
        if "generate" not in vars(model):  # an opt-in of its own, which outlives a global one
            plain = type(model).generate
            model.generate = _guided(getattr(plain, "__wrapped_generate__", plain)).__get__(model)
        return
    if not hasattr(GenerationMixin.generate, "__wrapped_generate__"):
        GenerationMixin.generate = _guided(GenerationMixin.generate)


def disable_reward_guided_generate(model: PreTrainedModel | None = None) -> None:
    """Undo [`enable_reward_guided_generate`] (for `model`, or globally)."""
    if model is not None:
        if "generate" in vars(model) and hasattr(model.generate, "__wrapped_generate__"):
            del model.generate
        return
    if hasattr(GenerationMixin.generate, "__wrapped_generate__"):
        GenerationMixin.generate = GenerationMixin.generate.__wrapped_generate__


def reward_guided_generate_enabled(model: PreTrainedModel | None = None) -> bool:
    """Whether `generate()` currently accepts `reward_model=` (for `model`, or globally)."""
    target = model.generate if model is not None else GenerationMixin.generate
    return hasattr(target, "__wrapped_generate__")


__all__ = [
    "disable_reward_guided_generate",
    "enable_reward_guided_generate",
    "reward_guided_generate_enabled",
]
