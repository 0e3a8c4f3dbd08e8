"""`hf-rgtg generate --input FILE --output FILE`: every prompt of a file through the guided pipeline, in batches,
with a progress bar, resumable, and shared among the processes of `accelerate launch`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from . import PROG
from .devices import resolve_device
from .guided_run import GuidedRun
from .prompt_files import (
    PromptFile,
    PromptLine,
    append_records,
    batches_of,
    drop_unfinished_tail,
    read_prompts,
    read_records,
    rewrite_in_input_order,
)


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:20]))
    return (
        ("line " if len(numbers) == 1 else "lines ")
        + shown
        + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass
class FileJob:
    """One run over `--input`: its prompts, the records `--output` holds already, and this process's place among
    those of the launch (one process without `accelerate launch`)."""

    args: argparse.Namespace
    prompts: PromptFile
    done: dict[int, dict]
    state: PartialState

    @classmethod
    def prepare(cls, args: argparse.Namespace, settings: dict[str, Any]) -> FileJob:
        """Read `--input` (reporting each malformed line) and what `--output` holds, before any model loads.

        Raises:
            `ValueError`: naming the flag, for a missing input, or an output of other settings or prompts.
        """
        if not args.input.is_file():
            raise ValueError(f"argument --input: {str(args.input)!r} is not a file")
        state = PartialState(cpu=resolve_device(args.device).type == "cpu")
        if state.is_main_process:
            drop_unfinished_tail(args.output)
        state.wait_for_everyone()
        prompts = read_prompts(args.input)
        done = read_records(args.output, prompts.prompts, settings)
        if state.is_main_process:
            for line, reason in prompts.malformed:
                print(f"{PROG}: {args.input}:{line}: skipped: {reason}", file=sys.stderr)
        return cls(args, prompts, done, state)

    @property
    def device(self) -> torch.device:
        """Where this process's models run: the launch's device for it, else `--device`."""
        return self.state.device if self.state.num_processes > 1 else resolve_device(self.args.device)

    def _usable(self, run: GuidedRun) -> tuple[list[tuple[PromptLine, Any]], list[tuple[int, str]]]:
        """The prompts the models can take, each with its pipeline input, and the others with the reason. Every
        process finds the same, so that all cut the same batches."""
        usable, refused = [], []
        for prompt in self.prompts.prompts:
            try:
                given = run.input_of(prompt.prompt)
                run.check_positions(given)
            except ValueError as error:
                refused.append((prompt.line, str(error)))
                continue
            usable.append((prompt, given))
        return usable, refused

    def run(self, run: GuidedRun) -> int:
        """Generate every prompt of this process's share that `--output` lacks, appending one batch of records at
        a time; then (once every process is done) put the file in input order and print a summary."""
        args, state = self.args, self.state
        usable, refused = self._usable(run)
        if state.is_main_process:
            for line, reason in refused:
                print(f"{PROG}: {args.input}:{line}: skipped: {reason}", file=sys.stderr)
        work = [
            (number, [(prompt, given) for prompt, given in batch if prompt.line not in self.done])
            for number, batch in batches_of(usable, args.batch_size, state.process_index, state.num_processes)
        ]
        work = [(number, batch) for number, batch in work if batch]
        where = (
            f" [process {state.process_index + 1}/{state.num_processes}]" if state.num_processes > 1 else ""
        )
        with tqdm(
            total=sum(len(batch) for _, batch in work),
            unit="prompt",
            desc=f"generate{where}",
            file=sys.stderr,
        ) as bar:
            for number, batch in work:
                append_records(args.output, self._records(run, number, batch))
                bar.update(len(batch))
        state.wait_for_everyone()
        if state.is_main_process:
            self._summary(rewrite_in_input_order(args.output, self.prompts.prompts), refused)
        return 0

    def _records(self, run: GuidedRun, number: int, batch: list[tuple[PromptLine, Any]]) -> list[dict]:
        """The records of batch `number`, seeded by its number: the same whichever process generates it."""
        inputs = [given for _, given in batch]
        seed = self.args.seed + number
        guided = run.call(inputs, seed)
        unguided = run.call(inputs, seed, guide=False) if self.args.compare else [None] * len(batch)
        return [
            {
                "line": prompt.line,
                **({"id": prompt.id} if prompt.id is not None else {}),
                "prompt": prompt.prompt,
                **run.record(guided_records, unguided_records),
            }
            for (prompt, _), guided_records, unguided_records in zip(batch, guided, unguided, strict=True)
        ]

    def _summary(self, records: int, refused: list[tuple[int, str]]) -> None:
        args, prompts = self.args, self.prompts
        malformed = [line for line, _ in prompts.malformed]
        parts = [
            f"{args.output}: {records} records for {len(prompts.prompts)} prompts of {args.input} "
            f"({records - len(self.done)} generated now, {len(self.done)} there before)"
        ]
        if malformed:
            parts.append(f"{_count(len(malformed), 'malformed line')} skipped ({_lines(malformed)})")
        if refused:
            parts.append(
                f"{_count(len(refused), 'prompt')} the models cannot take skipped ({_lines([n for n, _ in refused])})"
            )
        print("; ".join(parts))


__all__ = ["FileJob"]
