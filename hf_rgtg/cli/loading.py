"""What the commands share: loading models and tokenizers by the flag that names them, and checking paths."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..auto import looks_like_local_path
from ..modeling import PrefixRewardModel
from . import PROG

_T = TypeVar("_T")


# Files a tokenizer is saved in (fast, slow BPE/WordPiece, SentencePiece); a model folder with none has no tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def checked_tokenizer(name: str, or_flag: bool = True) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(name)`, refusing the empty tokenizer it builds for a folder without tokenizer
    files (every text would then tokenize to nothing). To be called inside [`load_named`]."""
    message = "it has no tokenizer (no tokenizer.json or tokenizer_config.json): save the tokenizer next to the model"
    message += ", or pass --tokenizer" if or_flag else ""
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / file).exists() for file in TOKENIZER_FILES):
        raise OSError(message)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if len(tokenizer) < 2:
        raise OSError(message)
    return tokenizer


def check_data_file(flag: str, name: str | None) -> None:
    """Fail before loading any model on a data file that is not there."""
    if name is not None and not Path(name).expanduser().is_file():
        what = "a folder" if Path(name).expanduser().is_dir() else "not there"
        raise ValueError(f"argument {flag}: {name!r} is {what}: give a .jsonl, .json, .csv or .parquet file")


def fitted_max_length(max_length: int, model: PrefixRewardModel) -> int:
    """`--max-length`, lowered (with a note) to what the reward model's backbone can read."""
    limit = model.max_positions
    if limit is None or max_length <= limit:
        return max_length
    print(
        f"{PROG}: note: --max-length {max_length} is more than the model's {limit} positions; using {limit}",
        file=sys.stderr,
    )
    return limit


def check_local_path(flag: str, name: str) -> None:
    """Fail early, and clearly, on a path that does not exist, which would otherwise be taken for a Hub id."""
    if looks_like_local_path(name) and not Path(name).expanduser().exists():
        raise OSError(f"argument {flag}: the folder {name!r} does not exist")


def load_named(flag: str, name: str, load: Callable[[], _T]) -> _T:
    """Run `load` and name the flag and the model in its errors."""
    try:
        return load()
    except OSError as error:
        raise OSError(f"argument {flag}: cannot load {name!r}: {error}") from error
    except ValueError as error:
        raise ValueError(f"argument {flag}: cannot load {name!r}: {error}") from error


__all__ = [
    "TOKENIZER_FILES",
    "check_data_file",
    "check_local_path",
    "checked_tokenizer",
    "fitted_max_length",
    "load_named",
]
