"""What the commands share: loading models and tokenizers by the flag that names them, and checking paths."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .. import defaults
from ..auto import AutoModelForPrefixReward, looks_like_local_path
from ..data import PreferenceData, load_preference_data, read_rows
from ..modeling import PrefixRewardModel
from . import PROG

_T = TypeVar("_T")

#: The name by which every command takes the embedded defaults: SmolLM2-135M-Instruct as the language model, the
#: packaged reward model as the reward model.
DEFAULT_NAME = "default"


def named(name: str | None) -> str | None:
    """`name`, or `None` (the command's embedded default) when it is `None` or [`DEFAULT_NAME`]."""
    return None if name in (None, DEFAULT_NAME) else name


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


def read_data_file(flag: str, name: str) -> list:
    """The rows of the data file `name`, read before any model is loaded, so that a file that is not there or
    cannot be read (invalid JSON, with its file and line; not UTF-8; ...) is refused at once, under `flag`. Give
    them to [`preference_pairs`] once the tokenizer and the model are loaded."""
    check_data_file(flag, name)
    try:
        return read_rows(Path(name).expanduser())
    except ValueError as error:
        raise ValueError(f"argument {flag}: {error}") from None


def preference_pairs(
    flag: str, name: str, rows: list, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> PreferenceData:
    """`load_preference_data` of the rows [`read_data_file`] read from `name`; a file without a usable pair is
    refused under `flag`, with its name."""
    try:
        return load_preference_data(rows, tokenizer, max_length=max_length)
    except ValueError as error:
        raise ValueError(f"argument {flag}: {name!r}: {error}") from None


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
    "preference_pairs",
    "read_data_file",
]


def load_reward_model(
    name: str | None, tokenizer_name: str | None = None
) -> tuple[PrefixRewardModel, PreTrainedTokenizerBase]:
    """The reward model named by `--rm` and its tokenizer (`--tokenizer`, else the reward model's own): with no
    name, the packaged default reward model on SmolLM2's tokenizer."""
    if name is None:
        tokenizer = tokenizer_name or str(defaults.default_lm_path())
        reward_model = defaults.load_default_rm()
    else:
        tokenizer = tokenizer_name or name
        reward_model = load_named("--rm", name, lambda: AutoModelForPrefixReward.from_pretrained(name))
    flag = "--tokenizer" if tokenizer_name else "--rm"
    return reward_model.eval(), load_named(flag, tokenizer, lambda: checked_tokenizer(tokenizer))
