"""The whole-file mode of `hf-rgtg generate`: prompts read from JSON Lines, one record per prompt appended to an
output file that a rerun of the same command resumes, and each process's share of the work under
`accelerate launch`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import PROG

_T = TypeVar("_T")

#: A prompt as a line of the input gives it: text, or chat messages (`{"role": ..., "content": ...}` dicts).
Prompt = str | list[dict[str, str]]


@dataclass
class PromptLine:
    """One prompt of the input file, with its 1-based line number (the key of its record in the output)."""

    line: int
    prompt: Prompt
    #: The input line's `"id"`, copied into its record, when it has one.
    id: Any = None


@dataclass
class PromptFile:
    """The prompts of an input file, and the lines that were not prompts, as `(line number, reason)`."""

    prompts: list[PromptLine] = field(default_factory=list)
    malformed: list[tuple[int, str]] = field(default_factory=list)


def _messages_problem(messages: list) -> str | None:
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            return 'chat messages are {"role": ..., "content": "..."} objects'
        if not isinstance(message.get("role"), str):
            return 'a chat message has no "role"'
    return None if messages else "the chat has no messages"


def parse_prompt(value: Any) -> tuple[Prompt, Any]:
    """The prompt (and `"id"`) of one decoded input line: a string, a list of chat messages, or an object with
    `"prompt"` (text or messages) or `"messages"`.

    Raises:
        `ValueError`: saying what the line should be instead.
    """
    identifier = None
    if isinstance(value, Mapping):
        keys = [key for key in ("prompt", "messages") if key in value]
        if len(keys) != 1:
            raise ValueError('an object needs one "prompt" (text or chat messages) or "messages" key')
        identifier, value = value.get("id"), value[keys[0]]
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value, identifier
    if isinstance(value, list):
        problem = _messages_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return [dict(message) for message in value], identifier
    raise ValueError(f"a prompt is text or a list of chat messages, not {type(value).__name__}")


def read_prompts(path: Path) -> PromptFile:
    """The prompts of the JSON Lines file `path`; each line that is not one is reported (with its number and what
    is wrong) and skipped. Blank lines hold nothing and are passed over."""
    result = PromptFile()
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                prompt, identifier = parse_prompt(json.loads(text))
            except json.JSONDecodeError as error:
                result.malformed.append((number, f"not JSON ({error.msg} at column {error.colno})"))
                continue
            except ValueError as error:
                result.malformed.append((number, str(error)))
                continue
            result.prompts.append(PromptLine(number, prompt, identifier))
    return result


def _settings_difference(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """`name was X, now Y` for each setting that differs."""
    names = [name for name in {**before, **now} if before.get(name) != now.get(name)]
    return ", ".join(f"{name} was {before.get(name)!r}, now {now.get(name)!r}" for name in names)


def _record(text: str) -> dict | None:
    """The record a line of the output holds, or `None` for a line that is not a whole one."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "line" in record else None


def read_records(path: Path, prompts: list[PromptLine], settings: Mapping[str, Any]) -> dict[int, dict]:
    """The records an earlier run of the same command left in `path`, by input line.

    A line that is not a whole record (the run was stopped while writing it) is passed over with a warning: its
    prompt is generated again, and the final rewrite of the file drops it.

    Raises:
        `ValueError`: when the records were written with other settings, or for other prompts (the input
            changed): the message says to pass another `--output`.
    """
    if not path.exists():
        return {}
    by_line = {prompt.line: prompt.prompt for prompt in prompts}
    records: dict[int, dict] = {}
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            record = _record(text)
            if record is None:
                print(
                    f"{PROG}: {path}:{number} is not a whole record (a run stopped while writing it?); its prompt "
                    "is generated again",
                    file=sys.stderr,
                )
                continue
            line = record["line"]
            if record.get("settings") != settings:
                raise ValueError(
                    f"argument --output: {path} holds records made with other settings "
                    f"({_settings_difference(record.get('settings') or {}, settings)}); rerun with those settings to "
                    "resume it, or pass another --output"
                )
            if by_line.get(line) != record.get("prompt"):
                raise ValueError(
                    f"argument --output: {path} has a record for line {line} of another prompt: the input changed "
                    "since it was written; pass another --output"
                )
            records[line] = record
    return records


def drop_unfinished_tail(path: Path) -> None:
    """Cut off what follows the last newline of `path`: the start of a record a stopped run did not finish, which
    the next record appended would otherwise run into."""
    if not path.exists():
        return
    with path.open("rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            end = data.rfind(b"\n") + 1
            print(
                f"{PROG}: {path}: dropped an unfinished record at its end (a run stopped while writing it); its "
                "prompt is generated again",
                file=sys.stderr,
            )
            file.truncate(end)


def append_records(path: Path, records: list[dict]) -> None:
    """Append `records` to `path` in one write, so that a run stopped midway loses at most this batch, and the
    processes of one launch never interleave their lines."""
    if not records:
        return
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rewrite_in_input_order(path: Path, prompts: list[PromptLine]) -> int:
    """Rewrite `path` with one record per prompt, in the input's order (the processes of a launch append in any
    order), dropping unfinished lines; returns the number of records. The new file replaces the old one whole."""
    records: dict[int, str] = {}
    if path.exists():
        for text in path.read_text(encoding="utf-8").splitlines():
            record = _record(text)
            if record is not None:
                records[record["line"]] = text
    ordered = [records[prompt.line] for prompt in prompts if prompt.line in records]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(text + "\n" for text in ordered), encoding="utf-8")
    partial.replace(path)
    return len(ordered)


def batches_of(
    prompts: Sequence[_T], batch_size: int, process_index: int = 0, num_processes: int = 1
) -> Iterator[tuple[int, Sequence[_T]]]:
    """`(batch number, prompts)` of this process's share: the prompts cut into batches of `batch_size` in input
    order, batch `b` going to process `b % num_processes`. The batches do not depend on the number of processes,
    so neither do the outputs (each batch is seeded by its number)."""
    for number, start in enumerate(range(0, len(prompts), batch_size)):
        if number % num_processes == process_index:
            yield number, prompts[start : start + batch_size]


__all__ = [
    "Prompt",
    "PromptFile",
    "PromptLine",
    "append_records",
    "batches_of",
    "drop_unfinished_tail",
    "parse_prompt",
    "read_prompts",
    "read_records",
    "rewrite_in_input_order",
]
