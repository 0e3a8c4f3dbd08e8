"""What every generation of one `hf-rgtg generate` command shares, for one prompt or a whole file: the guided
pipeline, the prompts as it takes them, the keyword arguments of its calls, and the records of their results."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, pipeline

from .. import defaults
from ..configuration import RewardGuidanceConfig
from ..modeling import PrefixRewardModel
from ..pipelines import RewardGuidedTextGenerationPipeline
from ..scoring import TopKError
from ..tokenization import special_token_ids
from ..validation import positions_problem
from .prompt_files import Prompt


def rm_names(args: argparse.Namespace) -> list[str]:
    """The name of each `--rm` (`args.rm` is their list, `None` for the default), `"default"` for the default."""
    return [name or "default" for name in args.rm]


def settings_record(args: argparse.Namespace, config: RewardGuidanceConfig) -> dict[str, Any]:
    """The settings a record carries, and a resumed `--output` has to share: `rm` is the name of the reward
    model, or the list of them with several `--rm` (and `beta` the list of their weights when several were
    given)."""
    names = rm_names(args)
    return {
        "lm": args.lm or defaults.DEFAULT_LM_NAME,
        "rm": names[0] if len(names) == 1 else names,
        "beta": config.beta,
        "top_k": config.top_k,
        "sample": args.sample,
        "temperature": args.temperature if args.sample else None,
        "top_p": args.top_p if args.sample else None,
        "num_return_sequences": args.num_return_sequences,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "system_prompt": args.system_prompt,
        "chat_template": not args.no_chat_template,
        "dtype": args.dtype,
        "compare": args.compare,
        "show_rewards": args.show_rewards,
    }


def guided_pipeline(
    lm: PreTrainedModel,
    reward_models: list[PrefixRewardModel],
    tokenizer: PreTrainedTokenizerBase,
    config: RewardGuidanceConfig,
    reward_tokenizers: list[PreTrainedTokenizerBase | None] | None = None,
    reward_prompt_template: str | None = None,
) -> RewardGuidedTextGenerationPipeline:
    """The "reward-guided-text-generation" pipeline of `lm` steered by `reward_models` (one, or several at once)
    with `config`'s settings, each reward model reading text through its tokenizer where it is not `tokenizer`."""
    return pipeline(
        "reward-guided-text-generation",
        model=lm,
        tokenizer=tokenizer,
        reward_model=reward_models[0] if len(reward_models) == 1 else reward_models,
        reward_tokenizer=reward_tokenizers,
        reward_prompt_template=reward_prompt_template,
        beta=config.beta,
        top_k=config.top_k,
    )


def pipeline_input(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> Prompt:
    """What the pipeline is given for `prompt`: chat messages (with `--system-prompt` first) when the tokenizer
    has a chat template and `--no-chat-template` is not given, the text otherwise.

    Raises:
        `ValueError`: for chat messages, or `--system-prompt`, without a chat template to apply.
    """
    chat = not args.no_chat_template and bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, str):
        if not chat:
            if args.system_prompt is not None:
                raise ValueError(
                    "argument --system-prompt: the language model's tokenizer has no chat template"
                )
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    elif not chat:
        raise ValueError("a prompt given as chat messages needs the tokenizer's chat template")
    if args.system_prompt is not None and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": args.system_prompt}, *prompt]
    return prompt


def prompt_length(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> int:
    """How many tokens the pipeline makes of `prompt` (as [`pipeline_input`] gives it)."""
    if isinstance(prompt, str):
        return len(tokenizer(prompt)["input_ids"])
    return len(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    )


@dataclass
class GuidedRun:
    """What every generation of one `hf-rgtg generate` command shares: its flags, the guided pipeline, the
    guidance settings and the reward models (one per `--rm`), and the settings its records carry."""

    args: argparse.Namespace
    generator: RewardGuidedTextGenerationPipeline
    config: RewardGuidanceConfig
    reward_models: list[PrefixRewardModel]

    @property
    def settings(self) -> dict[str, Any]:
        return settings_record(self.args, self.config)

    @property
    def label(self) -> str:
        return f"guided (beta={self.config.beta}, top-k={self.config.top_k})"

    def input_of(self, prompt: Prompt) -> Prompt:
        """`prompt` as the pipeline takes it (see [`pipeline_input`])."""
        return pipeline_input(self.args, self.generator.tokenizer, prompt)

    def check_positions(self, given: Prompt) -> None:
        """Refuse a prompt (as the pipeline takes it) that, with `--max-new-tokens`, either model cannot hold;
        the flag is named when some new tokens would fit."""
        length = prompt_length(self.generator.tokenizer, given)
        lm_config = self.generator.model.config.get_text_config()
        several = len(self.reward_models) > 1
        for max_positions, what in (
            (getattr(lm_config, "max_position_embeddings", None), "the language model"),
            *(
                (model.max_positions, f"the reward model --rm {name}" if several else "the reward model")
                for model, name in zip(self.reward_models, rm_names(self.args), strict=True)
            ),
        ):
            problem = positions_problem(length, self.args.max_new_tokens, max_positions, what)
            if problem is None:
                continue
            if length >= max_positions:
                raise ValueError(f"{problem}: shorten it")
            raise ValueError(f"argument --max-new-tokens: {problem}")

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of every pipeline call: the decoding flags, and the ids that end and pad a row
        (the language model's own first, then its tokenizer's)."""
        args, config = self.args, self.generator.model.generation_config
        eos_token_id, pad_token_id = special_token_ids(
            self.generator.tokenizer, config.eos_token_id, config.pad_token_id
        )
        kwargs = {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.sample,
            "num_return_sequences": args.num_return_sequences,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "return_full_text": False,
            "return_token_rewards": args.show_rewards,
        }
        if (
            args.sample
        ):  # always given: the pipeline would otherwise sample at its own default temperature, 0.7
            kwargs.update(temperature=args.temperature or 1.0, top_p=args.top_p or 1.0)
        return kwargs

    def call(self, inputs: list[Prompt], seed: int, **kwargs: Any) -> list[list[dict]]:
        """The pipeline's records for `inputs` (a list per prompt), seeded; its refusal of `top_k` names the
        flag."""
        # One prompt is given alone: for a list, the pipeline's data loader draws from the generator first, and the
        # seed would no longer reproduce what `torch.manual_seed(seed); lm.generate(...)` gives.
        given = inputs[0] if len(inputs) == 1 else inputs
        torch.manual_seed(seed)
        try:
            records = self.generator(given, batch_size=len(inputs), **self.generate_kwargs(), **kwargs)
        except TopKError as error:  # of the guidance's checks, only this one is about a flag
            raise ValueError(f"argument --top-k: {error}") from None
        return [records] if len(inputs) == 1 else records

    def record(self, guided: list[dict], unguided: list[dict] | None) -> dict[str, Any]:
        """One prompt's record (without its prompt): the reply and its reward (`responses` and `rewards` with
        `--num-return-sequences` above 1), the unguided ones with `--compare`, the token rewards with
        `--show-rewards`, and the settings. With several `--rm`, a reward is their weighted sum, and each reward
        model's comes beside it (`rewards_per_model`, and `token_rewards_per_model` with `--show-rewards`)."""
        record: dict[str, Any] = {}
        one = self.args.num_return_sequences == 1
        for prefix, records in (("", guided), ("unguided_", unguided)):
            if records is None:
                continue
            texts, rewards = [r["generated_text"] for r in records], [r["reward"] for r in records]
            if one:
                record.update({f"{prefix}response": texts[0], f"{prefix}reward": rewards[0]})
            else:
                record.update({f"{prefix}responses": texts, f"{prefix}rewards": rewards})
            if "rewards_per_model" in records[0]:
                per_model = [r["rewards_per_model"] for r in records]
                record[f"{prefix}rewards_per_model"] = per_model[0] if one else per_model
            for name in ("token_rewards", "token_rewards_per_model"):
                if self.args.show_rewards and name in records[0]:
                    record[f"{prefix}{name}"] = [r[name] for r in records]
        record["settings"] = self.settings
        return record


__all__ = ["GuidedRun", "guided_pipeline", "pipeline_input", "prompt_length", "rm_names", "settings_record"]
