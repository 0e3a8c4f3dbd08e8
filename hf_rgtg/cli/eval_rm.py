"""`hf-rgtg eval-rm`: the prefix accuracy of any reward model on preference pairs."""

from __future__ import annotations

import argparse

from ..evaluation import evaluate_prefix_accuracy
from ..tokenization import ensure_pad_token
from . import PROG
from .loading import (
    check_local_path,
    fitted_max_length,
    load_reward_model,
    named,
    preference_pairs,
    read_data_file,
)


def add_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """Declare the `eval-rm` command."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "How often a reward model prefers the chosen response over the rejected one on every prefix of\n"
            "held-out pairs, by relative position in the response (and on whole responses). Works for prefix\n"
            "reward models and for ordinary reward models alike."
        ),
        epilog=f"example:\n  {PROG} eval-rm --rm my-prefix-rm --data held_out.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rm",
        required=True,
        metavar="NAME",
        help="Hub id or folder of the reward model, or 'default' (the packaged one)",
    )
    parser.add_argument(
        "--data", required=True, metavar="FILE", help="preference pairs (.jsonl, .json, .csv, .parquet)"
    )
    parser.add_argument("--tokenizer", metavar="NAME", help="tokenizer (default: the reward model's)")
    parser.add_argument(
        "--max-length", type=int, default=512, help="prompt plus response, in tokens (default: 512)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (default: 8)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg eval-rm`: print the prefix-accuracy table of a reward model."""
    if args.batch_size < 1:
        raise ValueError(f"argument --batch-size: has to be a positive integer, got {args.batch_size}")
    if args.max_length < 2:
        raise ValueError(
            f"argument --max-length: has to be at least 2 (a prompt token and a response token), got {args.max_length}"
        )
    rm = named(args.rm)
    for flag, name in (("--rm", rm), ("--tokenizer", args.tokenizer)):
        if name is not None:
            check_local_path(flag, name)
    rows = read_data_file("--data", args.data)
    model, tokenizer = load_reward_model(rm, args.tokenizer)
    ensure_pad_token(tokenizer)
    data = preference_pairs("--data", args.data, rows, tokenizer, fitted_max_length(args.max_length, model))
    result = evaluate_prefix_accuracy(
        model,
        data.examples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        batch_size=args.batch_size,
    )
    print(f"{args.rm} on {data.report()}:\n")
    print(result.to_markdown())
    return 0


__all__ = ["add_parser", "run"]
