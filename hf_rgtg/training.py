"""Training prefix reward models (PARGS): the all-prefix Bradley-Terry loss and its trainer.

The collator that lays pairs out for the loss lives in `data` (evaluation uses it too); it is importable from here
as well.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from .data import (
    PREFIX_WEIGHTS,
    PrefixRewardCollator,
    prefix_lengths,
)  # prefix_lengths: re-exported, as it lived here
from .evaluation import PrefixAccuracy, evaluate_prefix_accuracy
from .modeling import PrefixRewardModel
from .validation import is_integer, is_number

PREFIX_SAMPLING = ("all", "random", "full")
POSITION_WEIGHTING = ("uniform", "linear")
TRAIN_MODES = ("full", "head", "lora")
LORA_INSTALL_COMMAND = "pip install 'hf_rgtg[lora]'"


@dataclass
class PrefixRewardTrainingConfig(TrainingArguments):
    r"""
    Settings of [`PrefixRewardTrainer`]: everything `transformers.TrainingArguments` has, plus the following.
    Every field is also a command-line flag of `hf-rgtg train`.

    Parameters that control the data:

    - **max_length** (`int`, defaults to 512): prompt plus response, in tokens; longer responses are truncated,
      pairs whose prompt alone is this long are skipped.

    Parameters that control the loss:

    - **prefix_sampling** (`str`, defaults to `"all"`): which prefix lengths `t` of each pair enter the loss.
      `"all"` takes every `t` from `min_prefix_length` to `L`; `"random"` takes `num_random_prefixes` of them at
      random; `"full"` takes `t = L` only, i.e. an ordinary full-sequence reward model (the ARGS baseline).
    - **num_random_prefixes** (`int`, defaults to 4): prefixes per pair with `prefix_sampling="random"`.
    - **min_prefix_length** (`int`, defaults to 1): the shortest response prefix that counts.
    - **position_weighting** (`str`, defaults to `"uniform"`): `"uniform"`, or `"linear"` to weight prefix `t` by
      `t / L`.
    - **encoder_prefixes_per_pair** (`int`, defaults to 4): on an encoder backbone (BERT, RoBERTa, DeBERTa, ...;
      any backbone that is not causal), how many prefix lengths of each pair enter the loss at each step. One
      forward of an encoder does not score every prefix (each position sees the tokens after it), so each prefix
      `prompt + response[:t]` is encoded as a sequence of its own and read at its last token, two sequences per
      prefix pair. The lengths are drawn afresh at each step, at random and without replacement, from those
      `prefix_sampling` selects (all of them when there are fewer), each weighted `selected / drawn`, so that in
      expectation the loss weighs prefixes as on a causal backbone. A response shorter than `t` is taken whole.
      Causal backbones ignore it.
    - **margin** (`float`, defaults to 0.0): subtracted from every reward difference.
    - **center_rewards_coefficient** (`float`, *optional*): adds that times the mean of `(r_chosen + r_rejected)²`,
      which keeps rewards centred on zero.
    - **consistency_weight** (`float`, defaults to 1.0): for an all-token (`head_kind="vocab"`) head, the weight of
      FaRMA's consistency constraint added to the Bradley-Terry loss: the mean squared difference between
      `r(x, y<=t)` (the value gathered at token `t`) and `max_v r(x, y<=t + v)` (the head's maximum at position
      `t`), over the selected prefixes of both responses that a real token follows ([`vocab_consistency_loss`]).
      FaRMA alternates epochs of the two losses at the same learning rate, which weighs them equally: 1.0. Scalar
      heads ignore it.

    Parameters that control what is trained:

    - **train** (`str`, defaults to `"full"`): `"full"` (the whole model), `"head"` (the reward head only, the
      backbone frozen) or `"lora"` (LoRA adapters on the backbone plus the head; needs `peft`).
    - **save_head_only** (`bool`, *optional*): save the head alone (`head.safetensors`, a few kilobytes to
      megabytes) with the base model's identity, in checkpoints and at the end, instead of the whole model; loading
      reads the backbone from the base model (see [`PrefixRewardModel.save_pretrained`]). Defaults to `True` for
      `train="head"` on a model that declares its base model (`config.base_model_name_or_path`), else `False`.
    - **lora_r**, **lora_alpha**, **lora_dropout**, **lora_target_modules**: the LoRA settings.
    """

    max_length: int = field(default=512, metadata={"help": "Prompt plus response, in tokens."})
    prefix_sampling: str = field(
        default="all", metadata={"help": "Prefixes in the loss: all, random or full."}
    )
    num_random_prefixes: int = field(
        default=4, metadata={"help": "Prefixes per pair with prefix_sampling=random."}
    )
    min_prefix_length: int = field(default=1, metadata={"help": "Shortest response prefix in the loss."})
    position_weighting: str = field(default="uniform", metadata={"help": "uniform, or linear (weight t/L)."})
    encoder_prefixes_per_pair: int = field(
        default=4, metadata={"help": "Prefixes per pair encoded at each step, on an encoder backbone."}
    )
    margin: float = field(default=0.0, metadata={"help": "Margin subtracted from every reward difference."})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "Weight of the centring term."}
    )
    consistency_weight: float = field(
        default=1.0,
        metadata={
            "help": "Vocab heads: weight of FaRMA's constraint r(y<=t) = max_v r(y<=t + v) (FaRMA: 1)."
        },
    )
    train: str = field(default="full", metadata={"help": "What to train: full, head or lora."})
    save_head_only: bool | None = field(
        default=None,
        metadata={"help": "Save only the head over the declared base model (default: with --train head)."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "LoRA target modules."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the tokenized columns."})

    def __post_init__(self):
        super().__post_init__()
        for setting in fields(self):
            self.check_setting(setting.name, getattr(self, setting.name))

    @classmethod
    def check_setting(cls, name: str, value: Any) -> None:
        """Refuse a bad value of one setting, as building the configuration would, without building it.

        Each setting of this class is checked on its own (so `hf-rgtg train` can name the flag at fault), and
        every numeric one, the Trainer's included, has to be finite: a NaN or infinite setting would train a
        non-finite model. `TrainingArguments` checks its own settings, and how they combine, when it is built.

        Args:
            name (`str`): the setting, e.g. `"prefix_sampling"`.
            value: its value.

        Raises:
            `ValueError`: naming the setting, its value and what it has to be.
            `ImportError`: for `train="lora"` without `peft` installed.
        """
        default = _DEFAULTS.get(name)
        if isinstance(default, float) and not is_number(value):
            raise ValueError(f"`{name}` (={value!r}) has to be a number, e.g. `{name}={default}`.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"`{name}` (={value}) has to be a finite number.")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"`{name}` (={value!r}) has to be one of {', '.join(_CHOICES[name])}.")
        if name in _INTEGER_MINIMUMS:
            if not is_integer(value):
                raise ValueError(f"`{name}` (={value!r}) has to be an integer, e.g. `{name}={default}`.")
            if value < _INTEGER_MINIMUMS[name]:
                raise ValueError(f"`{name}` (={value}) has to be at least {_INTEGER_MINIMUMS[name]}.")
        if name == "train" and value == "lora" and importlib.util.find_spec("peft") is None:
            raise ImportError(f"`train='lora'` needs peft, which is not installed: {LORA_INSTALL_COMMAND}")
        if name == "remove_unused_columns" and value:
            raise ValueError(
                "`remove_unused_columns` has to be False: the collator reads the tokenized columns "
                "(`prompt_ids`, `chosen_ids`, `rejected_ids`) that the Trainer would remove."
            )
        if name == "center_rewards_coefficient" and value is not None:
            if not is_number(value):
                raise ValueError(
                    f"`{name}` (={value!r}) has to be a number or None, e.g. `center_rewards_coefficient=0.01`."
                )
            if value < 0:
                raise ValueError(f"`{name}` (={value}) has to be at least 0, or None.")
        if name == "consistency_weight" and value < 0:
            raise ValueError(
                f"`{name}` (={value}) has to be at least 0 (0 trains the Bradley-Terry loss alone)."
            )
        if name == "lora_dropout" and not 0 <= value < 1:
            raise ValueError(f"`{name}` (={value}) has to be in [0, 1).")
        if name == "lora_target_modules" and not _is_module_list(value):
            raise ValueError(
                f"`{name}` (={value!r}) has to be a list of module names, e.g. `['q_proj', 'v_proj']`, "
                "or None for peft's default for the architecture."
            )


#: Each setting's default, which the messages of [`PrefixRewardTrainingConfig.check_setting`] give as an example.
_DEFAULTS = {setting.name: setting.default for setting in fields(PrefixRewardTrainingConfig)}
_CHOICES = {
    "prefix_sampling": PREFIX_SAMPLING,
    "position_weighting": POSITION_WEIGHTING,
    "train": TRAIN_MODES,
}
_INTEGER_MINIMUMS = {
    "max_length": 2,
    "num_random_prefixes": 1,
    "encoder_prefixes_per_pair": 1,
    "min_prefix_length": 1,
    "lora_r": 1,
    "lora_alpha": 1,
}


def _is_module_list(value: Any) -> bool:
    """Whether `value` is a `lora_target_modules`: `None`, or a list (or tuple) of module names."""
    return value is None or (
        isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)
    )


def prefix_bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    loss_weights: torch.Tensor,
    margin: float = 0.0,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The weighted mean over selected prefixes of `-log σ(r(x, y_w[:t]) - r(x, y_l[:t]) - margin)`.

    With uniform weights this is exactly the mean loss of the enumerated recipe, where every prefix pair is its own
    example.

    Args:
        chosen_rewards (`torch.Tensor` of shape `(batch, seq)`): per-position rewards of the chosen sequences.
        rejected_rewards (`torch.Tensor` of shape `(batch, seq)`): the same for the rejected sequences.
        loss_weights (`torch.Tensor` of shape `(batch, seq)`): non-zero at the positions that count.
        margin (`float`, *optional*): subtracted from every difference.
        center_rewards_coefficient (`float`, *optional*): weight of the mean of `(r_w + r_l)²`.
    """
    total = loss_weights.sum().clamp(min=1e-12)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    loss = (losses * loss_weights).sum() / total
    if center_rewards_coefficient:
        loss = (
            loss
            + center_rewards_coefficient
            * (((chosen_rewards + rejected_rewards) ** 2) * loss_weights).sum()
            / total
        )
    return loss


def vocab_consistency_loss(
    rewards: torch.Tensor, values: torch.Tensor, attention_mask: torch.Tensor, loss_weights: torch.Tensor
) -> torch.Tensor:
    """FaRMA's consistency constraint of an all-token head: the mean over positions `t` of
    `(r(x, y<=t) - max_v r(x, y<=t + v))²`, taken where `loss_weights[:, t] > 0` and a real token follows `t` (so
    that `t` is a prefix in the loss, not the end of its sequence). Both sides carry gradients, as in FaRMA.

    Args:
        rewards (`torch.Tensor` of shape `(batch, seq)`): the gathered per-position rewards (`output.rewards`).
        values (`torch.Tensor` of shape `(batch, seq, vocab)`): the head's whole output (`output.next_token_rewards`).
        attention_mask (`torch.Tensor` of shape `(batch, seq)`): 1 for real tokens.
        loss_weights (`torch.Tensor` of shape `(batch, seq)`): non-zero at the positions in the loss.

    Examples:

    ```python
    >>> import torch
    >>> from hf_rgtg.training import vocab_consistency_loss
    >>> values = torch.tensor([[[0.0, 2.0], [1.0, 3.0], [0.0, 0.0]]])  # max 2 at position 0, 3 at position 1
    >>> rewards = torch.tensor([[2.0, 1.0, 0.0]])  # position 0 agrees with its max; position 1 is 2 below
    >>> vocab_consistency_loss(rewards, values, torch.ones(1, 3), torch.ones(1, 3)).item()  # (0 + 4) / 2
    2.0
    ```
    """
    selected = (loss_weights[:, :-1] > 0) & attention_mask[:, 1:].bool()
    gap = rewards[:, :-1] - values[:, :-1].max(dim=-1).values
    return (gap**2 * selected).sum() / selected.sum().clamp(min=1)


def _reward_config(model: Any) -> Any:
    """The prefix reward model's configuration under its wrappers (accelerate's `module`, peft's base model)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.config


def prepare_model_for_training(model: PrefixRewardModel, config: PrefixRewardTrainingConfig):
    """Apply `config.train`: freeze the backbone (`"head"`), wrap it with LoRA (`"lora"`), or leave it (`"full"`).

    The head is the model's `head_module_names`: its `score`, or a `"classifier"` head's classifier layers."""
    if config.train == "head":
        model.requires_grad_(False)
        for name in model.head_module_names:
            model.get_submodule(name).requires_grad_(True)
        return model
    if config.train == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as error:
            raise ImportError(f"`train='lora'` needs peft: {LORA_INSTALL_COMMAND}") from error
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules or "all-linear",
            modules_to_save=list(model.head_module_names),
        )
        return get_peft_model(model, lora)
    return model


class PrefixRewardTrainer(Trainer):
    r"""
    Trains a [`PrefixRewardModel`] with the all-prefix Bradley-Terry loss. On a causal backbone one forward over
    the chosen and the rejected sequences gives the reward of every prefix, so each pair costs two sequences, not
    `2L` examples. On an encoder backbone, whose every position sees the tokens after it, each prefix is encoded
    as a sequence of its own and read at its last token: `args.encoder_prefixes_per_pair` prefix pairs per pair
    and step, laid out as `token_rewards` and guided decoding score them (the collator's `per_prefix` layout).

    Everything else — checkpoints, resuming, logging, progress bars, gradient accumulation and checkpointing, mixed
    precision, `accelerate launch` — is `transformers.Trainer`'s.

    Args:
        model ([`PrefixRewardModel`]): the model to train (`args.train` decides which parameters).
        args ([`PrefixRewardTrainingConfig`]): the settings.
        train_dataset (`Sequence[dict]`): tokenized pairs, e.g. a [`~data.PreferenceData`] from
            `load_preference_data`.
        eval_dataset (`Sequence[dict]`, *optional*): held-out pairs, used by [`~PrefixRewardTrainer.evaluate_prefixes`].
        processing_class (`PreTrainedTokenizerBase`): the tokenizer (its EOS and pad ids build the collator).
        data_collator (*optional*): defaults to [`PrefixRewardCollator.from_config`].

    Examples:

    ```python
    >>> import tempfile
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.data import PrefixRewardCollator
    >>> from hf_rgtg.training import PrefixRewardTrainer, PrefixRewardTrainingConfig

    >>> config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=16, bos_token_id=15, eos_token_id=15)
    >>> model = AutoModelForPrefixReward.from_config(config)
    >>> pairs = [{"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]}] * 8
    >>> args = PrefixRewardTrainingConfig(output_dir=tempfile.mkdtemp(), max_steps=2, report_to=[],
    ...                                   per_device_train_batch_size=4)
    >>> trainer = PrefixRewardTrainer(model, args, train_dataset=pairs,
    ...                               data_collator=PrefixRewardCollator(pad_token_id=0, eos_token_id=15))
    >>> result = trainer.train()  # doctest: +ELLIPSIS
    {'train_runtime': ...}
    >>> result.global_step
    2
    ```
    """

    def __init__(
        self,
        model: PrefixRewardModel,
        args: PrefixRewardTrainingConfig,
        train_dataset=None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | None = None,
        data_collator=None,
        dataset_names: list[str] | None = None,
        **kwargs: Any,
    ):
        self.dataset_names = list(dataset_names or [])
        self.prefix_accuracy = None
        if not isinstance(args, PrefixRewardTrainingConfig):
            raise ValueError(f"`args` has to be a PrefixRewardTrainingConfig, got {type(args).__name__}.")
        self.per_prefix = not model.supports_incremental_scoring
        if data_collator is None:
            if processing_class is None:
                raise ValueError("Pass the tokenizer as `processing_class` (or a `data_collator`).")
            data_collator = PrefixRewardCollator.from_config(
                args, processing_class, per_prefix=self.per_prefix
            )
        elif (
            self.per_prefix
            and isinstance(data_collator, PrefixRewardCollator)
            and not data_collator.per_prefix
        ):
            raise ValueError(
                "The reward model's backbone is not causal, so one forward does not score every prefix, but the "
                "`data_collator` lays out one sequence per response for that loss. Give a collator with "
                "`per_prefix=True` (e.g. `PrefixRewardCollator.from_config(args, tokenizer, per_prefix=True)`), "
                "or none."
            )
        model = prepare_model_for_training(model, args)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )

    def evaluate_prefixes(self, examples=None, batch_size: int | None = None) -> PrefixAccuracy:
        """Prefix accuracy by relative position on `examples` (default: the eval set); kept for the model card.

        Returns:
            `PrefixAccuracy`: the accuracy table.
        """
        examples = examples if examples is not None else self.eval_dataset
        if examples is None:
            raise ValueError(
                "No examples to evaluate: pass `examples` or give the trainer an `eval_dataset`."
            )
        collator = self.data_collator
        self.prefix_accuracy = evaluate_prefix_accuracy(
            self.model,
            examples,
            pad_token_id=collator.pad_token_id,
            eos_token_id=collator.eos_token_id,
            batch_size=batch_size or self.args.per_device_eval_batch_size,
            show_progress=not self.args.disable_tqdm,
        )
        return self.prefix_accuracy

    def training_summary(self) -> dict[str, Any]:
        """What the model card says about this training run."""
        args = self.args
        settings = {
            "train": args.train,
            "prefix_sampling": args.prefix_sampling,
            "min_prefix_length": args.min_prefix_length,
            "position_weighting": args.position_weighting,
            **({"encoder_prefixes_per_pair": args.encoder_prefixes_per_pair} if self.per_prefix else {}),
            "margin": args.margin,
            "center_rewards_coefficient": args.center_rewards_coefficient,
            **(
                {"consistency_weight": args.consistency_weight}
                if _reward_config(self.model).is_vocab_head
                else {}
            ),
            "max_length": args.max_length,
            "learning_rate": args.learning_rate,
            "num_train_epochs": args.num_train_epochs,
            "max_steps": args.max_steps,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "global_step": self.state.global_step,
        }
        summary: dict[str, Any] = {"datasets": self.dataset_names, "settings": settings}
        if self.train_dataset is not None:
            summary["num_pairs"] = len(self.train_dataset)
        # Whether the tokenizer saved with the model renders chat messages: the card's usage snippet relies on it.
        summary["chat_template"] = bool(getattr(self.processing_class, "chat_template", None))
        if self.prefix_accuracy is not None:
            summary["num_eval_pairs"] = self.prefix_accuracy.counts.get("full", 0)
            summary["prefix_accuracy"] = self.prefix_accuracy.accuracy
            summary["prefix_counts"] = self.prefix_accuracy.counts
            summary["mean_margin"] = self.prefix_accuracy.mean_margin
        return summary

    def _unwrapped(self) -> tuple[Any, bool]:
        """The model without its accelerate wrapper, with the training summary recorded in its configuration;
        and whether it is a peft (LoRA) wrapper."""
        model = self.accelerator.unwrap_model(self.model)
        lora = hasattr(model, "merge_and_unload")
        base = model.get_base_model() if lora else model
        if isinstance(base, PrefixRewardModel):
            base.record_training_summary(self.training_summary())
        return model, lora

    def trained_model(self) -> PrefixRewardModel:
        """The trained reward model as a plain [`PrefixRewardModel`], with its training summary. After
        `train="lora"` it is a copy with the adapters merged into the backbone (the trainer's model is left as it
        is), which `AutoModelForPrefixReward.from_pretrained` loads like any other."""
        model, lora = self._unwrapped()
        return copy.deepcopy(model).merge_and_unload() if lora else model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model with its training summary in the configuration (hence in its card).

        Checkpoints (`output_dir` given by the Trainer itself) are saved as the Trainer saves them, so that
        `resume_from_checkpoint` works; after `train="lora"` they hold the adapters. Any other save writes
        [`trained_model`]: a complete prefix reward model, the adapters merged. When [`saves_head_only`], both
        hold the head alone over the declared base model (and resuming loads it back into the head).
        """
        model, lora = self._unwrapped()
        bad = [name for name, tensor in model.state_dict().items() if not bool(torch.isfinite(tensor).all())]
        checkpoint = _internal_call and output_dir is not None
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if bad:
            raise ValueError(
                f"Not saving to {output_dir or self.args.output_dir!r}: {len(bad)} weight(s) of the model are not "
                f"finite (e.g. {bad[0]!r}) at step {self.state.global_step}. Lower the learning rate, or resume from "
                "an earlier checkpoint."
            )
        head_only = self.saves_head_only()
        if not head_only and (not lora or checkpoint):
            super().save_model(output_dir, _internal_call=_internal_call)
            return
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            self.trained_model().save_pretrained(output_dir, head_only=head_only)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def saves_head_only(self) -> bool:
        """Whether checkpoints and the final save hold the head alone (`args.save_head_only`, by default
        `train="head"` on a model that declares its base model)."""
        if self.args.save_head_only is not None:
            return self.args.save_head_only
        model = self._unwrapped()[0]
        config = model.config
        return (
            self.args.train == "head"
            and bool(config.base_model_name_or_path)
            and config.head_type != "classifier"
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume from a checkpoint; one saved head-only loads its head into the model (whose backbone is the base
        already). `Trainer` calls this hook with the checkpoint's folder; other checkpoints load as it loads them."""
        from .head_only import HEAD_FILE

        head_file = os.path.join(resume_from_checkpoint, HEAD_FILE)
        if not os.path.isfile(head_file):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        from safetensors.torch import load_file

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        target.score.load_state_dict(load_file(head_file), strict=False)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Keep the card `save_model` wrote from the configuration (`Trainer.push_to_hub` calls this before
        uploading; the Trainer's generic card would replace it)."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation (`trainer.evaluate()`, `eval_strategy`): the loss of the pairs, and with
        `prediction_loss_only=False` their per-position rewards `(chosen, rejected)` with the loss weights as labels.

        The pairs carry no `labels`, so the Trainer's own step would call the model with the pairs' columns."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach()
        if prediction_loss_only:
            return loss, None, None
        weights = inputs["prefix_weights"][:, None] if PREFIX_WEIGHTS in inputs else inputs["loss_weights"]
        return loss, (outputs["chosen_rewards"], outputs["rejected_rewards"]), weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The prefix Bradley-Terry loss of a batch: from every position's reward of one forward per response
        (`loss_weights`), or from each prefix's reward as a sequence of its own (`prefix_weights`, the layout of
        encoders). Evaluation's rewards are `(pairs, positions)` in the first layout, `(prefix pairs, 1)` in the
        second."""
        input_ids = torch.cat([inputs["chosen_input_ids"], inputs["rejected_input_ids"]])
        attention_mask = torch.cat([inputs["chosen_attention_mask"], inputs["rejected_attention_mask"]])
        vocab_head = _reward_config(model).is_vocab_head
        values = {"output_next_token_rewards": True} if vocab_head else {}
        output = model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **values)
        if PREFIX_WEIGHTS in inputs:
            rewards, weights = output.reward[:, None], inputs[PREFIX_WEIGHTS][:, None]
        elif output.rewards is None:
            raise ValueError(
                "The batch lays out one sequence per response for the one-forward loss, but the reward model's "
                "backbone is not causal and gives no per-position rewards. Use a `PrefixRewardCollator` with "
                "`per_prefix=True`."
            )
        else:
            rewards, weights = output.rewards, inputs["loss_weights"]
        chosen, rejected = rewards.chunk(2)
        loss = prefix_bradley_terry_loss(
            chosen, rejected, weights, self.args.margin, self.args.center_rewards_coefficient
        )
        if vocab_head and self.args.consistency_weight:
            both = torch.cat([weights, weights])
            loss = loss + self.args.consistency_weight * vocab_consistency_loss(
                output.rewards, output.next_token_rewards, attention_mask, both
            )
        if model.training and not bool(torch.isfinite(loss)):
            raise ValueError(
                f"The training loss became {loss.item()} at step {self.state.global_step + 1}; stopped before it "
                "reached the weights. Lower the learning rate, check the data, or resume from an earlier checkpoint."
            )
        if return_outputs:
            return loss, {"chosen_rewards": chosen, "rejected_rewards": rejected}
        return loss


__all__ = [
    "PrefixRewardCollator",
    "PrefixRewardTrainer",
    "PrefixRewardTrainingConfig",
    "prefix_bradley_terry_loss",
    "prefix_lengths",
    "prepare_model_for_training",
    "vocab_consistency_loss",
]
