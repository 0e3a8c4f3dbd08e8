"""The argument checks every module shares, each written once: which values count as integers and numbers,
the checked forms of numbers, token ids and prompt lengths, and whether a prompt and the tokens to generate fit in
a model's positions.

A bool is neither an integer nor a number (it is an `int` to Python, but `top_k=True` is a mistake), and NumPy
scalars and one-element tensors count as what they hold. Each `checked_*` function returns the value in its plain
Python form, or raises a `ValueError` naming the argument, the value and the fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def scalar(value: Any) -> Any:
    """The Python number a one-element tensor holds; any other value unchanged."""
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def is_integer(value: Any) -> bool:
    """Whether `value` is an integer (Python or NumPy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a real number (Python or NumPy), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def checked_finite(name: str, value: Any, hint: str) -> float:
    """`value` as a float: any finite real number (Python, NumPy or a one-element tensor), never a bool. `hint` is
    the fix the message suggests, e.g. "e.g. `beta=1.0`"."""
    value = scalar(value)
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"`{name}` (={value!r}) has to be a finite number, {hint}.")
    return float(value)


def checked_positive_int(name: str, value: Any, hint: str) -> int:
    """`value` as an int: any integer >= 1 (Python, NumPy or a one-element integer tensor), never a bool."""
    value = scalar(value)
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` (={value!r}) has to be a positive integer, {hint}.")
    return int(value)


def checked_prompt_length(value: Any, width: int) -> int:
    """`value` as the prompts' length in sequences of `width` tokens: an integer from 1 to `width`."""
    value = scalar(value)
    if not is_integer(value) or not 1 <= value <= width:
        raise ValueError(
            f"`prompt_length` (={value!r}) has to be the prompts' length in the sequences, an integer from 1 to "
            f"their length ({width}): `inputs['input_ids'].shape[1]`."
        )
    return int(value)


def is_token_id(value: Any) -> bool:
    """Whether `value` can be a token id: a non-negative integer."""
    return is_integer(value) and value >= 0


def checked_token_id(name: str, value: Any) -> int | None:
    """`value` as one token id: a non-negative integer (Python, NumPy or a one-element tensor), or `None`."""
    value = scalar(value)
    if value is None:
        return None
    if not is_token_id(value):
        raise ValueError(
            f"`{name}` (={value!r}) has to be one token id, a non-negative integer such as `tokenizer.{name}`, "
            "or None."
        )
    return int(value)


def checked_token_ids(name: str, value: Any) -> list[int] | None:
    """`value` as a list of token ids (one id, or a sequence or tensor of them, each a non-negative integer), or
    `None`."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [scalar(item) for item in value]
    elif hasattr(value, "tolist"):  # a tensor, or a NumPy array or scalar
        items = value.tolist()
        items = items if isinstance(items, list) else [items]
    else:
        items = [value]
    if not all(is_token_id(item) for item in items):
        raise ValueError(
            f"`{name}` (={value!r}) has to be a token id or a list of them, each a non-negative integer (e.g. "
            f"`tokenizer.{name}`), or None."
        )
    return [int(item) for item in items]


def positions_problem(
    prompt_tokens: int, new_tokens: int, max_positions: int | None, what: str
) -> str | None:
    """Why a prompt and the tokens to generate after it do not fit in a model's positions, as a sentence that the
    caller completes with its own fix; `None` when they fit.

    When the prompt alone fills the positions, no number of new tokens fits and only a shorter prompt helps.
    Otherwise the sentence says how many new tokens fit, and the caller says how to ask for fewer in its own
    terms: a command-line flag (`--max-new-tokens`), an argument (`max_new_tokens`, `max_length`).

    Args:
        prompt_tokens (`int`): the prompt's length in tokens (of its longest row, padding not counted).
        new_tokens (`int`): how many tokens are to be generated after it.
        max_positions (`int`, *optional*): how many positions the model has; `None` when it declares no limit.
        what (`str`): the model, as the sentence names it: `"the reward model"`.

    Returns:
        `str` or `None`: the sentence (lower-case, without a final full stop), or `None` when
        `prompt_tokens + new_tokens` positions fit.

    Examples:

    ```python
    >>> from hf_rgtg.validation import positions_problem
    >>> positions_problem(100, 28, 128, "the reward model") is None
    True
    >>> positions_problem(100, 64, 128, "the reward model")
    'the prompt has 100 tokens and the reward model at most 128 positions, so at most 28 new tokens fit (got 64)'
    >>> positions_problem(128, 1, 128, "the reward model")
    'the prompt has 128 tokens, but the reward model has at most 128 positions'
    ```
    """
    if max_positions is None or prompt_tokens + new_tokens <= max_positions:
        return None
    if prompt_tokens >= max_positions:
        return f"the prompt has {prompt_tokens} tokens, but {what} has at most {max_positions} positions"
    return (
        f"the prompt has {prompt_tokens} tokens and {what} at most {max_positions} positions, so at most "
        f"{max_positions - prompt_tokens} new tokens fit (got {new_tokens})"
    )


def check_streamer(streamer: Any, beam_search: bool) -> None:
    """Refuse a streamer with beam search, in `generate()`'s own words (`_validate_generation_mode`): there,
    transformers would hand it the expanded prompt and never end it, and a reader of a `TextIteratorStreamer`
    would wait forever."""
    if streamer is not None and beam_search:
        raise ValueError(
            "`streamer` cannot be used with beam search (yet!). Make sure that `num_beams` is set to 1."
        )


__all__ = [
    "check_streamer",
    "checked_finite",
    "checked_positive_int",
    "checked_prompt_length",
    "checked_token_id",
    "checked_token_ids",
    "is_integer",
    "is_number",
    "is_token_id",
    "positions_problem",
    "scalar",
]
