"""What a head at a depth reads from a decoder backbone: the weights its hidden state depends on, their content
hash (the one place it is computed), whether a language model holds the same weights, and the module whose output
is that hidden state (where a forward hook captures it during the language model's own forward).

A head at [`Depth`] `(layers, final_norm)` depends on every weight of the backbone except those of its later layers
and, unless `final_norm`, of its final norm: the embeddings (token and, for GPT-2, position), and layers
`0 .. layers - 1`. Two backbones give the same hidden state at that depth when those weights are equal and the
settings that shape the computation ([`COMPUTE_SETTINGS`]) agree.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable

import torch
from torch import nn

from .incremental import Depth

#: The names a decoder backbone gives its final norm (Llama family, GPT-2, GPT-NeoX/Phi, OPT).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm")

#: Configuration settings that change a backbone's hidden states for equal weights; they have to agree too.
COMPUTE_SETTINGS = (
    "model_type",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "activation_function",
    "rms_norm_eps",
    "layer_norm_epsilon",
    "layer_norm_eps",
    "rope_parameters",
    "rope_theta",
    "scale_attn_weights",
    "attention_bias",
    "mlp_bias",
)

#: The prefix of the hash strings, naming how they are computed (so that another scheme can never match).
HASH_SCHEME = "sha256-f32-v1"


def layer_list(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's list of layers and its name in it (`"layers"`, `"h"`, an encoder's `"encoder.layer"`, ...):
    the first `ModuleList` with one module per layer of its configuration.

    Raises:
        `ValueError`: when the backbone has no such list.
    """
    total = getattr(backbone.config, "num_hidden_layers", None)
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == total:
            return name, module
    raise ValueError(
        f"Cannot find the {total} decoder layers of the {type(backbone).__name__} backbone (a child ModuleList of "
        "that length), so the hidden state a head reads cannot be located in it."
    )


def final_norm_name(backbone: nn.Module) -> str | None:
    """The attribute name of the backbone's final norm ([`FINAL_NORM_NAMES`]), or `None` without one."""
    children = dict(backbone.named_children())
    return next((name for name in FINAL_NORM_NAMES if name in children), None)


def dependent_weights(backbone: nn.Module, depth: Depth) -> dict[str, torch.Tensor]:
    """The backbone's weights (by their state-dict names) that its hidden state at `depth` depends on.

    Examples:

    ```python
    >>> from transformers import GPT2Config, GPT2Model
    >>> from hf_rgtg.backbones import dependent_weights
    >>> from hf_rgtg.incremental import Depth

    >>> backbone = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    >>> names = dependent_weights(backbone, Depth(1))
    >>> "wte.weight" in names, "h.0.attn.c_attn.weight" in names, "h.1.attn.c_attn.weight" in names
    (True, True, False)
    >>> "ln_f.weight" in names, "ln_f.weight" in dependent_weights(backbone, Depth(2, final_norm=True))
    (False, True)
    ```
    """
    layers_name, _ = layer_list(backbone)
    norm = final_norm_name(backbone)
    later = tuple(
        f"{layers_name}.{index}." for index in range(depth.layers, backbone.config.num_hidden_layers)
    )
    skipped = later + ((f"{norm}.",) if norm is not None and not depth.final_norm else ())
    return {
        name: tensor
        for name, tensor in backbone.state_dict(keep_vars=True).items()
        if not name.startswith(skipped)
    }


# Hashes already computed, per backbone and depth, with the version counters of the tensors they were computed from
# (an in-place update, as training makes, changes a counter).
_HASHES: weakref.WeakKeyDictionary[nn.Module, dict[Depth, tuple[tuple, str]]] = weakref.WeakKeyDictionary()


def _versions(weights: dict[str, torch.Tensor]) -> tuple:
    return tuple((tensor.data_ptr(), tensor._version) for tensor in weights.values())


def backbone_hash(backbone: nn.Module, depth: Depth) -> str:
    """The content hash of the backbone's weights that its hidden state at `depth` depends on: SHA-256 over each
    weight's name, shape and float32 values, in name order. Equal weights give equal hashes whatever their dtype
    or device; a backbone saved with more layers than `depth` reads hashes as one truncated to them.

    Examples:

    ```python
    >>> from transformers import GPT2Config, GPT2Model
    >>> from hf_rgtg.backbones import backbone_hash
    >>> from hf_rgtg.incremental import Depth

    >>> config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)
    >>> a, b = GPT2Model(config), GPT2Model(config)
    >>> b.load_state_dict(a.state_dict())  # doctest: +ELLIPSIS
    <All keys matched successfully>
    >>> backbone_hash(a, Depth(1)) == backbone_hash(b, Depth(1))
    True
    >>> _ = b.h[1].attn.c_attn.weight.data.add_(1.0)  # a layer after the depth: no change
    >>> backbone_hash(a, Depth(1)) == backbone_hash(b, Depth(1)), backbone_hash(a, Depth(2)) == backbone_hash(b, Depth(2))
    (True, False)
    ```
    """
    weights = dependent_weights(backbone, depth)
    versions = _versions(weights)
    known = _HASHES.get(backbone, {}).get(depth)
    if known is not None and known[0] == versions:
        return known[1]
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    value = f"{HASH_SCHEME}:{digest.hexdigest()}"
    _HASHES.setdefault(backbone, {})[depth] = (versions, value)
    return value


def _settings_mismatch(reader: nn.Module, other: nn.Module) -> list[str]:
    mine, theirs = reader.config.to_dict(), other.config.to_dict()
    return [key for key in COMPUTE_SETTINGS if mine.get(key) != theirs.get(key)]


def weights_mismatch(reader: nn.Module, other: nn.Module, depth: Depth) -> str | None:
    """Why `other` (a language model's base model) does not give `reader`'s hidden state at `depth`, or `None`
    when it does: its settings and the weights that hidden state depends on agree, checked by tensor identity
    (the same storage) first, by content hash otherwise. Never by name.

    Examples:

    ```python
    >>> from transformers import GPT2Config, GPT2Model
    >>> from hf_rgtg.backbones import weights_mismatch
    >>> from hf_rgtg.incremental import Depth

    >>> backbone = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    >>> weights_mismatch(backbone, backbone, Depth(1)) is None
    True
    >>> other = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    >>> weights_mismatch(backbone, other, Depth(1))[:40]
    'its weights differ (content hash sha256-'
    ```
    """
    if type(reader) is not type(other):
        return f"its backbone is a {type(other).__name__}, the head reads a {type(reader).__name__}"
    settings = _settings_mismatch(reader, other)
    if settings:
        return f"its configuration differs in {settings}"
    if depth.final_norm and reader.config.num_hidden_layers != other.config.num_hidden_layers:
        return (
            f"the head reads the final norm after {reader.config.num_hidden_layers} layers, and this backbone has "
            f"{other.config.num_hidden_layers}"
        )
    mine = dependent_weights(reader, depth)
    try:
        theirs = dependent_weights(other, depth)
    except ValueError as error:
        return str(error)
    missing = sorted(set(mine) - set(theirs))
    if missing:
        return f"it lacks weights the head depends on, e.g. {missing[:2]}"
    shapes = [name for name in mine if mine[name].shape != theirs[name].shape]
    if shapes:
        return f"its weights have other shapes, e.g. {shapes[0]!r}"
    if all(_same_tensor(mine[name], theirs[name]) for name in mine):
        return None
    own, other_hash = backbone_hash(reader, depth), backbone_hash(other, depth)
    if own != other_hash:
        return f"its weights differ (content hash {other_hash[:24]}..., the head's backbone {own[:24]}...)"
    return None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.data_ptr() == b.data_ptr()
        and a.dtype == b.dtype
        and a.device == b.device
        and a.shape == b.shape
        and a.stride() == b.stride()
    )


def hidden_state_module(backbone: nn.Module, depth: Depth) -> nn.Module:
    """The module of `backbone` whose forward output holds its hidden state at `depth`: the backbone itself (its
    `last_hidden_state`) with the final norm, else layer `depth.layers - 1`.

    Raises:
        `ValueError`: for `Depth(0)` (the embeddings), which no module's output gives in every family.
    """
    if depth.final_norm:
        return backbone
    if depth.layers == 0:
        raise ValueError("A head on the embeddings (`head_layer=0`) reads no layer's output.")
    return layer_list(backbone)[1][depth.layers - 1]


def module_output_hidden(output: object) -> torch.Tensor:
    """The hidden states `(batch, seq, hidden)` in a module's forward output: a tensor, the first item of a tuple,
    or a model output's `last_hidden_state`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.last_hidden_state


def capture_hidden(
    backbone: nn.Module, depth: Depth, receive: Callable[[torch.Tensor], None]
) -> torch.utils.hooks.RemovableHandle:
    """Register a forward hook on `backbone` that hands `receive` its hidden state at `depth` `(batch, seq,
    hidden)` after every forward (detached); returns the hook's handle (`handle.remove()` undoes it)."""
    module = hidden_state_module(backbone, depth)

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        receive(module_output_hidden(output).detach())

    return module.register_forward_hook(hook)


__all__ = [
    "COMPUTE_SETTINGS",
    "FINAL_NORM_NAMES",
    "HASH_SCHEME",
    "backbone_hash",
    "capture_hidden",
    "dependent_weights",
    "final_norm_name",
    "hidden_state_module",
    "layer_list",
    "module_output_hidden",
    "weights_mismatch",
]
