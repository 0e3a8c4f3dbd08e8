"""`hf-rgtg score`: the token rewards of one response, printed, and written as an HTML or PNG heatmap or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import pipeline

from .. import pipelines  # noqa: F401  (registers "token-rewards")
from ..redistribution import TokenRewards
from ..visualization import require_matplotlib, token_rewards_html, token_rewards_png
from . import PROG
from .loading import check_local_path, load_reward_model, named
from .tables import token_rewards_table


def add_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """Declare the `score` command."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=(
            "Each response token's share of the reward, r_t = R(x, y<=t) - R(x, y<t), from one forward of a prefix\n"
            "reward model (the packaged default one unless --rm is given). The shares add up to R(x, y) - R(x)."
        ),
        epilog=(
            "examples:\n"
            f'  {PROG} score --prompt "How was your day?" --response "Lovely, thank you!" --html day.html\n'
            f'  {PROG} score --prompt "How was your day?" --response "Lovely, thank you!" --png day.png\n'
            f'  {PROG} score --rm my-prefix-rm --prompt "Hi" --response "Hello!" --json'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rm", metavar="NAME", help="Hub id or folder of the reward model (default: the packaged one)"
    )
    parser.add_argument("--tokenizer", metavar="NAME", help="tokenizer (default: the reward model's)")
    parser.add_argument(
        "--prompt", required=True, help="the prompt (a user message when the tokenizer has a chat template)"
    )
    parser.add_argument("--response", required=True, help="the response to score")
    parser.add_argument("--no-chat-template", action="store_true", help="score the prompt as plain text")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a heatmap of the token rewards here")
    parser.add_argument(
        "--png",
        type=Path,
        metavar="FILE",
        help="write the heatmap as a PNG image here (needs matplotlib: pip install 'hf_rgtg[plot]')",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the token rewards as JSON instead of a table"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg score`: print each token's reward, and write the heatmap if asked."""
    args.rm = named(args.rm)
    for flag, name in (("--rm", args.rm), ("--tokenizer", args.tokenizer)):
        if name is not None:
            check_local_path(flag, name)
    for flag, file in (("--html", args.html), ("--png", args.png)):
        if file is not None and not file.parent.is_dir():
            raise ValueError(f"argument {flag}: the folder {str(file.parent)!r} does not exist")
    if args.png is not None:
        require_matplotlib()  # before the model loads, not after the scoring
    reward_model, tokenizer = load_reward_model(args.rm, args.tokenizer)
    chat = not args.no_chat_template and getattr(tokenizer, "chat_template", None)
    prompt = [{"role": "user", "content": args.prompt}] if chat else args.prompt
    scorer = pipeline("token-rewards", model=reward_model, tokenizer=tokenizer)
    record = scorer({"prompt": prompt, "response": args.response})
    result = TokenRewards.from_dict(record)
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    else:
        print("\n".join(token_rewards_table(result)))
    if args.html is not None:
        args.html.write_text(
            token_rewards_html(result, prompt=args.prompt, labels=["response"]), encoding="utf-8"
        )
    if args.png is not None:
        token_rewards_png(result, args.png, prompt=args.prompt, labels=["response"])
    for file in (args.html, args.png):
        if file is not None and not args.json:
            print(f"wrote {file}")
    return 0
