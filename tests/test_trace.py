"""The trace, read from what `generate()` returned."""

import pytest
import torch
from conftest import (
    guided,
    left_padded,
    models,
)


def test_results_are_read_from_the_output_object_of_return_dict_in_generate():
    lm, rm = models("llama")
    ids, mask = left_padded()
    tensor_out, guidance = guided(lm, rm, ids, mask, max_new_tokens=4, do_sample=False)
    rewards, final = guidance.trace.rewards_of(tensor_out, 6), guidance.sequence_rewards(tensor_out, 6, mask)
    dict_out, guidance = guided(
        lm, rm, ids, mask, max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True
    )
    assert torch.equal(dict_out.sequences, tensor_out)
    assert guidance.trace.rewards_of(dict_out, 6) == rewards and all(len(r) == 4 for r in rewards)
    torch.testing.assert_close(guidance.sequence_rewards(dict_out, 6, mask), final)
    assert guidance.trace.rewards_of(tensor_out.tolist(), 6) == rewards
    with pytest.raises(TypeError, match=r"\(rows, length\).*shape \(10,\).*sequence\[None\]"):
        guidance.trace.rewards_of(tensor_out[0], 6)
