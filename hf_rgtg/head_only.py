"""Head-only saves: a prefix reward model over a declared base model saved as its head alone (`head.safetensors`),
its configuration and its card, as a peft adapter is saved. Loading ([`~defaults.load_head_only`], through
`AutoModelForPrefixReward.from_pretrained`) reads the backbone from the base model (a local folder, the Hub cache,
or the embedded default language model) and checks it against the content hash the head declares
([`~backbones.backbone_hash`]).

The packaged default reward model (`hf_rgtg/default_rm/`) is a head of this layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .backbones import backbone_hash
from .configuration import PrefixRewardConfig

#: The file of a head saved alone: the state dict of the model's `score` head, without the `score.` prefix.
HEAD_FILE = "head.safetensors"
#: Head tensors that are copies of the base model's weights, with the name they have in its checkpoint: they are
#: not saved with the head, and load from the base.
BASE_TENSORS = {"output_embedding": "lm_head.weight"}


def head_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a head-only save writes of a [`PrefixRewardModel`]: its `score` head's state, without the copies
    of base weights."""
    return {
        name: tensor.detach().contiguous()
        for name, tensor in model.score.state_dict().items()
        if name not in BASE_TENSORS
    }


def save_head_only(model: nn.Module, folder: str | os.PathLike) -> PrefixRewardConfig:
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


__all__ = ["BASE_TENSORS", "HEAD_FILE", "head_state", "save_head_only"]
