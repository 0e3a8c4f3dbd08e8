"""Prefix accuracy (hf_rgtg/evaluation.py): reward models evaluated by relative prefix position."""

import pytest
import torch
from conftest import VOCAB_SIZE, random_pairs, separable_pairs, tiny_prefix_rm, tiny_sequence_classifier

from hf_rgtg import AutoModelForPrefixReward
from hf_rgtg.evaluation import evaluate_prefix_accuracy

EOS = 0
PAD = 0


def test_prefix_accuracy_is_measured_without_dropout_and_keeps_the_mode():
    model = tiny_prefix_rm("gpt2", seed=3)
    model.backbone.config.attn_pdrop = model.backbone.config.resid_pdrop = 0.5
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.train()
    pairs = separable_pairs(8)
    first = evaluate_prefix_accuracy(model, pairs, PAD, EOS, show_progress=False)
    second = evaluate_prefix_accuracy(model, pairs, PAD, EOS, show_progress=False)
    assert first.mean_margin == second.mean_margin and model.training
    model.eval()
    assert (
        evaluate_prefix_accuracy(model, pairs, PAD, EOS, show_progress=False).mean_margin == first.mean_margin
    )


def test_prefix_accuracy_evaluates_an_ordinary_sequence_classifier(tmp_path):
    # Its pad id is not the EOS id, so it reads EOS-padded responses at their last token, as the evaluation does.
    classifier = tiny_sequence_classifier("gpt2", seed=1, pad_token_id=VOCAB_SIZE - 1)
    classifier.save_pretrained(tmp_path)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path).eval()
    pairs = random_pairs(6, seed=4)
    result = evaluate_prefix_accuracy(rm, pairs, PAD, EOS, batch_size=4, show_progress=False)
    full_wins = 0
    for pair in pairs:
        length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
        chosen = pair["prompt_ids"] + pair["chosen_ids"] + [EOS] * (length - len(pair["chosen_ids"]))
        rejected = pair["prompt_ids"] + pair["rejected_ids"] + [EOS] * (length - len(pair["rejected_ids"]))
        full_wins += bool(
            classifier(torch.tensor([chosen])).logits[0, 0]
            > classifier(torch.tensor([rejected])).logits[0, 0]
        )
    assert result.accuracy["full"] == full_wins / len(pairs)
    assert result.counts["full"] == 6
    assert sum(result.counts[b] for b in ("0-25%", "25-50%", "50-75%", "75-100%")) == sum(
        max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs
    )
    assert "| full |" in result.to_markdown()


def test_prefix_accuracy_of_an_encoder_scores_each_prefix_as_its_own_sequence(tmp_path):
    classifier = tiny_sequence_classifier("bert", seed=2)
    classifier.save_pretrained(tmp_path)
    rm = AutoModelForPrefixReward.from_pretrained(tmp_path).eval()
    pairs = random_pairs(5, seed=6)
    # An encoder needs no EOS: a response shorter than the prefix is taken whole.
    result = evaluate_prefix_accuracy(rm, pairs, PAD, eos_token_id=None, batch_size=2, show_progress=False)
    margins, full_margins = [], []
    with torch.no_grad():
        for pair in pairs:
            length = max(len(pair["chosen_ids"]), len(pair["rejected_ids"]))
            for t in range(1, length + 1):
                chosen, rejected = (
                    classifier(torch.tensor([pair["prompt_ids"] + pair[side][:t]])).logits[0, 0]
                    for side in ("chosen_ids", "rejected_ids")
                )
                margins.append(float(chosen - rejected))
            full_margins.append(margins[-1])
    assert result.counts["full"] == 5 and sum(result.counts.values()) - 5 == len(margins)
    assert result.mean_margin == pytest.approx(sum(margins) / len(margins), abs=1e-5)
    assert result.mean_full_margin == pytest.approx(sum(full_margins) / 5, abs=1e-5)
    assert result.accuracy["full"] == sum(m > 0 for m in full_margins) / 5
