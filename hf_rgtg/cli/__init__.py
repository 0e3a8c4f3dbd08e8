"""The `hf-rgtg` command line, one module per command.

[`main`] builds the top-level parser from [`COMMANDS`] without importing torch or transformers, so `hf-rgtg --help`
answers at once. Only the command being run is imported: its module declares the command's arguments
(`add_parser`) and carries it out (`run`). Errors users can fix (bad values, missing packages, models that cannot
be found) become a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .. import __version__

PROG = "hf-rgtg"


@dataclass(frozen=True)
class Command:
    """One command of `hf-rgtg`.

    Args:
        module (`str`): the module of `hf_rgtg.cli` that declares and runs it.
        help (`str`): its line in `hf-rgtg --help`.
    """

    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "generate": Command("generate", "continue a prompt with reward-guided decoding"),
    "train": Command(
        "train", "train a prefix reward model on preference pairs (every TrainingArguments option is a flag)"
    ),
    "score": Command(
        "score", "each response token's share of the reward (r_t), printed or as an HTML heatmap"
    ),
    "eval-rm": Command(
        "eval_rm",
        "prefix accuracy of any reward model on preference pairs, by relative position in the response",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `hf-rgtg` command line.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments after the program name; defaults to `sys.argv[1:]`.

    Returns:
        `int`: the exit code: 0 on success, 2 for a usage error or an error the user can fix (the message is
        printed to stderr as `hf-rgtg: error: <message>`), 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(next((arg for arg in argv if not arg.startswith("-")), None))
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_request:
            # argparse exits on `--help` (code 0) and on malformed arguments (code 2, after printing the usage).
            return exit_request.code if isinstance(exit_request.code, int) else 2
        return args.run(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `hf-rgtg`, with one subparser per command.

    Args:
        command (`str`, *optional*): the command about to run. Only its module is imported and only its arguments
            are declared; the other commands get their line in `--help` and nothing else.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reward-guided text generation (ARGS, PARGS) with Hugging Face transformers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in COMMANDS.items():
        if name == command:
            importlib.import_module(f"{__name__}.{spec.module}").add_parser(subparsers, name, spec.help)
        else:
            subparsers.add_parser(name, help=spec.help)
    return parser


def _one_line(message: str) -> str:
    """Join a multi-line message (e.g. one that gives a command on its own line) into one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


__all__ = ["COMMANDS", "PROG", "Command", "build_parser", "main"]
