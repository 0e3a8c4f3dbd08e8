"""`AutoModelForPrefixReward`: load a prefix reward model from any compatible checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .compat import held_load_reports, keep_own_weight_names, model_from_config, release_load_reports
from .configuration import PrefixRewardConfig, is_incrementally_scorable
from .defaults import load_head_only
from .head_only import HEAD_FILE
from .modeling import HUB_KWARGS, PrefixRewardModel

#: The logger of the one warning that a reward head built over a causal-LM checkpoint is new and untrained; a
#: caller about to train that head, as `hf-rgtg train` is, may quiet it.
new_head_logger = logging.getLogger(f"{__name__}.new_head")

# `PrefixRewardConfig` fields that may be set when wrapping a foreign checkpoint.
_HEAD_KWARGS = ("head_layer", "head_hidden_size", "head_bias", "head_kind", "vocab_head")


def looks_like_local_path(name: str) -> bool:
    """Whether `name` can only be a local path, never a Hub id (`org/name`): absolute, relative (`.`, `~`), or with
    more than one `/`. A missing folder of that form is worth naming as such instead of as an unknown repo."""
    return Path(name).expanduser().is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


def _is_sequence_classifier(config: PreTrainedConfig) -> bool:
    return any(arch.endswith("ForSequenceClassification") for arch in (config.architectures or []))


def wrapping_head_type(config: PreTrainedConfig) -> str:
    """The `head_type` of a prefix reward model wrapping a checkpoint of this configuration: `"classifier"` for an
    encoder sequence classifier (its pooled output is the reward), `"per_position"` for everything else (a decoder
    classifier's `score` head is read at every position; other checkpoints get a new head)."""
    if _is_sequence_classifier(config) and not is_incrementally_scorable(config):
        return "classifier"
    return "per_position"


def _base_model_prefix(config: PreTrainedConfig) -> str:
    model_class = MODEL_MAPPING[type(config)]
    if isinstance(model_class, (list, tuple)):
        model_class = model_class[0]
    return model_class.base_model_prefix


def _head_settings(config: PrefixRewardConfig) -> str:
    return ", ".join(f"{key}={getattr(config, key)!r}" for key in _HEAD_KWARGS)


def _check_backbone_config(config: PreTrainedConfig, name: str) -> None:
    if config.is_encoder_decoder:
        raise ValueError(
            f"{name!r} is an encoder-decoder model (model_type={config.model_type!r}); a prefix reward model needs "
            "a decoder-only backbone (GPT-2, Llama, Qwen2, Mistral, Gemma, ...) or, without incremental scoring, "
            "an encoder-only one (BERT, DeBERTa, ...). Pick such a checkpoint."
        )
    if type(config) not in MODEL_MAPPING:
        raise ValueError(
            f"{name!r} has model_type={config.model_type!r}, which `transformers.AutoModel` cannot build, so it "
            "cannot serve as a prefix reward model's backbone"
            + (
                " (backbones with custom code, `auto_map`, are not supported)."
                if getattr(config, "auto_map", None)
                else "."
            )
        )
    if _is_sequence_classifier(config):
        if config.num_labels != 1:
            raise ValueError(
                f"{name!r} is a sequence-classification model with num_labels={config.num_labels}; a reward model "
                "has exactly one output. Use a reward model saved with `num_labels=1`, or load the backbone from a "
                "causal-LM (or base-model) checkpoint and train a new head."
            )


class AutoModelForPrefixReward:
    r"""
    Builds a [`PrefixRewardModel`] from a checkpoint or a configuration, in the style of the `transformers` Auto
    classes.

    [`~AutoModelForPrefixReward.from_pretrained`] accepts three kinds of checkpoints, as local directories or Hub
    ids:

    1. a saved prefix reward model (`model_type="prefix_reward"`): loaded as is;
    2. any causal-LM (or base-model) checkpoint: the backbone's weights load, the reward head is new and untrained
       (a warning says so);
    3. a reward model saved as `*ForSequenceClassification` with `num_labels=1`, so that the reward of a whole
       sequence equals the original model's logit. This is how an ordinary full-sequence reward model scores
       prefixes (ARGS style). A decoder's `score` head becomes the per-position head. An encoder's (BERT,
       RoBERTa, DeBERTa-v2, ...) classifier stays whole, pooling included (`head_type="classifier"`): its reward
       is read once per sequence, and each prefix is scored as a sequence of its own.

    Examples:

    ```python
    >>> import tempfile
    >>> import torch
    >>> from transformers import AutoModelForSequenceClassification, GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward

    >>> config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, num_labels=1, pad_token_id=0)
    >>> classifier = AutoModelForSequenceClassification.from_config(config).eval()
    >>> path = tempfile.mkdtemp()
    >>> classifier.save_pretrained(path)
    >>> rm = AutoModelForPrefixReward.from_pretrained(path).eval()
    >>> input_ids = torch.tensor([[3, 4, 5]])
    >>> torch.allclose(rm(input_ids).reward, classifier(input_ids).logits[:, 0], atol=1e-5)
    True

    >>> # An encoder classifier: its own pooled logit is the reward of each whole sequence.
    >>> from transformers import BertConfig
    >>> config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...                     vocab_size=128, num_labels=1)
    >>> classifier = AutoModelForSequenceClassification.from_config(config).eval()
    >>> classifier.save_pretrained(path)
    >>> rm = AutoModelForPrefixReward.from_pretrained(path).eval()
    >>> rm.config.head_type, rm.supports_incremental_scoring
    ('classifier', False)
    >>> torch.allclose(rm(input_ids).reward, classifier(input_ids).logits[:, 0], atol=1e-5)
    True
    ```
    """

    def __init__(self, *args, **kwargs):
        raise OSError(
            "AutoModelForPrefixReward is designed to be instantiated with "
            "`AutoModelForPrefixReward.from_pretrained(name_or_path)` or `AutoModelForPrefixReward.from_config(config)`."
        )

    @classmethod
    def from_config(cls, config: PreTrainedConfig, **kwargs: Any) -> PrefixRewardModel:
        """Build a randomly initialised prefix reward model.

        Args:
            config (`PreTrainedConfig`):
                A [`PrefixRewardConfig`], or any backbone configuration (it becomes the `text_config`).
            kwargs:
                `PrefixRewardConfig` head settings (`head_layer`, ...) when `config` is a backbone configuration;
                otherwise passed to transformers' `from_config` (`dtype`, `attn_implementation`).
        """
        if not isinstance(config, PrefixRewardConfig):
            _check_backbone_config(config, type(config).__name__)
            head = {key: kwargs.pop(key) for key in _HEAD_KWARGS if key in kwargs}
            config = PrefixRewardConfig(text_config=config, head_type=wrapping_head_type(config), **head)
        return model_from_config(PrefixRewardModel, config, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs: Any
    ) -> PrefixRewardModel:
        """Load a prefix reward model from a prefix-RM, causal-LM or decoder sequence-classification checkpoint.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A Hub id (`"org/name"`) or a local directory.
            kwargs:
                The usual `from_pretrained` arguments (`dtype`/`torch_dtype`, `device_map`, `attn_implementation`,
                `revision`, `token`, `cache_dir`, ...), plus `head_layer`, `head_hidden_size`, `head_bias`,
                `head_kind` and `vocab_head` when wrapping a checkpoint that is not a prefix reward model yet (a
                full vocab head starts from the causal LM's own head, as FaRMA does; a factorised one reads its
                output embedding); and `base_model` (a folder) for a head saved alone whose base is elsewhere.
        """
        name = str(pretrained_model_name_or_path)
        given = kwargs.pop("config", None)
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        kwargs.pop("trust_remote_code", None)  # only the configuration reads it: custom backbones are refused
        head = {key: kwargs.pop(key) for key in _HEAD_KWARGS if key in kwargs}
        source = (
            AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
            if given is None or isinstance(given, PrefixRewardConfig)
            else given
        )
        if isinstance(source, PrefixRewardConfig):
            if (given or source).saved_weights == "head":
                return _head_alone(pretrained_model_name_or_path, model_args, kwargs, hub_kwargs)
            if kwargs.pop("base_model", None) is not None:
                raise ValueError(
                    "`base_model` is for a head saved alone (`saved_weights='head'`); this model was saved whole."
                )
            if head:
                raise ValueError(
                    f"{name!r} is already a prefix reward model; its head ({_head_settings(source)}) was saved with "
                    f"it, so {sorted(head)} cannot be changed on loading. Set them when wrapping a causal-LM or "
                    "sequence-classification checkpoint, or train a new head."
                )
            return PrefixRewardModel.from_pretrained(
                pretrained_model_name_or_path, *model_args, config=given or source, **kwargs
            )
        _check_backbone_config(source, name)
        config, prefix_config = _wrapping_configs(given, source, name, head)
        is_classifier = _is_sequence_classifier(source)
        return_info = kwargs.pop("output_loading_info", False)
        key_mapping = (
            # The classifier is the backbone whole: every weight keeps its name under `backbone.`.
            {r"^(.)": r"backbone.\1"}
            if prefix_config.head_type == "classifier"
            else {rf"^{_base_model_prefix(config)}\.": "backbone.", **_vocab_head_mapping(prefix_config)}
        )
        with held_load_reports() as reports:
            model, info = PrefixRewardModel.from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                config=prefix_config,
                key_mapping=key_mapping,
                output_loading_info=True,
                **kwargs,
            )
        # transformers' report lists the new head's weights as missing; that alone is expected, and said below.
        if not _only_the_head_is_new(info):
            release_load_reports(reports)
        # The renaming is a loading detail: saving writes the prefix reward model's own key names, not the source's.
        keep_own_weight_names(model)
        _start_vocab_head(model, info)
        _check_loaded_head(info, name, is_classifier, model.head_module_names)
        return (model, info) if return_info else model


def _head_alone(
    name: str | os.PathLike, model_args: tuple, kwargs: dict[str, Any], hub_kwargs: dict[str, Any]
) -> PrefixRewardModel:
    """A head saved alone, from its folder or its Hub snapshot, over its base model (see
    [`~defaults.load_head_only`]); it takes `dtype`, `base_model` and the Hub arguments that locate the head."""
    base_model = kwargs.pop("base_model", None)
    others = sorted(set(kwargs) - {*HUB_KWARGS, "dtype", "torch_dtype"})
    if model_args or others:
        raise ValueError(
            f"A head saved alone ({name}) loads with `dtype`, `base_model` and the Hub arguments only, not "
            f"{others or 'positional arguments'}: move the model afterwards (`.to(...)`)."
        )
    folder = Path(name).expanduser()
    if not folder.is_dir():
        hub = {key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"}
        folder = Path(snapshot_download(str(name), allow_patterns=["config.json", HEAD_FILE], **hub))
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype")) or torch.float32
    model = load_head_only(folder, base_model=base_model, dtype=dtype)
    model.name_or_path = str(name)
    return model


def _wrapping_configs(
    given: PreTrainedConfig | None, source: PreTrainedConfig, name: str, head: dict[str, Any]
) -> tuple[PreTrainedConfig, PrefixRewardConfig]:
    """The backbone's configuration and the prefix reward model's for wrapping the foreign checkpoint `name`
    (whose configuration is `source`, or the backbone configuration given): those of the `given` prefix reward
    configuration, or `source` and a new prefix reward configuration with the `head` settings."""
    if not isinstance(given, PrefixRewardConfig):
        return source, PrefixRewardConfig(
            text_config=source, head_type=wrapping_head_type(source), base_model_name_or_path=name, **head
        )
    if head:
        raise ValueError(f"Set {sorted(head)} on the `config` you pass, not as keyword arguments as well.")
    if type(given.text_config) is not type(source):
        raise ValueError(
            f"`config.text_config` is a {type(given.text_config).__name__}, but {name!r} holds a "
            f"{type(source).__name__} checkpoint."
        )
    return given.text_config, given


def _vocab_head_mapping(config: PrefixRewardConfig) -> dict[str, str]:
    """Where a causal LM's output embedding (`lm_head.weight`) goes in a vocab head: the start of a full head, the
    embedding a factorised head reads when it is not tied to the input embedding; nowhere otherwise."""
    if not config.is_vocab_head:
        return {}
    if config.vocab_head == "full":
        return {r"^lm_head\.weight$": "score.weight"}
    return {r"^lm_head\.weight$": "score.output_embedding"}


def _start_vocab_head(model: PrefixRewardModel, info: dict[str, Any]) -> None:
    """A full vocab head over a tied causal LM, whose checkpoint holds no `lm_head.weight`: start it from the input
    embedding, which is the LM's output embedding; the key is no longer missing."""
    if not (model.config.is_vocab_head and model.config.vocab_head == "full" and model.ties_output_embedding):
        return
    if "score.weight" in info["missing_keys"]:
        with torch.no_grad():
            model.score.weight.copy_(model.backbone.get_input_embeddings().weight)
        info["missing_keys"] = [key for key in info["missing_keys"] if key != "score.weight"]


def _only_the_head_is_new(info: dict[str, Any]) -> bool:
    """Whether loading a foreign checkpoint found nothing amiss but the new reward head's weights missing."""
    return all(key.startswith("score.") for key in info["missing_keys"]) and not any(
        info.get(kind) for kind in ("unexpected_keys", "mismatched_keys", "error_msgs")
    )


def _check_loaded_head(
    info: dict[str, list[str]], name: str, is_classifier: bool, head_module_names: list[str]
) -> None:
    """Refuse a sequence classifier whose head did not become the reward head; warn of a new, untrained head."""
    head = tuple(f"{module}." for module in head_module_names)
    head_missing = any(key.startswith(head) for key in info["missing_keys"])
    if is_classifier:
        if head_missing or any(key.startswith(("score.", *head)) for key in info["unexpected_keys"]):
            raise ValueError(
                f"{name!r} is a sequence-classification model, but its head could not be used as the reward "
                f"head (missing: {sorted(info['missing_keys'])}, unexpected: {sorted(info['unexpected_keys'])}). "
                "Only heads stored as `score.weight` (and `score.bias` with `head_bias=True`) on decoders, and "
                "the classifier of an encoder's `*ForSequenceClassification` model, are supported."
            )
    elif head_missing:
        new_head_logger.warning(
            f"The reward head of the prefix reward model built from {name!r} is newly initialised and untrained: "
            "its rewards are meaningless until it is trained (see `PrefixRewardTrainer` / `hf-rgtg train`)."
        )


def resolve_reward_model(reward_model: Any) -> PrefixRewardModel:
    """Accept a [`PrefixRewardModel`] or a name/path to load with [`AutoModelForPrefixReward`]."""
    if isinstance(reward_model, (str, os.PathLike)):
        name = os.fspath(reward_model)
        local = isinstance(reward_model, os.PathLike) or looks_like_local_path(name)
        if local and not os.path.isdir(os.path.expanduser(name)):
            raise ValueError(
                f"`reward_model` ({name!r}) is not a folder. Give the folder a reward model was saved to (with "
                "`save_pretrained`), or a Hub id such as 'org/name'."
            )
        try:
            return AutoModelForPrefixReward.from_pretrained(os.path.expanduser(name)).eval()
        except OSError as error:
            raise OSError(f"Could not load `reward_model` {name!r}: {error}") from error
    if isinstance(reward_model, PrefixRewardModel):
        return reward_model
    if isinstance(reward_model, PreTrainedModel):
        raise ValueError(
            f"`reward_model` is a {type(reward_model).__name__}, not a PrefixRewardModel. Load it with "
            "`AutoModelForPrefixReward.from_pretrained(<its name or folder>)`, which turns causal-LM and "
            "sequence-classification checkpoints into prefix reward models."
        )
    raise ValueError(
        f"`reward_model` has to be a PrefixRewardModel or the name/path of one, got {type(reward_model).__name__}. "
        "Load one with `AutoModelForPrefixReward.from_pretrained(...)`."
    )


def resolve_reward_tokenizer(
    reward_model: Any, reward_tokenizer: PreTrainedTokenizerBase | str | os.PathLike | None = None
) -> PreTrainedTokenizerBase | None:
    """The reward model's tokenizer: `reward_tokenizer` (loaded when it is a name or folder), else the one saved
    with the reward model (by the name it was given as, or the folder it was loaded from), else `None`.

    Examples:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import AutoModelForPrefixReward
    >>> from hf_rgtg.auto import resolve_reward_tokenizer

    >>> rm = AutoModelForPrefixReward.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    >>> resolve_reward_tokenizer(rm) is None  # built from a configuration: no tokenizer anywhere
    True
    ```
    """
    if isinstance(reward_tokenizer, PreTrainedTokenizerBase):
        return reward_tokenizer
    if reward_tokenizer is not None:
        if not isinstance(reward_tokenizer, (str, os.PathLike)):
            raise TypeError(
                f"`reward_tokenizer` has to be a tokenizer or the name/folder of one, got "
                f"{type(reward_tokenizer).__name__}."
            )
        try:
            return AutoTokenizer.from_pretrained(os.path.expanduser(os.fspath(reward_tokenizer)))
        except (OSError, ValueError) as error:
            raise OSError(
                f"Could not load `reward_tokenizer` {os.fspath(reward_tokenizer)!r}: {error}"
            ) from error
    if isinstance(reward_model, (str, os.PathLike)):
        source = os.path.expanduser(os.fspath(reward_model))
    else:
        source = getattr(reward_model, "name_or_path", "") or ""
        if not os.path.isdir(source):
            return None  # an object's Hub name may be anyone's; only a folder it was loaded from is its own
    if os.path.isdir(source) and not any(
        os.path.exists(os.path.join(source, name)) for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # a reward model saved without a tokenizer, or a Hub id not in the cache


__all__ = [
    "AutoModelForPrefixReward",
    "looks_like_local_path",
    "resolve_reward_model",
    "resolve_reward_tokenizer",
]
