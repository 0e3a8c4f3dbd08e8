"""`scripts/build_default_rm.py`'s all-token heads: fitted on cached hidden states, they are the heads the
assembled reward model runs, and they learn a reward that adds up token by token."""

import argparse
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import VOCAB_SIZE, tiny_causal_lm

from hf_rgtg import PrefixRewardModel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_default_rm.py"
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="the build scripts are not in this checkout")


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_default_rm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_default_rm", module)
    spec.loader.exec_module(module)
    return module


def fit_settings(**overrides) -> argparse.Namespace:
    settings = {
        "seed": 0,
        "head_lr": 1e-2,
        "head_weight_decay": 1e-2,
        "vocab_epochs": 30,
        "vocab_batch_size": 256,
        "consistency_positions": 64,
        "consistency_weight": 1.0,
        "tolerance": 0.005,
    }
    return argparse.Namespace(**{**settings, **overrides})


class Report(dict):
    def update(self, **values):
        super().update(values)


def random_pairs(count: int, generator: torch.Generator, score=None) -> list[dict]:
    """Pairs of random replies (3 to 11 tokens) after a one-token prompt; with `score` (a reward per token), the
    chosen reply is the one whose tokens add up to more."""
    examples = []
    for _ in range(count):
        lengths = torch.randint(3, 12, (2,), generator=generator).tolist()
        a, b = (torch.randint(1, VOCAB_SIZE, (n,), generator=generator) for n in lengths)
        if score is not None and score[a].sum() < score[b].sum():
            a, b = b, a
        examples.append({"prompt_ids": [1], "chosen_ids": a.tolist(), "rejected_ids": b.tolist()})
    return examples


def splits(count: int) -> list[dict]:
    return [
        {"split": "train" if i < count * 3 // 4 else ("val" if i < count * 7 // 8 else "test")}
        for i in range(count)
    ]


@pytest.mark.parametrize("kind", ["factorised", "full"])
def test_folding_the_standardisation_into_a_vocab_head_keeps_every_value(build, kind):
    torch.manual_seed(0)
    embedding, hidden = torch.randn(50, 8), torch.randn(20, 8) * 3 + 1
    tokens = torch.randint(0, 50, (20,))
    mean, std = hidden.mean(0), hidden.std(0)
    head = build.make_vocab_head(kind, 8, 50)
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter)
    standardised = (hidden - mean) / std
    values = build.vocab_rows(head, standardised, tokens, embedding)
    maxima = build.vocab_max(head, standardised, embedding)
    build.fold_vocab_standardisation(head, mean, std)
    torch.testing.assert_close(
        build.vocab_rows(head, hidden, tokens, embedding), values, atol=1e-4, rtol=1e-5
    )
    torch.testing.assert_close(build.vocab_max(head, hidden, embedding), maxima, atol=1e-4, rtol=1e-5)


def test_the_fitted_vocab_head_is_the_head_the_assembled_reward_model_runs(build):
    """Features cached from a tiny Llama, a factorised head fitted on them, then loaded into a reward model over
    that Llama: its rewards are the fitted ones, and so are its prefix margins on the test pairs."""
    lm = tiny_causal_lm("llama", tie_word_embeddings=True)
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    examples = random_pairs(32, torch.Generator().manual_seed(1))
    features = build.extract_features(lm, tokenizer, examples, layers=[1], batch_size=8)
    tokens = build.response_tokens(examples, tokenizer.eos_token_id)
    embedding = lm.get_input_embeddings().weight.detach().float()
    report = Report()
    chosen, state = build.run_vocab_sweep(
        splits(32), features, tokens, embedding, fit_settings(vocab_epochs=2), report
    )
    assert (chosen["layer"], chosen["head"]) == (1, "factorised")
    assert [r["head"] for r in report["vocab_sweep"]["results"]] == ["factorised", "full"]

    rm = PrefixRewardModel.from_language_model(lm, head_kind="vocab", vocab_head="factorised", head_layer=1)
    rm.score.load_state_dict(state)
    rm.eval()
    expected = build.fitted_rewards(rm.config, state, embedding)
    example = examples[-1]
    ids = torch.tensor([example["prompt_ids"] + example["chosen_ids"]])
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(rm(ids).rewards, expected(hidden, ids), atol=1e-5, rtol=1e-5)
        # The last pair's margin at its every prefix, from the cached features and from the assembled model.
        pair = features["pair"] == len(examples) - 1
        data = build.VocabFitData(features, tokens, 0, pair)
        cached = build.vocab_margin(rm.score, data, embedding)
        length = int(data.length[0])
        sides = [
            example[f"{side}_ids"] + [0] * (length - len(example[f"{side}_ids"]))
            for side in ("chosen", "rejected")
        ]
        rewards = rm(torch.tensor([example["prompt_ids"] + side for side in sides])).rewards[:, 1:]
    torch.testing.assert_close(cached, rewards[0] - rewards[1], atol=1e-4, rtol=1e-4)


def test_a_factorised_head_learns_a_reward_that_adds_up_token_by_token(build):
    """Hidden states that carry the running sum of a per-token score (in one coordinate, among noise), and pairs
    labelled by the full sums: the fitted head ranks the test prefixes far above chance."""
    generator = torch.Generator().manual_seed(0)
    width, count = 32, 400
    embedding = torch.randn(VOCAB_SIZE, width, generator=generator)
    score = embedding @ (torch.randn(width, generator=generator) / width**0.5)
    score[0] = 0.0  # the EOS that pads the shorter reply adds nothing
    examples = random_pairs(count, generator, score)
    tokens = build.response_tokens(examples, eos_token_id=0)
    lengths = [max(len(e["chosen_ids"]), len(e["rejected_ids"])) for e in examples]
    pair = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])

    def states(side: str) -> torch.Tensor:
        hidden = torch.randn(len(pair), width, generator=generator) * 0.3
        for i in range(count):
            rows = pair == i
            hidden[rows, 0] = torch.cumsum(score[tokens[side][rows]], 0)
        return hidden[None].half()

    before = torch.randn(1, count, width, generator=generator) * 0.3
    before[..., 0] = 0
    features = {
        "layers": [0],
        "chosen": states("chosen"),
        "rejected": states("rejected"),
        "before": before.half(),
        "pair": pair,
        "t": torch.cat([torch.arange(1, n + 1) for n in lengths]),
        "length": torch.cat([torch.full((n,), n) for n in lengths]),
    }
    report = Report()
    rows = splits(count)
    build.run_vocab_sweep(rows, features, tokens, embedding, fit_settings(), report)
    factorised, full = report["vocab_sweep"]["results"]
    # The best any head can do: the margin of the true running sums.
    test = torch.tensor([r["split"] == "test" for r in rows])[pair]
    oracle = build.accuracy_table(
        (features["chosen"][0, :, 0] - features["rejected"][0, :, 0]).float()[test],
        features["t"][test],
        features["length"][test],
    )
    assert oracle["full"] == 1.0
    assert factorised["test"]["all"] > max(oracle["all"] - 0.08, 0.6)
    assert factorised["parameters"] == width**2 + 2 * width + 1
    assert full["parameters"] == VOCAB_SIZE * (width + 1)
