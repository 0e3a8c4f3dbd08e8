"""Configurations: of prefix reward models (`PrefixRewardConfig`) and of reward-guided decoding
(`RewardGuidanceConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from .validation import checked_finite, checked_positive_int

if TYPE_CHECKING:
    import torch

#: The kinds of reward head of a [`PrefixRewardConfig`]: a head applied at every position of the backbone's hidden
#: states (`"per_position"`), or the backbone's own sequence-classification output (`"classifier"`).
HEAD_TYPES = ("per_position", "classifier")
#: The head settings that only a `"per_position"` head has, with their defaults.
PER_POSITION_HEAD_DEFAULTS = {
    "head_layer": None,
    "head_hidden_size": None,
    "head_bias": False,
    "head_kind": "scalar",
}
#: What a `"per_position"` head outputs: one reward per position (`"scalar"`), or, from the hidden state at each
#: position, the reward of that prefix extended by every token of the vocabulary (`"vocab"`, an all-token head as
#: in FaRMA).
HEAD_KINDS = ("scalar", "vocab")
#: The forms of a `"vocab"` head: a `vocab_size x hidden_size` linear map (`"full"`), or `r(v) = e_v . (A h + a) + c . h + b`
#: over the language model's own output embedding `e` (`"factorised"`, `hidden_size**2 + 2 * hidden_size + 1` trained parameters).
VOCAB_HEADS = ("full", "factorised")
#: Which weights a saved prefix reward model holds: all of them (`"full"`), or only the head, the backbone being
#: loaded from the base model it declares (`"head"`).
SAVED_WEIGHTS = ("full", "head")


def is_incrementally_scorable(config: PreTrainedConfig) -> bool:
    """Whether a backbone of this configuration is a causal decoder whose keys and values can be cached.

    Decoder-only language models (GPT-2, Llama, Qwen2, ...) are; encoder-only models (BERT, DeBERTa, ...) are not,
    unless configured as decoders (`is_decoder=True`).

    Examples:

    ```python
    >>> from transformers import BertConfig, GPT2Config
    >>> from hf_rgtg.configuration import is_incrementally_scorable
    >>> is_incrementally_scorable(GPT2Config()), is_incrementally_scorable(BertConfig())
    (True, False)
    ```
    """
    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False) or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    return model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or bool(getattr(config, "is_decoder", False))


class PrefixRewardConfig(PreTrainedConfig):
    r"""
    Configuration of a [`PrefixRewardModel`]: a decoder (or encoder) backbone with a scalar reward head. On a
    causal decoder the head applies at every position, so that one forward pass scores every prefix of the input;
    on an encoder, whose every position sees the whole input, the reward is read once per sequence and each prefix
    is a sequence of its own.

    The backbone's own configuration is kept whole as the sub-config `text_config`; everything else describes the
    head.

    Attributes:
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Configuration of the backbone, built with `AutoModel.from_config` (with
            `AutoModelForSequenceClassification.from_config` for `head_type="classifier"`). A `dict` needs a
            `model_type` key. Defaults to a default `LlamaConfig`.
        head_type (`str`, *optional*, defaults to `"per_position"`):
            `"per_position"`: a new head (the settings below) over the backbone's hidden states. `"classifier"`:
            the reward is logit 0 of the backbone's own `*ForSequenceClassification` model (BERT's pooler and
            classifier, RoBERTa's classification head, DeBERTa-v2's context pooler and classifier, ...), exactly as
            that model computes it on the whole input. Only encoder backbones (not causal) with `num_labels=1` take
            it: a decoder classifier's head is read at every position as a `"per_position"` head instead.
            `AutoModelForPrefixReward` chooses it for encoder sequence-classification checkpoints.
        head_layer (`int`, *optional*):
            Which hidden state the head reads. `None` (the default) reads the backbone's final output (after its
            final norm), as `*ForSequenceClassification` models do. An integer indexes the backbone's
            `hidden_states` tuple (0 is the embeddings, `i` the output of layer `i`).
        head_hidden_size (`int`, *optional*):
            `None` (the default) makes the head a single linear map to a scalar. An integer makes it a small MLP
            (linear, GELU, linear) with that hidden width.
        head_bias (`bool`, *optional*, defaults to `False`):
            Whether the head's output layer has a bias. Decoder reward models saved as
            `*ForSequenceClassification` have none.
        head_kind (`str`, *optional*, defaults to `"scalar"`):
            `"scalar"`: the head outputs one reward per position, `r(x, y<=t)` from the hidden state at `t`.
            `"vocab"` (an all-token head, FaRMA): from the hidden state at `t` it outputs `r(x, y<=t + v)` for every
            token `v` of the vocabulary, the way a language model's head outputs logits, so that the hidden state
            of a prefix scores all its continuations at once. Only causal decoder backbones take it.
        vocab_head (`str`, *optional*, defaults to `"full"`):
            The form of a `"vocab"` head: `"full"`, a `vocab_size x hidden_size` linear map (FaRMA's, for reward
            models whose backbone is fine-tuned too; it starts from the language model's head when wrapped from a
            causal-LM checkpoint); or `"factorised"`, `r(v) = e_v . (A h + a) + c . h + b` over the language model's output
            embedding `e` (kept frozen, the backbone's input embedding when the two are tied): `hidden_size**2 + 2 * hidden_size + 1`
            trained parameters, and tokens never seen in training still get a reward. `head_bias` applies to the
            full form.
        base_model_name_or_path (`str`, *optional*):
            Where the backbone came from, recorded for model cards and for checking that a reward model was trained
            on a given language model's backbone. A head saved alone (`saved_weights="head"`) loads its backbone
            from there.
        base_model_revision (`str`, *optional*):
            The revision (commit) of `base_model_name_or_path` the backbone was read from, if known.
        base_model_hash (`str`, *optional*):
            The content hash of the backbone's weights the head depends on (the embeddings and the layers up to the
            head's, see [`~backbones.backbone_hash`]), recorded when the model is saved. Loading a head saved alone
            checks the base model against it.
        saved_weights (`str`, *optional*, defaults to `"full"`):
            `"full"`: the folder holds every weight. `"head"`: it holds the head's (`head.safetensors`), and
            loading reads the backbone from the base model, as a peft adapter does.
        training_summary (`dict`, *optional*):
            What the model was trained on and how (`datasets`, `num_pairs`, `settings`, `prefix_accuracy`,
            `prefix_counts`, `mean_margin`, `description`), filled in by `PrefixRewardTrainer` and rendered into
            the model card by `save_pretrained`.

    Examples:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

    >>> config = PrefixRewardConfig(text_config=GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128))
    >>> model = PrefixRewardModel(config)
    >>> model.config.text_config.model_type
    'gpt2'
    ```
    """

    model_type = "prefix_reward"
    # The plain `sub_configs` mapping (not 5.20's `sub_configs_defaults`), with the dict-to-config step done in
    # `__post_init__`, works on every supported transformers.
    sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    head_type: str = "per_position"
    head_layer: int | None = None
    head_hidden_size: int | None = None
    head_bias: bool = False
    head_kind: str = "scalar"
    vocab_head: str = "full"
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    base_model_hash: str | None = None
    saved_weights: str = "full"
    training_summary: dict | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict):
            text_config = dict(self.text_config)
            self.text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        elif self.text_config is None:
            self.text_config = AutoConfig.for_model("llama")
        super().__post_init__(**kwargs)
        if self.text_config.is_encoder_decoder:
            raise ValueError(
                f"`text_config` is an encoder-decoder configuration (model_type={self.text_config.model_type!r}). "
                "A prefix reward model needs a decoder-only backbone (GPT-2, Llama, Qwen2, ...) or, without "
                "incremental scoring, an encoder-only one (BERT, DeBERTa, ...). Use such a checkpoint instead."
            )
        self._check_head_type()
        self._check_head_kind()
        if self.head_hidden_size is not None and self.head_hidden_size < 1:
            raise ValueError(
                f"`head_hidden_size` (={self.head_hidden_size}) has to be a positive integer, or `None` for a "
                "linear head."
            )
        num_layers = getattr(self.text_config, "num_hidden_layers", None)
        if (
            self.head_layer is not None
            and num_layers is not None
            and not -num_layers - 1 <= self.head_layer <= num_layers
        ):
            raise ValueError(
                f"`head_layer` (={self.head_layer}) is out of range for a backbone with {num_layers} layers: use "
                f"an index in [{-num_layers - 1}, {num_layers}], or `None` for the final output."
            )

    @property
    def is_vocab_head(self) -> bool:
        """Whether the head is an all-token (`"vocab"`) head."""
        return self.head_kind == "vocab"

    def _check_head_kind(self) -> None:
        """Refuse an unknown `head_kind`, `vocab_head` or `saved_weights`, and a `"vocab"` head where the backbone
        or the other head settings do not allow it."""
        for name, choices in (
            ("head_kind", HEAD_KINDS),
            ("vocab_head", VOCAB_HEADS),
            ("saved_weights", SAVED_WEIGHTS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"`{name}` (={getattr(self, name)!r}) has to be one of {', '.join(choices)}."
                )
        if not self.is_vocab_head:
            return
        if not is_incrementally_scorable(self.text_config):
            raise ValueError(
                f"`head_kind='vocab'` reads the hidden state before each token, which only a causal decoder gives; "
                f"{self.text_config.model_type} is not one. Use `head_kind='scalar'`."
            )
        if self.head_hidden_size is not None:
            raise ValueError(
                f"`head_hidden_size` (={self.head_hidden_size}) makes an MLP scalar head; a `head_kind='vocab'` head "
                "is linear (`vocab_head='full'` or `'factorised'`). Leave `head_hidden_size` unset."
            )

    def _check_head_type(self) -> None:
        """Refuse a `head_type` that is unknown, or `"classifier"` where the backbone or the head settings do not
        allow it."""
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"`head_type` (={self.head_type!r}) has to be one of {', '.join(HEAD_TYPES)}.")
        if self.head_type != "classifier":
            return
        model_type = self.text_config.model_type
        if is_incrementally_scorable(self.text_config):
            raise ValueError(
                f"`head_type='classifier'` is for encoder backbones, but {model_type} is a causal decoder: keep "
                "`head_type='per_position'`, whose head is read at every position (a decoder classifier's `score` "
                "head loads into it as it is)."
            )
        if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ValueError(
                f"`head_type='classifier'` needs a backbone with a sequence-classification model, and "
                f"{model_type} has none: use `head_type='per_position'`."
            )
        if self.text_config.num_labels != 1:
            raise ValueError(
                f"`head_type='classifier'` reads one logit as the reward, but `text_config.num_labels` is "
                f"{self.text_config.num_labels}: set `num_labels=1` on the backbone's configuration."
            )
        changed = [
            key for key, default in PER_POSITION_HEAD_DEFAULTS.items() if getattr(self, key) != default
        ]
        if changed:
            raise ValueError(
                f"{', '.join(f'`{key}`' for key in changed)} only apply to `head_type='per_position'`: a "
                "`'classifier'` head is the backbone's own. Leave them unset."
            )


# Saved prefix reward models then load through `AutoConfig` (and so `AutoModelForPrefixReward`) without
# `trust_remote_code`. Every module that reads a prefix reward model's configuration imports this one.
AutoConfig.register(PrefixRewardConfig.model_type, PrefixRewardConfig, exist_ok=True)

REWARD_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda r: r,
    "clamp": lambda r: r.clamp(0.0, 1.0),  # RAD
    "sigmoid": lambda r: r.sigmoid(),
}

#: The metadata key of a `RewardGuidanceConfig` field whose `generate()` keyword differs from the field's name.
GENERATE_NAME = "generate_name"

#: The settings of `RewardGuidanceConfig` that take one value per reward model (or one value for all of them).
PER_MODEL_SETTINGS = ("beta", "reward_transform", "standardize_rewards")


def per_model_setting(name: str, value: Any, check: Callable[[str, Any], Any]) -> Any:
    """`value` checked by `check(name, value)`, or, for a list or tuple (one value per reward model), each item
    checked as `name[i]`: returns the checked value, or a list of them. An empty list, and every invalid item at
    once, are refused by name."""
    if not isinstance(value, (list, tuple)):
        return check(name, value)
    if not value:
        raise ValueError(
            f"`{name}` is an empty list: give one value per reward model, or a single value for all of them."
        )
    checked, problems = [], []
    for index, item in enumerate(value):
        try:
            checked.append(check(f"{name}[{index}]", item))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError(
            f"`{name}` (={list(value)!r}) holds one value per reward model: {' '.join(problems)}"
        )
    return checked


def _checked_transform(name: str, value: Any) -> str | Callable[[torch.Tensor], torch.Tensor]:
    if not callable(value) and (not isinstance(value, str) or value not in REWARD_TRANSFORMS):
        raise ValueError(
            f"`{name}` (={value!r}) has to be one of {sorted(REWARD_TRANSFORMS)} or a function of a tensor."
        )
    return value


def _checked_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` (={value!r}) has to be True or False.")
    return value


@dataclass
class RewardGuidanceConfig:
    """Settings of reward-guided decoding.

    Every field is also a keyword of `generate()` in ways 2 and 3 (`custom_generate=reward_guided_generate`, or
    `reward_model=` after [`enable_reward_guided_generate`]), under its own name except where
    [`~RewardGuidanceConfig.generate_names`] says otherwise: `scorer` is `reward_scorer` there, and `max_time` is
    `reward_max_time`, because `generate()` keeps `max_time` for its own time limit.

    With several reward models (`reward_model=[rm1, rm2]`), the candidates' scores are
    `log p + sum_i beta_i * transform_i(r_i)`: `beta`, `reward_transform` and `standardize_rewards` each take one
    value per reward model (a list, in the reward models' order) or a single value for all of them.

    Attributes:
        beta (`float` or list of `float`, defaults to 1.0): weight of the reward against the language model's
            log-probability; one per reward model, or one for all. The PARGS paper uses 1 for greedy decoding and
            2 for sampling.
        top_k (`int`, defaults to 10): how many of the language model's best tokens are scored at each step.
        score_with (`str`, defaults to `"logprobs"`): `"logprobs"` combines the reward with
            `log_softmax(scores)`; `"logits"` with the raw scores, as ARGS does.
        reward_transform (`str` or callable, or a list of them, defaults to `"identity"`): applied to the rewards
            before use: `"identity"`, `"clamp"` (to [0, 1], as RAD does), `"sigmoid"`, or a function of a tensor;
            one per reward model, or one for all.
        standardize_rewards (`bool` or list of `bool`, defaults to `False`): standardise the rewards within each
            row's k candidates (zero mean, unit variance) before weighting them; one per reward model, or one for
            all.
        reward_threshold (`float`, *optional*): stop a sequence once its prefix reward reaches this value. With
            several reward models it reads their combination `sum_i beta_i * r_i` of the raw rewards (see
            [`~RewardGuidanceConfig.combine_rewards`]).
        max_reward_calls (`int`, *optional*): stop every sequence once the reward model has scored this many steps
            (one call scores the k candidates of every row).
        max_time (`float`, *optional*): stop every sequence once this many seconds have passed since the first
            guided step.
        record_candidates (`bool`, defaults to `False`): keep every step's k candidates and their rewards in the
            trace.
        scorer (`str`, defaults to `"auto"`): `"cached"` (KV-cached, decoder reward models), `"reference"`
            (re-encode every prefix); for an all-token (`head_kind="vocab"`) reward model, `"vocab"` (one 1-token
            step on its cache) or `"backbone"` (read from the language model's own hidden state, when its weights
            are the head's base); for a reward model with another tokenizer, `"bridged"` (KV-cached through
            text) or `"text"` (re-encode every candidate's text); another kind registered with
            [`~scoring.register_scorer`]; or `"auto"` (the fastest exact kind for the reward model).

    Examples:

    ```python
    >>> from hf_rgtg import RewardGuidanceConfig
    >>> config = RewardGuidanceConfig(beta=2.0, top_k=10)
    >>> config.generate_names()["scorer"], config.generate_names()["beta"]
    ('reward_scorer', 'beta')
    >>> two = RewardGuidanceConfig(beta=[1.0, 0.5], reward_transform="sigmoid")
    >>> two.per_model("beta", 2), two.per_model("reward_transform", 2)
    ([1.0, 0.5], ['sigmoid', 'sigmoid'])
    ```
    """

    beta: float | Sequence[float] = 1.0
    top_k: int = 10
    score_with: str = "logprobs"
    reward_transform: (
        str | Callable[[torch.Tensor], torch.Tensor] | Sequence[str | Callable[[torch.Tensor], torch.Tensor]]
    ) = "identity"
    standardize_rewards: bool | Sequence[bool] = False
    reward_threshold: float | None = None
    max_reward_calls: int | None = None
    max_time: float | None = field(default=None, metadata={GENERATE_NAME: "reward_max_time"})
    record_candidates: bool = False
    scorer: str = field(default="auto", metadata={GENERATE_NAME: "reward_scorer"})

    def __post_init__(self):
        self.beta = per_model_setting(
            "beta", self.beta, lambda name, value: checked_finite(name, value, "e.g. `beta=1.0`")
        )
        self.top_k = checked_positive_int("top_k", self.top_k, "e.g. `top_k=10`")
        if self.score_with not in ("logprobs", "logits"):
            raise ValueError(f"`score_with` (={self.score_with!r}) has to be 'logprobs' or 'logits'.")
        self.reward_transform = per_model_setting(
            "reward_transform", self.reward_transform, _checked_transform
        )
        self.standardize_rewards = per_model_setting(
            "standardize_rewards", self.standardize_rewards, _checked_flag
        )
        _checked_flag("record_candidates", self.record_candidates)
        if self.reward_threshold is not None:
            self.reward_threshold = checked_finite(
                "reward_threshold", self.reward_threshold, "e.g. `reward_threshold=2.0`, or None"
            )
        if self.max_reward_calls is not None:
            self.max_reward_calls = checked_positive_int(
                "max_reward_calls", self.max_reward_calls, "e.g. `max_reward_calls=64`, or None"
            )
        if self.max_time is not None:
            self.max_time = checked_finite(
                "max_time", self.max_time, "e.g. `max_time=30.0` (seconds), or None"
            )
            if self.max_time <= 0:
                raise ValueError(
                    f"`max_time` (={self.max_time}) has to be a positive number of seconds or None."
                )
        if not isinstance(self.scorer, str) or not self.scorer:
            raise ValueError(
                f"`scorer` (={self.scorer!r}) has to be the name of a scorer kind: 'auto', 'cached', 'reference', "
                "'bridged' or 'text'."
            )

    @classmethod
    def generate_names(cls) -> dict[str, str]:
        """Each field's keyword in `generate()` (ways 2 and 3), by field name."""
        return {item.name: item.metadata.get(GENERATE_NAME, item.name) for item in dataclasses.fields(cls)}

    @property
    def needs_rewards_while_decoding(self) -> bool:
        """Whether decoding has to score candidates at all: `False` when the rewards weigh nothing (`beta` 0, or
        every `beta` 0 with several reward models), no stopping rule reads them and the trace need not record
        them. Decoding is then the language model's own top-k decoding, and callers may run it without the reward
        models (which can still score the result)."""
        betas = self.beta if isinstance(self.beta, list) else [self.beta]
        return bool(
            any(beta != 0 for beta in betas)
            or self.record_candidates
            or any(
                limit is not None for limit in (self.reward_threshold, self.max_reward_calls, self.max_time)
            )
        )

    def per_model(self, name: str, num_models: int) -> list[Any]:
        """The setting `name` (one of [`PER_MODEL_SETTINGS`]) of each of `num_models` reward models: a single value
        repeated, or the list given, which has to hold one value per reward model.

        Raises:
            `ValueError`: naming the setting, both lengths and the fix, for a list of another length.
        """
        value = getattr(self, name)
        if not isinstance(value, list):
            return [value] * num_models
        if len(value) != num_models:
            values = f"{len(value)} value{'s' if len(value) != 1 else ''}"
            models = f"{num_models} reward model{'s' if num_models != 1 else ''}"
            raise ValueError(
                f"`{name}` (={value!r}) has {values} for {models}: give one value per reward model (a list of "
                f"{num_models}), or a single value for all of them."
            )
        return list(value)

    def check_num_models(self, num_models: int) -> None:
        """Refuse a per-model setting ([`PER_MODEL_SETTINGS`]) whose list does not hold `num_models` values."""
        for name in PER_MODEL_SETTINGS:
            self.per_model(name, num_models)

    def transform(self, rewards: torch.Tensor, model: int = 0) -> torch.Tensor:
        """`rewards` through `reward_transform` (of the reward model at index `model`, when there is one per
        reward model)."""
        transform = self.reward_transform
        if isinstance(transform, list):
            transform = transform[model]
        return (transform if callable(transform) else REWARD_TRANSFORMS[transform])(rewards)

    def combine_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """The reward that the trace records, `reward_threshold` reads and the pipelines report, from the raw
        rewards of each reward model, `rewards` `(..., num_models)`: for one reward model its own reward; for
        several, `sum_i beta_i * r_i` (before any `reward_transform` or standardisation, which shape only the
        candidates' scores).

        Examples:

        ```python
        >>> import torch
        >>> from hf_rgtg import RewardGuidanceConfig
        >>> RewardGuidanceConfig(beta=[1.0, 0.5]).combine_rewards(torch.tensor([[2.0, -1.0]])).tolist()
        [1.5]
        >>> RewardGuidanceConfig(beta=2.0).combine_rewards(torch.tensor([[2.0]])).tolist()  # one model: r itself
        [2.0]
        ```
        """
        if rewards.shape[-1] == 1:
            return rewards[..., 0]
        betas = self.per_model("beta", rewards.shape[-1])
        combined = betas[0] * rewards[..., 0]
        for index in range(1, len(betas)):
            combined = combined + betas[index] * rewards[..., index]
        return combined


__all__ = [
    "GENERATE_NAME",
    "HEAD_TYPES",
    "PER_MODEL_SETTINGS",
    "REWARD_TRANSFORMS",
    "PrefixRewardConfig",
    "RewardGuidanceConfig",
    "is_incrementally_scorable",
    "per_model_setting",
]
