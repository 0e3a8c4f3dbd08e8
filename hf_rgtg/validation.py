"""The argument checks every module shares, each written once: which values count as integers and numbers,
and the checked forms of numbers, token ids and prompt lengths.

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


__all__ = [
    "checked_finite",
    "checked_positive_int",
    "checked_prompt_length",
    "checked_token_id",
    "checked_token_ids",
    "is_integer",
    "is_number",
    "is_token_id",
    "scalar",
]
