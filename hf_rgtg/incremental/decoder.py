"""The base of the incremental decoders: a decoder backbone run on new tokens on top of a [`KVBuffer`], to a
[`Depth`].

Each family of backbones has a subclass in its own module ([`GPT2Decoder`] in `gpt2.py`, [`LlamaFamilyDecoder`] in
`llama.py`); a subclass that names its `model_types` is one of the families [`IncrementalDecoder.for_backbone`]
tries. The decoder knows nothing of reward models: it reads the backbone and the backbone's own configuration, and
whoever builds it says how deep it runs ([`PrefixRewardModel.head_depth`] for a reward model's head).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .buffer import KVBuffer


@dataclass(frozen=True)
class Depth:
    """How deep into a backbone an [`IncrementalDecoder`] runs, that is which hidden state it returns.

    With `n` the backbone's number of layers, `Depth(i)` for `i < n` is transformers' `hidden_states[i]` (0 would
    be the embeddings, which leave no layer to run); `Depth(n, final_norm=True)` is `last_hidden_state`, which is
    also `hidden_states[n]` unless the backbone's configuration sets `tie_last_hidden_states=False`, and
    `Depth(n)` is the last layer's output before the final norm.

    Args:
        layers (`int`): how many of the backbone's layers run, from the first.
        final_norm (`bool`, *optional*, defaults to `False`): whether the backbone's final norm applies to the
            last layer's output; only with every layer.

    Examples:

    ```python
    >>> from hf_rgtg.incremental import Depth

    >>> Depth(2, final_norm=True)  # a 2-layer backbone's `last_hidden_state`
    Depth(layers=2, final_norm=True)
    >>> Depth(1).final_norm  # `hidden_states[1]`
    False
    ```
    """

    layers: int
    final_norm: bool = False


class IncrementalDecoder(ABC):
    """A decoder backbone run on new tokens on top of a [`KVBuffer`], to a [`Depth`]: up to the hidden state a
    head reads.

    Build one with [`IncrementalDecoder.for_backbone`]; call it with the new tokens, their exact positions and a
    boolean attention mask over the buffer's committed positions and the new tokens.

    Args:
        backbone (`PreTrainedModel`): the transformers base model that runs (`GPT2Model`, `LlamaModel`, ...,
            not the `*ForCausalLM` around it), for example a reward model's `backbone` or a language model's
            `base_model`. Its weights are read, never copied.
        depth ([`Depth`]): how many of its layers run and whether its final norm applies.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel
    >>> from hf_rgtg.incremental import IncrementalDecoder, KVBuffer

    >>> config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    >>> rm = PrefixRewardModel(PrefixRewardConfig(text_config=config)).eval()
    >>> prompt = torch.tensor([[5, 6, 7]])
    >>> with torch.no_grad():
    ...     out = rm(prompt, use_cache=True)
    >>> decoder = IncrementalDecoder.for_backbone(rm.backbone, rm.head_depth)
    >>> buffer = KVBuffer.from_cache(out.cache, decoder.num_layers)
    >>> # Two candidates for the next token, as siblings: each sees the prompt and itself, both at position 3.
    >>> mask = torch.tensor([[[[True, True, True, True, False], [True, True, True, False, True]]]])
    >>> hidden = decoder(torch.tensor([[8, 9]]), torch.tensor([[3, 3]]), mask, buffer)
    >>> rewards = rm.score(hidden).squeeze(-1)
    >>> with torch.no_grad():
    ...     expected = rm(torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]])).reward
    >>> torch.allclose(rewards[0], expected, atol=1e-5)
    True
    >>> buffer.keep_one(torch.tensor([1]))  # keep the second candidate
    >>> buffer.length
    4
    ```
    """

    #: The `model_type`s a subclass runs.
    model_types: tuple[str, ...] = ()
    #: `(kv_heads, head_dim)` of the keys and values each layer keeps.
    kv_shape: tuple[int, int]
    #: The families [`IncrementalDecoder.for_backbone`] tries, in the order they were defined: every subclass that
    #: names its own `model_types`.
    families: ClassVar[list[type[IncrementalDecoder]]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "model_types" in cls.__dict__:
            IncrementalDecoder.families.append(cls)

    def __init__(self, backbone: nn.Module, depth: Depth):
        self.backbone = backbone
        self.config = backbone.config
        self.layers = self.layer_modules(backbone)
        total = len(self.layers)
        if not 0 <= depth.layers <= total or (depth.final_norm and depth.layers != total):
            raise ValueError(
                f"{depth} does not fit a backbone of {total} layers: run 0 to {total} of them, and apply the final "
                "norm only after all of them."
            )
        self.depth = depth
        self.num_layers, self.final_norm = depth.layers, depth.final_norm

    @classmethod
    def for_backbone(cls, backbone: nn.Module, depth: Depth) -> IncrementalDecoder | None:
        """The decoder that runs `backbone` to `depth`, or `None` when no family covers its architecture or
        `depth` runs no layer."""
        model_type = backbone.config.model_type
        for family in IncrementalDecoder.families:
            if model_type in family.model_types and family.supports(backbone):
                # A head on the embeddings (`Depth(0)`) leaves no layer, and no cache, to run.
                return family(backbone, depth) if depth.layers else None
        return None

    @classmethod
    def supports(cls, backbone: nn.Module) -> bool:
        return True

    @staticmethod
    @abstractmethod
    def layer_modules(backbone: nn.Module) -> nn.ModuleList: ...

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def layer(
        self,
        index: int,
        hidden: torch.Tensor,
        position_state: object,
        mask: torch.Tensor,
        buffer: KVBuffer,
    ) -> torch.Tensor: ...

    def position_state(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> object:
        """Per-call data every layer needs for the positions (rotary tables); `None` by default."""
        return None

    @abstractmethod
    def norm(self, hidden: torch.Tensor) -> torch.Tensor: ...

    @torch.no_grad()
    def __call__(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor, buffer: KVBuffer
    ) -> torch.Tensor:
        """Hidden states `(rows, n, hidden)` the head reads, for `input_ids` `(rows, n)` at `position_ids`.

        `mask` is `(rows, 1, n, buffer.length + n)`, boolean (which committed positions and new tokens each new
        token attends to) or additive in the model's dtype. The new tokens' keys and values are written after the committed positions but not
        committed: call `buffer.commit(n)` or `buffer.keep_one(...)` afterwards.
        """
        mask = _pad_mask(mask, buffer.reserve(input_ids.shape[1]))
        hidden = self.embed(input_ids, position_ids)
        state = self.position_state(hidden, position_ids)
        for index in range(self.num_layers):
            hidden = self.layer(index, hidden, state, mask, buffer)
        return self.norm(hidden) if self.final_norm else hidden


def _pad_mask(mask: torch.Tensor, span: int) -> torch.Tensor:
    """`mask` `(rows, 1, n, end)`, extended to `span` columns that no token attends to."""
    rows, _, n, end = mask.shape
    if end == span:
        return mask
    blocked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    padded = mask.new_full((rows, 1, n, span), blocked)
    padded[..., :end] = mask
    return padded


__all__ = ["Depth", "IncrementalDecoder"]
