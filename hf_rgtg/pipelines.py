"""transformers pipelines: `"reward-guided-text-generation"` and `"token-rewards"`.

Importing this module registers both tasks with transformers' pipeline registry, so that
`transformers.pipeline("reward-guided-text-generation", model=..., reward_model=...)` builds one; `import hf_rgtg`
imports it when transformers is already imported (see the package's docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Pipeline, PreTrainedTokenizerBase, TextGenerationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .auto import AutoModelForPrefixReward
from .configuration import RewardGuidanceConfig
from .generation import RewardGuidance, RewardModels, resolve_reward_models, reward_tokenizers
from .modeling import PrefixRewardModel
from .redistribution import through_first_eos, token_rewards, token_rewards_of_ids, weighted_token_rewards
from .tokenization import special_token_ids
from .trace import GuidanceTrace
from .validation import check_streamer

#: The guidance settings a pipeline takes, at construction or per call.
GUIDANCE_OPTIONS = tuple(field.name for field in dataclasses.fields(RewardGuidanceConfig))


class RewardGuidedTextGenerationPipeline(TextGenerationPipeline):
    r"""
    Text generation steered by a reward model: a `TextGenerationPipeline` whose `generate()` runs with
    [`RewardGuidance`]. Chat inputs, `return_full_text`, `num_return_sequences`, batching and streamers work as in
    `"text-generation"`.

    Every guidance setting of [`RewardGuidanceConfig`] (`beta`, `top_k`, ...) is accepted at construction or per
    call, with `reward_model` (a [`PrefixRewardModel`] or a name or folder). `top_k` is the guidance's: the number
    of candidates scored per step. Each result carries its `"reward"` (the sequence's, at its last real token), and
    with `return_token_rewards=True` its `"token_rewards"` ([`TokenRewards`] fields, over the generated ids,
    through the first EOS). `return_trace=True` adds `"trace"`: the `"prompt_reward"` and the `"steps"` (one
    [`StepRecord`] per guided token, with the k candidates it was chosen from), which
    [`~visualization.steps_html`] draws.

    With several reward models (`reward_model=[rm1, rm2]`, `beta=[b1, b2]`; see [`RewardGuidance`]), `"reward"`,
    `"token_rewards"` and the trace's rewards are their combination `sum_i beta_i * r_i` of the raw rewards, and
    each result also carries `"rewards_per_model"` (each reward model's sequence reward, in order), with
    `return_token_rewards=True` `"token_rewards_per_model"` (one [`TokenRewards`] dict per reward model), and with
    `return_trace=True` the trace's `"prompt_rewards_per_model"`. With one reward model the results are as they
    have always been.

    `guide=False` generates as `"text-generation"` does, with the same settings, and still reports the rewards: the
    unguided run of a comparison. With `beta=0` (and no stopping rule or trace that reads the rewards) the rewards
    cannot change a choice, so the pipeline runs the language model's own top-k decoding without the reward model,
    which then scores only the result.

    Examples:

    ```python
    >>> import torch
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> import hf_rgtg.pipelines  # registers the tasks

    >>> words = ["[PAD]", "hi", "there", "good", "bad", "day"]
    >>> backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    >>> config = GPT2Config(vocab_size=6, n_embd=16, n_layer=1, n_head=2, bos_token_id=None, eos_token_id=None)
    >>> _ = torch.manual_seed(0)
    >>> lm, rm = GPT2LMHeadModel(config).eval(), AutoModelForPrefixReward.from_config(config).eval()
    >>> generator = pipeline("reward-guided-text-generation", model=lm, tokenizer=tokenizer, reward_model=rm, top_k=3)
    >>> out = generator("hi", max_new_tokens=3, do_sample=False)
    >>> sorted(out[0]), isinstance(out[0]["reward"], float)
    (['generated_text', 'reward'], True)
    ```
    """

    def __init__(
        self,
        *args: Any,
        reward_model: RewardModels | None = None,
        reward_tokenizer: PreTrainedTokenizerBase | str | Sequence[Any] | None = None,
        reward_prompt_template: str | None = None,
        **kwargs: Any,
    ):
        self._guidances: dict[tuple, RewardGuidance] = {}
        #: The reward models' tokenizers, by the model's `id`: given, or saved with the model given by name.
        self._reward_tokenizers: dict[int, PreTrainedTokenizerBase | None] = {}
        self._default_reward_model = (
            None if reward_model is None else self._resolved(reward_model, reward_tokenizer)
        )
        self._reward_prompt_template = reward_prompt_template
        # Taken before the base class sees them: it would hand `top_k` and `max_time` to `generate()` as its own.
        self._default_options = {name: kwargs.pop(name) for name in GUIDANCE_OPTIONS if name in kwargs}
        super().__init__(*args, **kwargs)

    def _sanitize_parameters(
        self, reward_model=None, return_token_rewards=None, return_trace=None, guide=None, **kwargs
    ):
        options = {name: kwargs.pop(name) for name in GUIDANCE_OPTIONS if name in kwargs}
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        forward.update(options)
        if reward_model is not None:
            forward["reward_model"] = self._resolved(reward_model, None)
        for name, value in (("return_token_rewards", return_token_rewards), ("return_trace", return_trace)):
            if value is not None:
                forward[name] = value
        if guide is not None:
            if not isinstance(guide, bool):
                raise ValueError(f"`guide` (={guide!r}) has to be True or False.")
            forward["guide"] = guide
        return preprocess, forward, postprocess

    def _resolved(self, reward_model: RewardModels, reward_tokenizer: Any) -> tuple[PrefixRewardModel, ...]:
        """The reward models of `reward_model=`, with their tokenizers noted: `reward_tokenizer` (one, or one per
        reward model), else the one saved with a model given by name or folder."""
        models = resolve_reward_models(reward_model)
        for model, tokenizer in zip(
            models, reward_tokenizers(reward_model, reward_tokenizer, len(models)), strict=True
        ):
            self._reward_tokenizers[id(model)] = tokenizer
        return models

    def _guidance(
        self, reward_models: tuple[PrefixRewardModel, ...], options: dict[str, Any]
    ) -> RewardGuidance:
        """One [`RewardGuidance`] per reward models and settings, reused across calls."""
        identity = tuple(id(model) for model in reward_models)
        key = (identity, tuple(sorted((name, repr(value)) for name, value in options.items())))
        if key not in self._guidances:
            config = self.model.generation_config
            eos, pad = special_token_ids(self.tokenizer, config.eos_token_id, config.pad_token_id)
            self._guidances[key] = RewardGuidance(
                reward_models,
                self.tokenizer,
                reward_tokenizer=[self._reward_tokenizers.get(id(model)) for model in reward_models],
                reward_prompt_template=self._reward_prompt_template,
                eos_token_id=eos,
                pad_token_id=pad,
                language_model=self.model,
                **options,
            )
        return self._guidances[key]

    def _forward(self, model_inputs, **generate_kwargs):
        reward_model = generate_kwargs.pop("reward_model", None) or self._default_reward_model
        if reward_model is None:
            raise ValueError(
                "The reward-guided-text-generation pipeline needs `reward_model=` (a PrefixRewardModel, or the name "
                "or folder of one), at construction or in the call."
            )
        if model_inputs["input_ids"].shape[1] == 0:
            raise ValueError("Reward-guided generation scores the prompt, so it needs a non-empty one.")
        with_tokens = generate_kwargs.pop("return_token_rewards", False)
        with_trace = generate_kwargs.pop("return_trace", False)
        guide = generate_kwargs.pop("guide", True)
        config = generate_kwargs.get("generation_config", self.model.generation_config)
        num_beams = generate_kwargs.get("num_beams", config.num_beams) or 1
        check_streamer(generate_kwargs.get("streamer"), beam_search=num_beams > 1)
        options = {name: generate_kwargs.pop(name) for name in GUIDANCE_OPTIONS if name in generate_kwargs}
        options = {**self._default_options, **options}
        if with_trace:
            options["record_candidates"] = True
        guidance = self._guidance(reward_model, options)
        guidance.check_language_model(self.model, model_inputs["input_ids"])
        mask = model_inputs.get("attention_mask")
        prompt_texts = _prompts_of(model_inputs.get("prompt_text"))
        if not guide:
            model_outputs = super()._forward(model_inputs, **generate_kwargs)
        elif not guidance.config.needs_rewards_while_decoding:
            # The rewards cannot change a choice: the language model's own top-k decoding, without the reward model.
            # Greedy decoding takes the top token anyway; the pipeline samples unless told not to.
            top_k = {"top_k": guidance.config.top_k} if generate_kwargs.get("do_sample", True) else {}
            model_outputs = super()._forward(model_inputs, **generate_kwargs, **top_k)
        else:
            guided = guidance.generate_kwargs(attention_mask=mask, prompts=prompt_texts)
            for name in ("logits_processor", "stopping_criteria"):
                given = generate_kwargs.pop(name, None)
                if given:
                    guided[name] = type(guided[name])([*given, *guided[name]])
            model_outputs = super()._forward(model_inputs, **generate_kwargs, **guided)
        model_outputs.update(
            self._results(guidance, model_outputs, mask, prompt_texts, with_tokens, with_trace)
        )
        return model_outputs

    def _results(
        self, guidance, model_outputs, mask, prompt_texts, with_tokens, with_trace
    ) -> dict[str, Any]:
        """What the records carry besides the text, grouped by prompt: each sequence's `reward` (with several
        reward models, their combination, and each one's as `rewards_per_model`), and the token rewards and the
        trace when asked for."""
        sequences = model_outputs["generated_sequence"]  # (prompts, sequences per prompt, length)
        prompts, per_prompt, length = sequences.shape
        flat = sequences.reshape(-1, length)
        input_ids = model_outputs["input_ids"]
        width = input_ids.shape[1]
        per_model = guidance.sequence_rewards(
            flat, width, prompt_attention_mask=mask, per_model=True, prompts=prompt_texts
        )
        results = {"reward": guidance.config.combine_rewards(per_model).reshape(prompts, per_prompt)}
        if per_model.shape[-1] > 1:
            results["rewards_per_model"] = per_model.reshape(prompts, per_prompt, -1)
        if with_tokens:
            results.update(self._token_rewards(guidance, flat, input_ids, mask, per_prompt, prompt_texts))
        if with_trace:
            results["trace"] = self._traces(guidance, flat, width, per_prompt)
        return results

    @staticmethod
    def _traces(
        guidance: RewardGuidance, flat: torch.Tensor, width: int, per_prompt: int
    ) -> list[list[dict]]:
        """Each generated sequence's steps and its prompt's reward (and each reward model's, with several),
        grouped by prompt."""
        trace: GuidanceTrace = guidance.trace
        several = len(guidance.reward_models) > 1
        rows = [
            {
                "prompt_reward": trace.prompt_reward(row, width),
                **(
                    {"prompt_rewards_per_model": trace.prompt_rewards_per_model(row, width)}
                    if several
                    else {}
                ),
                "steps": trace.steps(row, width),
            }
            for row in flat.tolist()
        ]
        return _grouped(rows, per_prompt)

    def _token_rewards(
        self, guidance, flat, input_ids, mask, per_prompt, prompt_texts
    ) -> dict[str, list[list[Any]]]:
        """Each generated sequence's token rewards, through its first EOS, grouped by prompt: `"token_rewards"`,
        and with several reward models (whose weighted sum that is) each one's as `"token_rewards_per_model"`. A
        reward model with another tokenizer gives them over its own tokens of the response's text; then the
        combination exists only where every reward model has the same tokens."""
        width = input_ids.shape[1]
        mask = torch.ones_like(input_ids) if mask is None else mask
        responses = [through_first_eos(row, guidance.eos_token_id) for row in flat[:, width:].tolist()]
        per_model = [
            self._model_token_rewards(model, bridge, input_ids, mask, per_prompt, prompt_texts, responses)
            for model, bridge in zip(guidance.reward_models, guidance.bridges, strict=True)
        ]
        if len(per_model) == 1:
            return {
                "token_rewards": _grouped([dataclasses.asdict(result) for result in per_model[0]], per_prompt)
            }
        betas = guidance.config.per_model("beta", len(per_model))
        each = list(zip(*per_model, strict=True))  # per sequence, one TokenRewards per reward model
        outputs = {
            # A tuple per sequence, which `postprocess` tells from a prompt's list.
            "token_rewards_per_model": _grouped(
                [tuple(dataclasses.asdict(result) for result in results) for results in each], per_prompt
            ),
        }
        if all(len({tuple(result.token_ids) for result in results}) == 1 for results in each):
            combined = [dataclasses.asdict(weighted_token_rewards(results, betas)) for results in each]
            outputs["token_rewards"] = _grouped(combined, per_prompt)
        return outputs

    def _model_token_rewards(self, model, bridge, input_ids, mask, per_prompt, prompt_texts, responses):
        """One reward model's token rewards of every generated sequence: over the language model's tokens, or
        through its `bridge` over its own tokens of the response's text."""
        if bridge is None:
            prompt_ids = [
                ids[row_mask.bool()].tolist() for ids, row_mask in zip(input_ids, mask, strict=True)
            ]
            prompts = [prompt_ids[i // per_prompt] for i in range(len(responses))]
            return token_rewards_of_ids(model, self.tokenizer, prompts, responses)
        texts = bridge.prompts_of(input_ids, mask, prompt_texts)
        prompts = [texts[i // per_prompt] for i in range(len(responses))]
        return token_rewards(
            model, bridge.reward_tokenizer, prompts, [bridge.response_text(r) for r in responses]
        )

    def postprocess(self, model_outputs, *args, **kwargs):
        # Taken out before the base class sees them (from 5.24 it would copy tensors into the records itself).
        rewards = model_outputs.pop("reward")[0].tolist()
        per_model = model_outputs.pop("rewards_per_model", None)
        per_model = None if per_model is None else per_model[0].tolist()
        names = ("token_rewards", "token_rewards_per_model", "trace")
        extras = {name: model_outputs.pop(name, None) for name in names}
        records = super().postprocess(model_outputs, *args, **kwargs)
        for index, record in enumerate(records):
            record["reward"] = rewards[index]
            if per_model is not None:
                record["rewards_per_model"] = per_model[index]
            for name, per_prompt in extras.items():
                if per_prompt is not None:
                    # One prompt's list of per-sequence dicts (or tuples of them): a batch of prompts is split into
                    # them by the pipeline's loader, which indexes lists (a batch of one arrives still wrapped in its
                    # list).
                    per_prompt = per_prompt[0] if isinstance(per_prompt[0], list) else per_prompt
                    value = per_prompt[index]
                    record[name] = list(value) if isinstance(value, tuple) else value
        return records


def _prompts_of(prompt_text: Any) -> list | None:
    """The pipeline's prompts as text or chat messages, one per prompt of the batch (`None` if unknown)."""
    if prompt_text is None:
        return None
    texts = prompt_text if isinstance(prompt_text, list) else [prompt_text]
    prompts = [getattr(text, "messages", text) for text in texts]
    return prompts if all(isinstance(prompt, (str, list)) for prompt in prompts) else None


def _grouped(items: list, per_prompt: int) -> list[list]:
    """`items` (one per generated sequence) in lists of `per_prompt`, one list per prompt."""
    return [items[i : i + per_prompt] for i in range(0, len(items), per_prompt)]


class TokenRewardsPipeline(Pipeline):
    r"""
    Token rewards of (prompt, response) pairs: [`token_rewards`] as a pipeline, over a [`PrefixRewardModel`].

    Inputs are `{"prompt": ..., "response": ...}` dicts or `(prompt, response)` tuples, one or a list; a prompt is
    text or chat messages. Each output is a dict of the [`TokenRewards`] fields plus `"total"` and `"reward"`.

    Examples:

    ```python
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import GPT2Config, PreTrainedTokenizerFast, pipeline
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> import hf_rgtg.pipelines  # registers the tasks

    >>> backend = Tokenizer(models.WordLevel({"[PAD]": 0, "hi": 1, "there": 2, "friend": 3}, unk_token="[PAD]"))
    >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=4, n_embd=16, n_layer=1, n_head=2)).eval()
    >>> scorer = pipeline("token-rewards", model=rm, tokenizer=tokenizer)
    >>> scorer({"prompt": "hi", "response": "there friend"})["tokens"]
    ['there', ' friend']
    ```
    """

    def _sanitize_parameters(self, **kwargs):
        return {}, {}, {}

    def preprocess(self, inputs):
        if isinstance(inputs, Mapping):
            if not {"prompt", "response"} <= set(inputs):
                raise ValueError(
                    f"A token-rewards input needs 'prompt' and 'response' keys, got {sorted(inputs)}."
                )
            return {"prompt": inputs["prompt"], "response": inputs["response"]}
        if isinstance(inputs, tuple) and len(inputs) == 2:
            return {"prompt": inputs[0], "response": inputs[1]}
        raise TypeError(
            f"A token-rewards input is a {{'prompt': ..., 'response': ...}} dict or a (prompt, response) tuple, got "
            f"{type(inputs).__name__}."
        )

    def _forward(self, model_inputs):
        return {
            "result": token_rewards(
                self.model, self.tokenizer, model_inputs["prompt"], model_inputs["response"]
            )
        }

    def postprocess(self, model_outputs):
        result = model_outputs["result"]
        return {**dataclasses.asdict(result), "total": result.total, "reward": result.reward}

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, list):  # a list of pairs, not one pair given as a list
            return [super(TokenRewardsPipeline, self).__call__(item, **kwargs) for item in inputs]
        return super().__call__(inputs, **kwargs)


PIPELINE_REGISTRY.register_pipeline(
    "reward-guided-text-generation",
    pipeline_class=RewardGuidedTextGenerationPipeline,
    pt_model=AutoModelForCausalLM,
    type="text",
)
PIPELINE_REGISTRY.register_pipeline(
    "token-rewards", pipeline_class=TokenRewardsPipeline, pt_model=AutoModelForPrefixReward, type="text"
)

__all__ = ["GUIDANCE_OPTIONS", "RewardGuidedTextGenerationPipeline", "TokenRewardsPipeline"]
