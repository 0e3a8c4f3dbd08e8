"""Batching preference pairs for the all-prefix loss: `PrefixRewardCollator` (hf_rgtg/data.py)."""

import hf_rgtg
import hf_rgtg.training
from hf_rgtg.data import PrefixRewardCollator

EOS = 0


def test_collator_pads_with_eos_and_selects_prefixes():
    pairs = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]}]
    batch = PrefixRewardCollator(pad_token_id=99, eos_token_id=EOS)(
        pairs + [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}]
    )
    assert batch["chosen_input_ids"][0].tolist() == [5, 6, 7, 8, 9, EOS, EOS]
    assert batch["rejected_input_ids"][1].tolist() == [1, 3, 99, 99, 99, 99, 99]
    assert batch["chosen_attention_mask"][1].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert batch["loss_weights"][0].nonzero().flatten().tolist() == [3 - 1 + t for t in range(1, 5)]
    assert batch["loss_weights"][1].nonzero().flatten().tolist() == [1]

    full = PrefixRewardCollator(pad_token_id=99, eos_token_id=EOS, prefix_sampling="full")(pairs)
    assert full["loss_weights"][0].nonzero().flatten().tolist() == [6]
    random_two = PrefixRewardCollator(
        pad_token_id=99, eos_token_id=EOS, prefix_sampling="random", num_random_prefixes=2
    )(pairs)
    assert random_two["loss_weights"][0].count_nonzero() == 2
    assert set(random_two["loss_weights"][0].nonzero().flatten().tolist()) <= {3, 4, 5, 6}
    linear = PrefixRewardCollator(pad_token_id=99, eos_token_id=EOS, position_weighting="linear")(pairs)
    assert linear["loss_weights"][0, 3:7].tolist() == [0.25, 0.5, 0.75, 1.0]


def test_the_collator_is_importable_from_where_it_was():
    assert hf_rgtg.PrefixRewardCollator is hf_rgtg.training.PrefixRewardCollator is PrefixRewardCollator
    assert hf_rgtg.training.prefix_lengths is hf_rgtg.data.prefix_lengths
