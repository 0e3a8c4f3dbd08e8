"""[`GPT2Decoder`]: the incremental decoder of `GPT2Model`, through functional calls on its blocks' weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .decoder import Depth, IncrementalDecoder


class GPT2Decoder(IncrementalDecoder):
    """[`IncrementalDecoder`] for `GPT2Model`.

    A GPT-2 step is a dozen small operations per layer, so on small models the cost of calling modules shows. This
    decoder reads the weights of the blocks' `Conv1D` and `LayerNorm` modules and calls the functional operations
    directly. Blocks whose modules were replaced (adapters, quantised layers) are not covered, and
    [`IncrementalDecoder.for_backbone`] returns `None` for them.

    Examples:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config, GPT2Model
    >>> from hf_rgtg.incremental import Depth, GPT2Decoder, IncrementalDecoder, KVBuffer

    >>> config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    >>> backbone = GPT2Model(config).eval()
    >>> decoder = IncrementalDecoder.for_backbone(backbone, Depth(1))  # the first block's output
    >>> isinstance(decoder, GPT2Decoder)
    True
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> buffer = KVBuffer.empty(decoder.num_layers, 1, *decoder.kv_shape, 3, like=backbone.wte.weight)
    >>> causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None]
    >>> hidden = decoder(ids, torch.arange(3)[None], causal, buffer)
    >>> with torch.no_grad():
    ...     expected = backbone(ids, output_hidden_states=True).hidden_states[1]
    >>> torch.allclose(hidden, expected, atol=1e-5)
    True
    ```
    """

    model_types = ("gpt2",)

    @classmethod
    def supports(cls, backbone: nn.Module) -> bool:
        if getattr(backbone.config, "add_cross_attention", False):
            return False
        for block in backbone.h:
            linears = (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
            norms = (block.ln_1, block.ln_2)
            if any(type(m) is not Conv1D for m in linears) or any(type(m) is not nn.LayerNorm for m in norms):
                return False
        return True

    # Activations that are exactly `gelu(x, approximate="tanh")`, written in transformers as several elementwise
    # operations; one fused call is much cheaper on the small tensors of a decoding step.
    TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")

    def __init__(self, backbone: nn.Module, depth: Depth):
        super().__init__(backbone, depth)
        self.heads = self.config.num_attention_heads
        self.kv_shape = (self.heads, self.layers[0].attn.head_dim)
        self.tanh_gelu = self.config.activation_function in self.TANH_GELU
        self.scales = []
        for block in self.layers:
            attn = block.attn
            scale = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
            if attn.scale_attn_by_inverse_layer_idx:
                scale /= float(attn.layer_idx + 1)
            self.scales.append(scale)

    @staticmethod
    def layer_modules(backbone: nn.Module) -> nn.ModuleList:
        return backbone.h

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.wte(input_ids) + self.backbone.wpe(position_ids)

    def layer(self, index, hidden, position_state, mask, buffer):
        block = self.layers[index]
        attn, mlp = block.attn, block.mlp
        rows, n, width = hidden.shape
        flat = hidden.reshape(rows * n, width)
        # (rows, n, 3, heads, head_dim): queries, keys and values of every head.
        qkv = torch.addmm(attn.c_attn.bias, _layer_norm(block.ln_1, flat), attn.c_attn.weight).view(
            rows, n, 3, self.heads, -1
        )
        keys, values = buffer.write_pair(index, qkv[:, :, 1:].permute(2, 0, 3, 1, 4))
        out = F.scaled_dot_product_attention(
            qkv[:, :, 0].transpose(1, 2), keys, values, attn_mask=mask, scale=self.scales[index]
        )
        flat = flat + torch.addmm(
            attn.c_proj.bias, out.transpose(1, 2).reshape(rows * n, width), attn.c_proj.weight
        )
        inner = torch.addmm(mlp.c_fc.bias, _layer_norm(block.ln_2, flat), mlp.c_fc.weight)
        inner = F.gelu(inner, approximate="tanh") if self.tanh_gelu else mlp.act(inner)
        flat = flat + torch.addmm(mlp.c_proj.bias, inner, mlp.c_proj.weight)
        return flat.view(rows, n, width)

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.ln_f(hidden)


def _layer_norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


__all__ = ["GPT2Decoder"]
