"""Evaluating reward models on prefixes: accuracy by relative position in the response (the PARGS diagnostic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .data import PrefixRewardCollator
from .hub import BUCKET_ORDER, accuracy_table
from .modeling import PrefixRewardModel

#: The quarters of the response that prefix accuracy is reported by (`BUCKET_ORDER` adds `"full"`).
BUCKETS = BUCKET_ORDER[:-1]


@dataclass
class PrefixAccuracy:
    """Held-out accuracy of a reward model on prefixes.

    Attributes:
        accuracy (`dict[str, float]`): the share of prefix pairs with `r(chosen[:t]) > r(rejected[:t])`, for
            `t / L` in each quarter of the response (`"0-25%"`, ..., `"75-100%"`) and for the full response
            (`"full"`, `t = L`).
        counts (`dict[str, int]`): how many prefix pairs each figure rests on.
        mean_margin (`float`): the mean of `r(chosen[:t]) - r(rejected[:t])` over all prefixes.
        mean_full_margin (`float`): the same at `t = L`.
    """

    accuracy: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    mean_margin: float = 0.0
    mean_full_margin: float = 0.0

    def to_markdown(self) -> str:
        """The table as Markdown (used in model cards and by `hf-rgtg eval-rm`), every bucket shown (`nan` where
        there is no figure), then the mean margins."""
        table = accuracy_table(
            {name: self.accuracy.get(name, float("nan")) for name in BUCKET_ORDER},
            {name: self.counts.get(name, 0) for name in BUCKET_ORDER},
        )
        return (
            f"{table}\n\nMean reward margin: {self.mean_margin:.4f} over all prefixes, {self.mean_full_margin:.4f} on "
            "full responses."
        )


def _bucket(t: int, length: int) -> str:
    fraction = t / length
    return BUCKETS[min(int((fraction - 1e-9) * 4), 3)] if fraction > 0 else BUCKETS[0]


@torch.no_grad()
def evaluate_prefix_accuracy(
    model: PrefixRewardModel,
    examples: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    eos_token_id: int,
    batch_size: int = 8,
    show_progress: bool = True,
) -> PrefixAccuracy:
    """Accuracy of any reward model on every prefix of held-out pairs, by relative position in the response.

    Works for prefix reward models and for ordinary full-sequence reward models loaded through
    [`AutoModelForPrefixReward`], so the two can be compared side by side. Pairs are prepared as for training
    (the shorter response padded with EOS), and every prefix length `t = 1..L` is scored in one forward.

    Args:
        model ([`PrefixRewardModel`]): the reward model.
        examples: tokenized pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`), e.g. from `load_preference_data`.
        pad_token_id (`int`), eos_token_id (`int`): as for training.
        batch_size (`int`, *optional*, defaults to 8): pairs per forward.
        show_progress (`bool`, *optional*, defaults to `True`): show a progress bar.

    Examples:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.evaluation import evaluate_prefix_accuracy

    >>> config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=16, bos_token_id=15, eos_token_id=15)
    >>> model = AutoModelForPrefixReward.from_config(config).eval()
    >>> pairs = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5, 6], "rejected_ids": [7, 8]}]
    >>> result = evaluate_prefix_accuracy(model, pairs, pad_token_id=0, eos_token_id=15, show_progress=False)
    >>> result.counts
    {'0-25%': 1, '25-50%': 1, '50-75%': 1, '75-100%': 1, 'full': 1}
    ```
    """
    # Scored in eval mode (no dropout), whatever mode the model is in; that mode is restored afterwards.
    was_training = model.training
    model.eval()
    try:
        return _prefix_accuracy(model, examples, pad_token_id, eos_token_id, batch_size, show_progress)
    finally:
        model.train(was_training)


def _prefix_accuracy(
    model: PrefixRewardModel,
    examples: Sequence[dict[str, list[int]]],
    pad_token_id: int,
    eos_token_id: int,
    batch_size: int,
    show_progress: bool,
) -> PrefixAccuracy:
    collate = PrefixRewardCollator(pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    device = model.device
    wins = dict.fromkeys(BUCKET_ORDER, 0)
    counts = dict.fromkeys(BUCKET_ORDER, 0)
    margins: list[float] = []
    full_margins: list[float] = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="prefix accuracy", disable=not show_progress):
        chunk = list(examples[start : start + batch_size])
        batch = collate(chunk)
        rewards = []
        for name in ("chosen", "rejected"):
            out = model(
                batch[f"{name}_input_ids"].to(device),
                attention_mask=batch[f"{name}_attention_mask"].to(device),
                return_dict=True,
            )
            rewards.append(out.rewards.cpu())
        difference = rewards[0] - rewards[1]
        for row, example in enumerate(chunk):
            prompt = len(example["prompt_ids"])
            length = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
            for t in range(1, length + 1):
                margin = float(difference[row, prompt + t - 1])
                margins.append(margin)
                bucket = _bucket(t, length)
                counts[bucket] += 1
                wins[bucket] += margin > 0
            full = float(difference[row, prompt + length - 1])
            full_margins.append(full)
            counts["full"] += 1
            wins["full"] += full > 0
    return PrefixAccuracy(
        accuracy={name: wins[name] / counts[name] if counts[name] else float("nan") for name in wins},
        counts=counts,
        mean_margin=sum(margins) / max(len(margins), 1),
        mean_full_margin=sum(full_margins) / max(len(full_margins), 1),
    )


__all__ = ["BUCKETS", "PrefixAccuracy", "evaluate_prefix_accuracy"]
