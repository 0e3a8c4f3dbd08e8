"""Preference data for prefix reward models: loading, validation, tokenization, and batching for the all-prefix
loss ([`PrefixRewardCollator`], which training and evaluation share)."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from .validation import is_integer

logger = logging.getLogger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")
#: The batch key of the prefix pairs' weights in [`PrefixRewardCollator`]'s one-sequence-per-prefix layout.
PREFIX_WEIGHTS = "prefix_weights"


@dataclass
class PreferenceData:
    """Tokenized preference pairs and what was skipped on the way.

    Attributes:
        examples (`list[dict]`): one dict per usable pair, with `prompt_ids`, `chosen_ids` and `rejected_ids`.
        skipped (`Counter`): how many rows were skipped, by reason.
    """

    examples: list[dict[str, list[int]]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]

    def report(self) -> str:
        """A one-line summary: kept rows and the skip count of each reason."""
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"{len(self.examples)} pairs kept" + (f"; skipped: {reasons}" if reasons else "")


@dataclass(frozen=True)
class UnusableRow:
    """A row that was read but cannot be used, with the reason it is counted under (e.g. a ragged CSV line)."""

    reason: str


def read_rows(
    source: str | os.PathLike | Iterable[Mapping[str, Any]],
) -> list[Mapping[str, Any] | UnusableRow]:
    """Rows of a JSONL, JSON, CSV or Parquet file, of a `datasets.Dataset`, or of any iterable of mappings."""
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    if not isinstance(source, (str, os.PathLike)):
        if not isinstance(source, Iterable):
            raise TypeError(
                f"The preference data (`source`) has to be a file path or rows (an iterable of mappings), got "
                f"{type(source).__name__} ({source!r})."
            )
        if isinstance(source, Mapping):
            raise ValueError(
                f"Preference data has to be rows (an iterable of mappings), got a {type(source).__name__} with keys "
                f"{sorted(map(str, source))[:5]}: pass one split (e.g. `data['train']`) or a list of rows."
            )
        return list(source)
    path = Path(source)
    if path.is_dir():
        raise ValueError(
            f"The preference data {str(path)!r} is a folder: give one .jsonl, .json, .csv or .parquet file."
        )
    if not path.is_file():
        raise ValueError(f"The preference data file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _jsonl_rows(path)
        if suffix == ".json":
            return _json_rows(path)
        if suffix == ".csv":
            return _csv_rows(path)
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as error:
                raise ImportError("Reading Parquet needs `pyarrow`: pip install pyarrow") from error
            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}): save it as UTF-8."
        ) from error
    except RecursionError:
        raise ValueError(
            f"{str(path)!r} is nested too deeply to read; rows need only three fields."
        ) from None
    except (OSError, ValueError) as error:
        if str(path) in str(error):
            raise
        raise ValueError(f"Could not read the preference data file {str(path)!r}: {error}") from error
    raise ValueError(f"Unsupported preference data format {suffix!r}: use .jsonl, .json, .csv or .parquet.")


def _csv_rows(path: Path) -> list[Mapping[str, Any] | UnusableRow]:
    """The rows of a CSV file; a row whose number of fields differs from the header's is an [`UnusableRow`]."""
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle, restkey=_RAGGED, restval=_RAGGED)
        rows, ragged = [], []
        for row in reader:
            if _RAGGED in row or _RAGGED in row.values():
                ragged.append((len(rows), reader.line_num))
            rows.append(row)
    if ragged:
        lines = ", ".join(str(line) for _, line in ragged[:10]) + (", ..." if len(ragged) > 10 else "")
        unusable = UnusableRow(
            f"malformed CSV row: its number of fields differs from the header's (lines {lines})"
        )
        for index, _ in ragged:
            rows[index] = unusable
    return rows


#: What `csv.DictReader` puts where a row has more fields than the header, or fewer.
_RAGGED = "\0ragged"


def _jsonl_rows(path: Path) -> list[Any]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                # Without its line break, an error at the end of the line is placed there, not on a line after it.
                rows.append(json.loads(line.rstrip("\r\n")))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{str(path)!r}, line {number}: not valid JSON ({error.msg}, column {error.colno})."
                ) from error
    return rows


def _json_rows(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{str(path)!r}, line {error.lineno}: not valid JSON ({error.msg}, column {error.colno})."
        ) from error
    layouts = (
        'a list of rows, {"data": [rows]}, or columns {"prompt": [...], "chosen": [...], "rejected": [...]}'
    )
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(data).__name__}; expected {layouts}.")
    if isinstance(data.get("data"), list):
        return data["data"]
    if not all(isinstance(values, list) for values in data.values()):
        if all(column in data for column in COLUMNS):
            return [data]  # one row
        raise ValueError(f"{str(path)!r} holds a JSON object that is none of {layouts}.")
    lengths = {key: len(values) for key, values in data.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{str(path)!r}: the columns have different lengths ({lengths}).")
    keys = list(data)
    return [dict(zip(keys, values, strict=True)) for values in zip(*data.values(), strict=True)]


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _render(row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> tuple[str, str, str, bool] | str:
    """`(prompt, chosen, rejected, is_chat)` as text, or the reason the row is unusable."""
    for column in COLUMNS:
        if column not in row:
            return f"missing column '{column}'"
        if row[column] is None:
            return f"empty field '{column}' (None)"
    values = [row[column] for column in COLUMNS]
    if all(isinstance(v, str) for v in values):
        if any(not v.strip() for v in values[1:]) or not values[0].strip():
            return "empty field"
        return values[0], values[1], values[2], False
    for column, value in zip(COLUMNS, values, strict=True):
        if not (isinstance(value, str) or _is_messages(value)):
            return f"non-string field '{column}' ({type(value).__name__})"
    if getattr(tokenizer, "chat_template", None) is None:
        return "conversational row but the tokenizer has no chat template"
    prompt = values[0] if _is_messages(values[0]) else [{"role": "user", "content": values[0]}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    responses = []
    for value in values[1:]:
        turns = value if _is_messages(value) else [{"role": "assistant", "content": value}]
        if not any(m["content"].strip() for m in turns):
            return "empty field"
        full = tokenizer.apply_chat_template(prompt + turns, tokenize=False)
        responses.append(full[len(prompt_text) :] if full.startswith(prompt_text) else turns[-1]["content"])
    return prompt_text, responses[0], responses[1], True


def tokenize_pair(
    prompt: str,
    chosen: str,
    rejected: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    is_chat: bool = False,
) -> dict[str, list[int]] | str:
    """Token ids of one pair, responses truncated to fit `max_length`; or the reason it does not fit."""
    prompt_ids = tokenizer(prompt, add_special_tokens=not is_chat)["input_ids"]
    if len(prompt_ids) >= max_length:
        return "prompt longer than max_length"
    room = max_length - len(prompt_ids)
    chosen_ids = tokenizer(chosen, add_special_tokens=False)["input_ids"][:room]
    rejected_ids = tokenizer(rejected, add_special_tokens=False)["input_ids"][:room]
    if not chosen_ids or not rejected_ids:
        return "empty field"
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


def load_preference_data(
    source: str | os.PathLike | Iterable[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 512,
) -> PreferenceData:
    """Read, validate and tokenize preference pairs in the prompt/chosen/rejected layout.

    Rows may be plain text (three strings) or conversational (lists of `{"role", "content"}` messages, rendered
    with the tokenizer's chat template). Bad rows — a missing column, an empty or non-string field, a prompt of
    `max_length` tokens or more — are skipped and counted; the counts are logged at the end.

    Args:
        source: a `.jsonl`, `.json`, `.csv` or `.parquet` file, a `datasets.Dataset`, or an iterable of dicts.
        tokenizer (`PreTrainedTokenizerBase`): the reward model's tokenizer.
        max_length (`int`, *optional*, defaults to 512): prompt plus response, in tokens; responses are
            truncated to fit.

    Raises:
        `ValueError`: if no usable pair is left (the message lists the reasons).

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> from hf_rgtg.data import load_preference_data

    >>> vocab = {w: i for i, w in enumerate(["[UNK]", "hi", "good", "bad", "day"])}
    >>> backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    >>> rows = [{"prompt": "hi", "chosen": "good day", "rejected": "bad day"}, {"prompt": "hi", "chosen": ""}]
    >>> data = load_preference_data(rows, tokenizer)
    >>> data.examples[0]
    {'prompt_ids': [1], 'chosen_ids': [2, 4], 'rejected_ids': [3, 4]}
    >>> data.report()
    "1 pairs kept; skipped: 1 missing column 'rejected'"
    ```
    """
    max_length = _checked_max_length(tokenizer, max_length)
    data = PreferenceData()
    for row in read_rows(source):
        example = _example(row, tokenizer, max_length)
        if isinstance(example, str):
            data.skipped[example] += 1
        else:
            data.examples.append(example)
    if data.skipped:
        logger.warning(f"Preference data: {data.report()}.")
    if not data.examples:
        where = f" {os.fsdecode(source)!r}" if isinstance(source, (str, bytes, os.PathLike)) else ""
        what = "it holds no rows" if not data.skipped else data.report()
        raise ValueError(f"No usable preference pair in the data{where} ({what}).")
    return data


def _checked_max_length(tokenizer: Any, max_length: Any) -> int:
    """`max_length` as an `int`, once it and `tokenizer` are known to be of use to [`load_preference_data`]."""
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(
            f"`tokenizer` has to be the reward model's tokenizer (a PreTrainedTokenizerBase), got "
            f"{type(tokenizer).__name__} ({tokenizer!r}): load it with `AutoTokenizer.from_pretrained(...)`."
        )
    if not is_integer(max_length) or max_length < 2:
        raise ValueError(
            f"`max_length` (={max_length!r}) has to be an integer of at least 2 (prompt plus response, in tokens), "
            "e.g. `max_length=512`."
        )
    return int(max_length)


def _example(
    row: Mapping[str, Any] | UnusableRow | Any, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[int]] | str:
    """The tokenized pair of one row that [`read_rows`] gave, or the reason it is skipped."""
    if isinstance(row, UnusableRow):
        return row.reason
    if not isinstance(row, Mapping):
        return "row is not a mapping"
    rendered = _render(row, tokenizer)
    if isinstance(rendered, str):
        return rendered
    return tokenize_pair(*rendered[:3], tokenizer, max_length, rendered[3])


def prefix_lengths(
    length: int, sampling: str, min_prefix_length: int = 1, num_random: int = 4, rng=random
) -> list[int]:
    """The response prefix lengths `t` (1-based) of a pair whose responses have `length` tokens."""
    if sampling == "full":
        return [length]
    lengths = list(range(min(min_prefix_length, length), length + 1))
    if sampling == "random":
        return sorted(rng.sample(lengths, min(num_random, len(lengths))))
    return lengths


class _PrefixSettings(Protocol):
    """What [`PrefixRewardCollator.from_config`] reads of a [`PrefixRewardTrainingConfig`] (which imports this
    module, so it is not imported here)."""

    prefix_sampling: str
    min_prefix_length: int
    num_random_prefixes: int
    position_weighting: str
    encoder_prefixes_per_pair: int
    seed: int


@dataclass
class PrefixRewardCollator:
    """Batches tokenized pairs for the prefix Bradley-Terry loss, in one of two layouts.

    **One sequence per response** (the default, for causal backbones, whose one forward scores every prefix): for
    each pair the shorter response is padded with EOS to the longer one's length `L` (as PARGS does), so
    `chosen[:t]` and `rejected[:t]` exist for every `t ≤ L`. Sequences are `prompt + response`, right-padded with
    the pad id. `loss_weights` is non-zero exactly at the positions whose prefix reward enters the loss: position
    `len(prompt) + t - 1` for every selected `t`.

    **One sequence per prefix** (`per_prefix=True`, for encoders, whose every position sees the tokens after it):
    each selected `t` gives the two sequences `prompt + chosen[:t]` and `prompt + rejected[:t]`, whose rewards are
    read at their last token; a response shorter than `t` is taken whole (a finished response is scored as it
    is, as `token_rewards` and guided decoding see it), so no EOS is needed. Sequences are right-padded with the
    pad id to one width. When more than `max_prefixes_per_pair` lengths are selected, that many are drawn at random
    (without replacement) from them, and each weighs `selected / drawn` times more, so that the weighting of the
    one-sequence-per-response loss holds in expectation. `prefix_weights` is each prefix pair's weight,
    `prefix_pairs` the example it comes from and `prefix_lengths` its `t`.

    Args:
        pad_token_id (`int`): padding id.
        eos_token_id (`int`, *optional*): the id that pads the shorter response; needed unless `per_prefix`.
        prefix_sampling (`str`, *optional*, defaults to `"all"`): see [`PrefixRewardTrainingConfig`], as for
            `min_prefix_length`, `num_random_prefixes` and `position_weighting`.
        seed (`int`, *optional*, defaults to 0): seeds the random prefix choice.
        per_prefix (`bool`, *optional*, defaults to `False`): lay each prefix out as a sequence of its own.
        max_prefixes_per_pair (`int`, *optional*): with `per_prefix`, at most this many prefix lengths per pair
            (`None`: every selected one); `encoder_prefixes_per_pair` of [`PrefixRewardTrainingConfig`].

    Examples:

    ```python
    >>> from hf_rgtg.data import PrefixRewardCollator
    >>> collate = PrefixRewardCollator(pad_token_id=0, eos_token_id=9)
    >>> batch = collate([{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 7], "rejected_ids": [3]}])
    >>> batch["chosen_input_ids"].tolist(), batch["rejected_input_ids"].tolist()
    ([[5, 6, 7, 8, 7]], [[5, 6, 3, 9, 9]])
    >>> batch["loss_weights"].tolist()
    [[0.0, 0.0, 1.0, 1.0, 1.0]]

    >>> # One sequence per prefix, `t` = 1, 2, 3: the rejected response (one token) is whole from `t` = 1 on.
    >>> batch = PrefixRewardCollator(pad_token_id=0, per_prefix=True)(
    ...     [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 7], "rejected_ids": [3]}]
    ... )
    >>> batch["chosen_input_ids"].tolist(), batch["rejected_input_ids"].tolist()
    ([[5, 6, 7, 0, 0], [5, 6, 7, 8, 0], [5, 6, 7, 8, 7]], [[5, 6, 3, 0, 0], [5, 6, 3, 0, 0], [5, 6, 3, 0, 0]])
    >>> batch["prefix_lengths"].tolist(), batch["prefix_weights"].tolist()
    ([1, 2, 3], [1.0, 1.0, 1.0])
    ```
    """

    pad_token_id: int
    eos_token_id: int | None = None
    prefix_sampling: str = "all"
    min_prefix_length: int = 1
    num_random_prefixes: int = 4
    position_weighting: str = "uniform"
    seed: int = 0
    per_prefix: bool = False
    max_prefixes_per_pair: int | None = None

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        if self.eos_token_id is None and not self.per_prefix:
            raise ValueError(
                "`eos_token_id` is needed to pad the shorter response of each pair (one sequence per response); "
                "give it, or lay each prefix out as its own sequence with `per_prefix=True`."
            )
        if self.max_prefixes_per_pair is not None and (
            not is_integer(self.max_prefixes_per_pair) or self.max_prefixes_per_pair < 1
        ):
            raise ValueError(
                f"`max_prefixes_per_pair` (={self.max_prefixes_per_pair!r}) has to be a positive integer or None."
            )

    @classmethod
    def from_config(
        cls, config: _PrefixSettings, tokenizer: PreTrainedTokenizerBase, per_prefix: bool = False
    ) -> PrefixRewardCollator:
        """The collator of a training run: its prefix settings and seed, the tokenizer's EOS and pad ids.

        Args:
            config ([`PrefixRewardTrainingConfig`]): the training settings (any object with their
                `prefix_sampling`, `min_prefix_length`, `num_random_prefixes`, `position_weighting`,
                `encoder_prefixes_per_pair` and `seed`).
            tokenizer (`PreTrainedTokenizerBase`): the tokenizer; a missing pad token falls back to EOS.
            per_prefix (`bool`, *optional*, defaults to `False`): one sequence per prefix (for a backbone that is
                not causal), at most `config.encoder_prefixes_per_pair` of them per pair.

        Raises:
            `ValueError`: if the tokenizer has no EOS token (without `per_prefix`), or neither a pad token nor EOS.
        """
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        if eos is None and not per_prefix:
            raise ValueError(
                "The tokenizer has no EOS token, which pads the shorter response of each pair; set one."
            )
        if pad is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with; set one.")
        return cls(
            pad_token_id=pad,
            eos_token_id=eos,
            prefix_sampling=config.prefix_sampling,
            min_prefix_length=config.min_prefix_length,
            num_random_prefixes=config.num_random_prefixes,
            position_weighting=config.position_weighting,
            seed=config.seed,
            per_prefix=per_prefix,
            max_prefixes_per_pair=config.encoder_prefixes_per_pair if per_prefix else None,
        )

    def _weighted_lengths(self, length: int) -> dict[int, float]:
        """The selected prefix lengths `t` of a pair whose longer response has `length` tokens, with their weights."""
        ts = prefix_lengths(
            length, self.prefix_sampling, self.min_prefix_length, self.num_random_prefixes, self._rng
        )
        scale = 1.0
        if (
            self.per_prefix
            and self.max_prefixes_per_pair is not None
            and len(ts) > self.max_prefixes_per_pair
        ):
            scale = len(ts) / self.max_prefixes_per_pair
            ts = sorted(self._rng.sample(ts, self.max_prefixes_per_pair))
        linear = self.position_weighting == "linear"
        return {t: scale * (t / length if linear else 1.0) for t in ts}

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        if self.per_prefix:
            return self._per_prefix_batch(examples)
        sequences: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
        weights: list[dict[int, float]] = []
        for example in examples:
            prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
            length = max(len(chosen), len(rejected))
            sequences["chosen"].append(prompt + chosen + [self.eos_token_id] * (length - len(chosen)))
            sequences["rejected"].append(prompt + rejected + [self.eos_token_id] * (length - len(rejected)))
            weighted = self._weighted_lengths(length)
            weights.append({len(prompt) + t - 1: weight for t, weight in weighted.items()})
        batch = self._padded(sequences)
        loss_weights = torch.zeros(len(examples), batch["chosen_input_ids"].shape[1])
        for row, positions in enumerate(weights):
            for position, weight in positions.items():
                loss_weights[row, position] = weight
        batch["loss_weights"] = loss_weights
        return batch

    def _per_prefix_batch(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """The batch of `per_prefix=True`: two sequences per selected prefix length of each pair."""
        sequences: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
        weights, pairs, lengths = [], [], []
        for index, example in enumerate(examples):
            prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
            for t, weight in self._weighted_lengths(max(len(chosen), len(rejected))).items():
                sequences["chosen"].append(prompt + chosen[:t])
                sequences["rejected"].append(prompt + rejected[:t])
                weights.append(weight)
                pairs.append(index)
                lengths.append(t)
        batch = self._padded(sequences)
        batch[PREFIX_WEIGHTS] = torch.tensor(weights, dtype=torch.float32)
        batch["prefix_pairs"] = torch.tensor(pairs, dtype=torch.long)
        batch["prefix_lengths"] = torch.tensor(lengths, dtype=torch.long)
        return batch

    def _padded(self, sequences: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        """`{side}_input_ids` and `{side}_attention_mask` of both sides, right-padded to one width."""
        width = max(len(row) for rows in sequences.values() for row in rows)
        batch: dict[str, torch.Tensor] = {}
        for name, rows in sequences.items():
            batch[f"{name}_input_ids"] = torch.tensor(
                [r + [self.pad_token_id] * (width - len(r)) for r in rows], dtype=torch.long
            )
            batch[f"{name}_attention_mask"] = torch.tensor(
                [[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long
            )
        return batch


__all__ = [
    "PREFIX_WEIGHTS",
    "PreferenceData",
    "PrefixRewardCollator",
    "UnusableRow",
    "load_preference_data",
    "prefix_lengths",
    "read_rows",
    "tokenize_pair",
]
