"""[`LlamaFamilyDecoder`]: the incremental decoder of Llama-style backbones (Llama, Mistral, Qwen2 without a
sliding window), through the backbone's own norms, projections, rotary embedding and MLPs."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import Depth, IncrementalDecoder


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`(rows, n, heads * dim)` to `(rows, heads, n, dim)`."""
    rows, n, _ = x.shape
    return x.view(rows, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    rows, heads, n, dim = x.shape
    return x.transpose(1, 2).reshape(rows, n, heads * dim)


class LlamaFamilyDecoder(IncrementalDecoder):
    """[`IncrementalDecoder`] for Llama-style backbones: RMS norms, rotary positions, grouped-query attention, a
    gated MLP (Llama, Mistral and Qwen2 without a sliding window).

    Examples:

    ```python
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaModel
    >>> from hf_rgtg.incremental import Depth, IncrementalDecoder, KVBuffer, LlamaFamilyDecoder

    >>> config = LlamaConfig(
    ...     vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2,
    ... )
    >>> backbone = LlamaModel(config).eval()
    >>> decoder = IncrementalDecoder.for_backbone(backbone, Depth(2, final_norm=True))  # `last_hidden_state`
    >>> isinstance(decoder, LlamaFamilyDecoder)
    True
    >>> buffer = KVBuffer.empty(decoder.num_layers, 1, *decoder.kv_shape, 4, like=backbone.norm.weight)
    >>> # The prompt under a causal mask, then the next token on top of it.
    >>> causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    >>> _ = decoder(torch.tensor([[5, 6, 7]]), torch.arange(3)[None], causal, buffer)
    >>> buffer.commit(3)
    >>> step = decoder(torch.tensor([[8]]), torch.tensor([[3]]), torch.ones(1, 1, 1, 4, dtype=torch.bool), buffer)
    >>> with torch.no_grad():
    ...     expected = backbone(torch.tensor([[5, 6, 7, 8]])).last_hidden_state
    >>> torch.allclose(step[0, -1], expected[0, -1], atol=1e-5)
    True
    ```
    """

    model_types = ("llama", "mistral", "qwen2")

    @classmethod
    def supports(cls, backbone: nn.Module) -> bool:
        config = backbone.config
        if getattr(config, "sliding_window", None) is not None and getattr(
            config, "use_sliding_window", True
        ):
            return False
        attention = backbone.layers[0].self_attn
        plain = all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
        return plain and not hasattr(attention, "q_norm") and hasattr(backbone, "rotary_emb")

    def __init__(self, backbone: nn.Module, depth: Depth):
        super().__init__(backbone, depth)
        attention = self.layers[0].self_attn
        self.heads = self.config.num_attention_heads
        self.kv_heads = getattr(self.config, "num_key_value_heads", None) or self.heads
        self.kv_shape = (self.kv_heads, attention.head_dim)
        self.scale = attention.scaling
        # The rotary helper of the backbone's own modeling file, so any variant of it is followed.
        self.apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb

    @staticmethod
    def layer_modules(backbone: nn.Module) -> nn.ModuleList:
        return backbone.layers

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(input_ids)

    def position_state(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> object:
        return self.backbone.rotary_emb(hidden, position_ids)

    def layer(self, index, hidden, position_state, mask, buffer):
        block = self.layers[index]
        attn = block.self_attn
        x = block.input_layernorm(hidden)
        query = _heads(attn.q_proj(x), self.heads)
        key = _heads(attn.k_proj(x), self.kv_heads)
        cos, sin = position_state
        query, key = self.apply_rotary(query, key, cos, sin)
        keys, values = buffer.write(index, key, _heads(attn.v_proj(x), self.kv_heads))
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=self.kv_heads != self.heads
        )
        hidden = hidden + attn.o_proj(_merge_heads(out))
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.norm(hidden)


__all__ = ["LlamaFamilyDecoder"]
