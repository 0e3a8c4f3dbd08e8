"""Evaluating reward models on prefixes: accuracy by relative position in the response (the PARGS diagnostic)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    eos_token_id: int | None,
    batch_size: int = 8,
    show_progress: bool = True,
) -> PrefixAccuracy:
    """Accuracy of any reward model on every prefix of held-out pairs, by relative position in the response.

    Works for prefix reward models and for ordinary full-sequence reward models loaded through
    [`AutoModelForPrefixReward`], so the two can be compared side by side. Pairs are prepared as for training: on
    a causal backbone the shorter response is padded with EOS and every prefix length `t = 1..L` is scored in one
    forward; on an encoder every prefix is a sequence of its own (`PrefixRewardCollator(per_prefix=True)`, a
    response shorter than `t` taken whole), `2L` sequences per pair.

    Args:
        model ([`PrefixRewardModel`]): the reward model.
        examples: tokenized pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`), e.g. from `load_preference_data`.
        pad_token_id (`int`), eos_token_id (`int`, *optional* on an encoder): as for training.
        batch_size (`int`, *optional*, defaults to 8): pairs per forward (on an encoder, `4 * batch_size`
            prefix pairs).
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
    eos_token_id: int | None,
    batch_size: int,
    show_progress: bool,
) -> PrefixAccuracy:
    per_prefix = not model.supports_incremental_scoring
    collate = PrefixRewardCollator(
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, per_prefix=per_prefix
    )
    margins_of = _re_encoded_margins if per_prefix else _one_forward_margins
    wins = dict.fromkeys(BUCKET_ORDER, 0)
    counts = dict.fromkeys(BUCKET_ORDER, 0)
    margins: list[float] = []
    full_margins: list[float] = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="prefix accuracy", disable=not show_progress):
        chunk = list(examples[start : start + batch_size])
        for row, t, margin in margins_of(model, collate(chunk), chunk, 4 * batch_size):
            length = max(len(chunk[row]["chosen_ids"]), len(chunk[row]["rejected_ids"]))
            margins.append(margin)
            bucket = _bucket(t, length)
            counts[bucket] += 1
            wins[bucket] += margin > 0
            if t == length:
                full_margins.append(margin)
                counts["full"] += 1
                wins["full"] += margin > 0
    return PrefixAccuracy(
        accuracy={name: wins[name] / counts[name] if counts[name] else float("nan") for name in wins},
        counts=counts,
        mean_margin=sum(margins) / max(len(margins), 1),
        mean_full_margin=sum(full_margins) / max(len(full_margins), 1),
    )


def _one_forward_margins(
    model: PrefixRewardModel, batch: dict[str, torch.Tensor], chunk: list[dict], _: int
) -> Iterator[tuple[int, int, float]]:
    """`(row, t, r(chosen[:t]) - r(rejected[:t]))` for every prefix of the pairs of a one-sequence-per-response
    batch, from one forward per side."""
    device = model.device
    rewards = [
        model(
            batch[f"{name}_input_ids"].to(device),
            attention_mask=batch[f"{name}_attention_mask"].to(device),
            return_dict=True,
        ).rewards.cpu()
        for name in ("chosen", "rejected")
    ]
    difference = rewards[0] - rewards[1]
    for row, example in enumerate(chunk):
        prompt = len(example["prompt_ids"])
        length = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
        for t in range(1, length + 1):
            yield row, t, float(difference[row, prompt + t - 1])


def _re_encoded_margins(
    model: PrefixRewardModel, batch: dict[str, torch.Tensor], chunk: list[dict], slice_size: int
) -> Iterator[tuple[int, int, float]]:
    """The same for a one-sequence-per-prefix batch: each prefix's reward from a forward of its own sequence, in
    slices of `slice_size` prefix pairs of similar lengths, each cut to its longest sequence (so that little of a
    forward is padding)."""
    device = model.device
    lengths = torch.maximum(batch["chosen_attention_mask"].sum(-1), batch["rejected_attention_mask"].sum(-1))
    order = lengths.argsort(stable=True)
    for begin in range(0, len(order), slice_size):
        rows = order[begin : begin + slice_size]
        width = int(lengths[rows].max())
        chosen, rejected = (
            model(
                batch[f"{name}_input_ids"][rows, :width].to(device),
                attention_mask=batch[f"{name}_attention_mask"][rows, :width].to(device),
                return_dict=True,
            ).reward.cpu()
            for name in ("chosen", "rejected")
        )
        pairs, prefixes = batch["prefix_pairs"][rows].tolist(), batch["prefix_lengths"][rows].tolist()
        yield from zip(pairs, prefixes, (chosen - rejected).tolist(), strict=True)


__all__ = ["BUCKETS", "PrefixAccuracy", "evaluate_prefix_accuracy"]
