"""What the argument checks of every module share: which values count as integers and numbers, and whether a
prompt and the tokens to generate fit in a model's positions.

A bool is neither an integer nor a number (it is an `int` to Python, but `top_k=True` is a mistake), and NumPy
scalars and one-element tensors count as what they hold.
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


__all__ = ["is_integer", "is_number", "positions_problem", "scalar"]
