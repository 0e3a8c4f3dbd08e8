"""The base of the incremental decoders: a decoder backbone run on new tokens on top of a [`KVBuffer`].

Each family of backbones has a subclass in its own module ([`GPT2Decoder`] in `gpt2.py`, [`LlamaFamilyDecoder`] in
`llama.py`); a subclass that names its `model_types` is one of the families [`IncrementalDecoder.for_model`] tries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from .buffer import KVBuffer


class IncrementalDecoder(ABC):
    """The backbone of a prefix reward model, run on new tokens on top of a [`KVBuffer`], up to the hidden state
    its head reads.

    Build one with [`IncrementalDecoder.for_model`]; call it with the new tokens, their exact positions and a
    boolean attention mask over the buffer's committed positions and the new tokens.

    Args:
        reward_model ([`PrefixRewardModel`]): the reward model whose backbone runs.

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
    >>> decoder = IncrementalDecoder.for_model(rm)
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
    #: The families [`IncrementalDecoder.for_model`] tries, in the order they were defined: every subclass that
    #: names its own `model_types`.
    families: ClassVar[list[type[IncrementalDecoder]]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "model_types" in cls.__dict__:
            IncrementalDecoder.families.append(cls)

    def __init__(self, reward_model: nn.Module):
        backbone = reward_model.backbone
        self.backbone = backbone
        self.config = reward_model.config.text_config
        self.layers = self.layer_modules(backbone)
        total = len(self.layers)
        head_layer = reward_model.config.head_layer
        if head_layer is None:
            self.num_layers, self.final_norm = total, True
        else:
            index = head_layer % (total + 1)
            # `hidden_states[total]` is the final norm's output unless the config unties it.
            self.num_layers = index
            self.final_norm = index == total and getattr(self.config, "tie_last_hidden_states", True)

    @classmethod
    def for_model(cls, reward_model: nn.Module) -> IncrementalDecoder | None:
        """The decoder for `reward_model`'s backbone, or `None` when its architecture is not covered."""
        model_type = reward_model.config.text_config.model_type
        for subclass in IncrementalDecoder.families:
            if model_type in subclass.model_types and subclass.supports(reward_model.backbone):
                decoder = subclass(reward_model)
                # A head on the embeddings (`head_layer=0`) leaves no layer, and no cache, to run.
                return decoder if decoder.num_layers else None
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


__all__ = ["IncrementalDecoder"]
