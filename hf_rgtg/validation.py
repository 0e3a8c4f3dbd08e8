"""What the argument checks of every module share: which values count as integers and numbers.

A bool is neither (it is an `int` to Python, but `top_k=True` is a mistake), and NumPy scalars and one-element
tensors count as what they hold.
"""

from __future__ import annotations

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


__all__ = ["is_integer", "is_number", "scalar"]
