"""Head-only saves: a prefix reward model over a declared base model saved as its head alone (`head.safetensors`),
its configuration and its card, as a peft adapter is saved; loading reads the backbone from the base model (a
local folder, the Hub cache, or the embedded default language model) and checks it against the content hash the
head declares ([`~backbones.backbone_hash`]).

The packaged default reward model (`hf_rgtg/default_rm/`) is a head of this layout.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig
from transformers.initialization import no_init_weights

from .backbones import backbone_hash
from .configuration import PrefixRewardConfig

if TYPE_CHECKING:
    from .modeling import PrefixRewardModel

logger = logging.getLogger(__name__)

#: The file of a head saved alone: the state dict of the model's `score` head, without the `score.` prefix.
HEAD_FILE = "head.safetensors"
#: Head tensors that are copies of the base model's weights, with the name they have in its checkpoint: they are
#: not saved with the head, and load from the base.
BASE_TENSORS = {"output_embedding": "lm_head.weight"}
# Backbone settings that have to agree between the reward model's configuration and the checkpoint it loads from.
_BACKBONE_SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


def head_state(model: PrefixRewardModel) -> dict[str, torch.Tensor]:
    """The tensors a head-only save writes: the `score` head's state, without the copies of base weights."""
    return {
        name: tensor.detach().contiguous()
        for name, tensor in model.score.state_dict().items()
        if name not in BASE_TENSORS
    }


def save_head_only(model: PrefixRewardModel, folder: str | os.PathLike) -> PrefixRewardConfig:
    """Write `model`'s head, and its configuration with the base model's identity, to `folder`; returns the
    configuration written (`saved_weights="head"`, `base_model_hash` of the backbone as it is now).

    Raises:
        `ValueError`: when the model declares no base model (`config.base_model_name_or_path`), has a
            `"classifier"` head (the head is the backbone), or its backbone's weights are no longer those of the
            base it declares (trained with `train="full"` or `"lora"`): save it whole then.
    """
    config = model.config
    if config.head_type == "classifier":
        raise ValueError(
            "A `head_type='classifier'` reward model's head is part of its backbone and cannot be saved alone: save "
            "it whole (`head_only=False`)."
        )
    if not config.base_model_name_or_path:
        raise ValueError(
            "A head saved alone loads its backbone from its base model, but this model declares none "
            "(`config.base_model_name_or_path` is unset). Set it to the language model's Hub id or folder, or save "
            "the whole model (`head_only=False`)."
        )
    current = backbone_hash(model.backbone, model.head_depth)
    if config.base_model_hash is not None and config.base_model_hash != current:
        raise ValueError(
            f"The backbone's weights are no longer those of the base model {config.base_model_name_or_path!r} it "
            "declares (their content hash changed: trained with `train='full'` or `'lora'`?), so the head alone "
            "would load onto other weights. Save the whole model (`head_only=False`)."
        )
    saved = PrefixRewardConfig.from_dict(config.to_dict())
    saved.base_model_hash = current
    saved.saved_weights = "head"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved.save_pretrained(folder)
    save_file(head_state(model), folder / HEAD_FILE)
    return saved


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


def assemble(
    head_dir: str | os.PathLike, backbone_dir: str | os.PathLike, dtype: torch.dtype = torch.float32
) -> PrefixRewardModel:
    """A prefix reward model from the head in `head_dir` (`config.json`, `head.safetensors`) and the backbone
    weights of the causal-LM (or base-model) safetensors checkpoint in `backbone_dir`, in eval mode. Only the
    weights of the layers the configuration keeps are read, so a backbone truncated to
    `text_config.num_hidden_layers` layers loads from the full checkpoint. The content hash is not checked here
    (see [`load_head_only`])."""
    from .modeling import PrefixRewardModel

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
    from . import defaults

    name, revision = config.base_model_name_or_path, config.base_model_revision
    if Path(name).expanduser().is_dir():
        return [(f"the folder {name}", lambda: Path(name).expanduser())]

    def snapshot() -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, allow_patterns=["*.json", "*.safetensors"]))

    sources = [(f"the Hub model {name}" + (f" at {revision}" if revision else ""), snapshot)]
    if name == defaults.DEFAULT_LM_NAME:
        sources.append(("the embedded default language model", defaults.default_lm_path))
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
            model = assemble(head_dir, locate(), dtype=torch.float32)
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


__all__ = [
    "BASE_TENSORS",
    "HEAD_FILE",
    "assemble",
    "base_checkpoint_sources",
    "checkpoint_tensors",
    "head_state",
    "load_head_only",
    "save_head_only",
]
