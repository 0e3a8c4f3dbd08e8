"""The checks that every module shares (hf_rgtg/validation.py)."""

import pytest

from hf_rgtg.validation import positions_problem


@pytest.mark.parametrize(
    "prompt_tokens, new_tokens, max_positions",
    [(100, 28, 128), (1, 127, 128), (500, 500, None), (0, 0, 1)],
)
def test_what_fits_has_no_problem(prompt_tokens, new_tokens, max_positions):
    assert positions_problem(prompt_tokens, new_tokens, max_positions, "the reward model") is None


def test_too_many_new_tokens_say_how_many_fit():
    assert positions_problem(100, 29, 128, "the language model") == (
        "the prompt has 100 tokens and the language model at most 128 positions, so at most 28 new tokens fit "
        "(got 29)"
    )
    assert "so at most 1 new tokens fit (got 5)" in positions_problem(127, 5, 128, "the reward model")


@pytest.mark.parametrize("prompt_tokens", [128, 300])
def test_a_prompt_that_fills_the_positions_leaves_room_for_no_new_token(prompt_tokens):
    assert positions_problem(prompt_tokens, 1, 128, "the reward model") == (
        f"the prompt has {prompt_tokens} tokens, but the reward model has at most 128 positions"
    )
