"""An inference-only incremental forward of common decoder backbones, on a key/value buffer that grows in place.

Guided decoding scores k candidate tokens on top of a reward model's cache at every step. On small models most of
the time of a transformers forward goes to Python: output capture, mask construction, cache bookkeeping and one
`torch.cat` per layer and step. [`IncrementalDecoder`] runs the same layers with the backbone's own weights (the
Llama family through its norms, projections, rotary embedding and MLPs; GPT-2 through functional calls on its
blocks' weights) and does the attention itself, on a [`KVBuffer`]: one preallocated tensor per layer that
candidates are written into and the chosen one is kept in, without concatenation.

It covers GPT-2 and the Llama family (Llama, Mistral, Qwen2 without sliding windows); for any other backbone
[`IncrementalDecoder.for_model`] returns `None` and callers use the transformers forward. Tests compare it with a
full re-encoding of every prefix.
"""

from __future__ import annotations

import math
import mmap
import sys
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.pytorch_utils import Conv1D

# A buffer grows by a quarter of its length, and by at least this many positions; layer by layer, so a growth step
# briefly holds one extra layer.
GROWTH = 64


def grown_capacity(needed: int) -> int:
    """The capacity a buffer that has to hold `needed` positions grows to."""
    return needed + max(GROWTH, needed // 4)


# Attention reads the buffer up to a multiple of this many positions (see `KVBuffer.span`).
ATTEND_BLOCK = 64
# CPU buffers from this size on are anonymous memory mappings, see `_empty`.
MMAP_MIN_BYTES = 1 << 16
# A mapped buffer is reserved at once for the most positions it can need, when that is known and the whole
# reservation (every layer) stays within this many bytes of address space: its pages are resident only once written.
RESERVE_MAX_BYTES = 4 << 30


def _maps(nbytes: int, like: torch.Tensor) -> bool:
    """Whether `_empty` makes a buffer of `nbytes` bytes like `like` a memory mapping."""
    return like.device.type == "cpu" and nbytes >= MMAP_MIN_BYTES and hasattr(mmap, "MAP_ANONYMOUS")


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `shape` with `like`'s dtype and device.

    A buffer that grows by reallocation frees every previous size, and glibc keeps freed heap blocks resident: a
    buffer grown to its final size would leave several times that size behind. On the CPU, large buffers are
    therefore anonymous memory mappings, which go back to the operating system when the tensor is freed, and whose
    pages take memory only once they are written.
    """
    nbytes = math.prod(shape) * like.element_size()
    if not _maps(nbytes, like):
        return like.new_empty(shape)
    # Private, like any other memory of the process (a forked child does not share it).
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        # Where transparent huge pages are always on, one written position would make 2 MiB resident.
        mapping.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(mapping, dtype=like.dtype).view(shape)


class KVBuffer:
    """Keys and values of every layer of a decoder, for `rows` sequences.

    Layer `i` is one tensor `(2, rows, kv_heads, capacity, head_dim)` (keys, then values). Positions `[0, length)`
    hold the rows' prefixes; positions after them are scratch space for the tokens being scored.

    Args:
        layers (`list[torch.Tensor]`): the per-layer tensors.
        length (`int`): the number of committed positions.
        limit (`int`, *optional*): the most positions the buffer will be asked to hold, if known. A buffer in
            mapped memory (see `_empty`) is then reserved for all of them when it is created or first grows, and
            never copied again; other buffers ignore it.
    """

    def __init__(self, layers: list[torch.Tensor], length: int, limit: int | None = None):
        self.layers = layers
        self.length = length
        self.limit = limit
        self._end = length  # one past the last position written or zero-filled
        self._span = length  # the positions attention reads in the current call, see `span`

    @classmethod
    def from_cache(cls, cache: Cache, num_layers: int, extra: int | None = None) -> KVBuffer:
        """Copy the first `num_layers` layers of a transformers cache into a buffer with `extra` free positions
        (default: as many as a growth step leaves, see `grown_capacity`)."""
        layers = []
        length = 0
        for layer in cache.layers[:num_layers]:
            keys, values = layer.keys, layer.values
            rows, heads, length, dim = keys.shape
            capacity = grown_capacity(length) if extra is None else length + extra
            buffer = _empty((2, rows, heads, capacity, dim), keys)
            buffer[0, :, :, :length] = keys
            buffer[1, :, :, :length] = values
            layers.append(buffer)
        return cls(layers, length)

    @classmethod
    def empty(
        cls,
        num_layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        needed: int,
        like: torch.Tensor,
        limit: int | None = None,
    ) -> KVBuffer:
        """A buffer with no committed position, in `like`'s dtype and device, with room for `needed` positions and
        a growth step more (or for `limit`, see the class)."""
        layers = _allocate(num_layers, (2, rows, kv_heads, 0, head_dim), needed, limit, like)
        return cls(layers, 0, limit)

    @property
    def capacity(self) -> int:
        return self.layers[0].shape[3]

    def reserve(self, positions: int) -> int:
        """Make room for `positions` positions after the committed ones; return how many positions attention
        reads in this call ([`~KVBuffer.span`])."""
        needed = self.length + positions
        if needed > self.capacity:
            old_layers = self.layers
            self.layers = _allocate(len(old_layers), old_layers[0].shape, needed, self.limit, old_layers[0])
            for new, old in zip(self.layers, old_layers, strict=True):
                new[:, :, :, : self.length] = old[:, :, :, : self.length]
            self._end = self.length
        span = self._span = self.span(needed)
        if span > self._end:
            # Zeros where attention reads past anything written. Written, not merely read: a page of a mapping that
            # is read first maps the kernel's zero page, and the first write to it then replaces a present page,
            # which flushes the TLB of every core the process runs on (measured: +0.3 ms per step at batch 1).
            for layer in self.layers:
                layer[:, :, :, self._end : span] = 0
            self._end = span
        return span

    def span(self, end: int) -> int:
        """How many positions attention reads when the last new token sits at `end - 1`: `end` rounded up to a
        multiple of `ATTEND_BLOCK`, within the capacity.

        The positions after `end` are masked out; `reserve` writes zeros to those never written, so that they
        hold finite values (a masked-out NaN would still spread through the attention's weighted sum). A
        read that grows by one position per step makes the attention kernel's scratch space grow by a few bytes
        per step, so the allocator puts it somewhere new each time and the process touches fresh pages every
        step; in blocks, its size changes once every `ATTEND_BLOCK` steps.
        """
        return min(self.capacity, -(-end // ATTEND_BLOCK) * ATTEND_BLOCK)

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `keys`/`values` `(rows, kv_heads, n, head_dim)` after the committed positions (after
        `reserve(n)`); return the views attention reads, up to [`~KVBuffer.span`]."""
        end = self.length + keys.shape[2]
        buffer = self.layers[layer]
        buffer[0, :, :, self.length : end] = keys
        buffer[1, :, :, self.length : end] = values
        return buffer[0, :, :, : self._span], buffer[1, :, :, : self._span]

    def write_pair(self, layer: int, keys_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[`~KVBuffer.write`] with keys and values stacked, `(2, rows, kv_heads, n, head_dim)`: one copy."""
        end = self.length + keys_values.shape[3]
        buffer = self.layers[layer]
        buffer[:, :, :, self.length : end] = keys_values
        return buffer[0, :, :, : self._span], buffer[1, :, :, : self._span]

    def commit(self, count: int) -> None:
        """Keep the `count` positions written last."""
        self.length += count

    def keep_one(self, index: torch.Tensor) -> None:
        """Of the tokens written after the prefix, keep the one at `index[row]` for each row, at position `length`."""
        start = self.length
        if index.numel() == 1:  # one row: a plain copy instead of a gather
            source = start + int(index)
            for buffer in self.layers:
                buffer[:, :, :, start] = buffer[:, :, :, source]
            self.length += 1
            return
        for buffer in self.layers:
            two, rows, heads, _, dim = buffer.shape
            picked = index.view(1, rows, 1, 1, 1).expand(two, rows, heads, 1, dim)
            buffer[:, :, :, start : start + 1] = buffer[:, :, :, start:].gather(3, picked)
        self.length += 1

    def reorder(self, rows: torch.Tensor) -> None:
        """Row `i` becomes the old row `rows[i]` (beam search), written positions included."""
        end = self._end
        for i, old in enumerate(self.layers):
            new = _empty(old.shape, old)
            # Only what was written: the rest of a reserved buffer stays untouched, and takes no memory.
            new[:, :, :, :end] = old[:, :, :, :end].index_select(1, rows)
            self.layers[i] = new


def _allocate(
    num_layers: int, shape: tuple[int, ...], needed: int, limit: int | None, like: torch.Tensor
) -> list[torch.Tensor]:
    """`num_layers` buffers shaped like `shape` (any capacity) with room for `needed` positions: `limit` of them
    where the buffer is mapped memory and the reservation is within `RESERVE_MAX_BYTES`, otherwise a growth step
    (`grown_capacity`). A reservation the system refuses (strict overcommit accounting) falls back to the growth
    step."""
    grown = grown_capacity(needed)
    if limit is not None and limit >= needed:
        per_position = math.prod(shape[:3]) * shape[4] * like.element_size()
        if _maps(per_position * limit, like) and num_layers * per_position * limit <= RESERVE_MAX_BYTES:
            try:
                return [_empty((*shape[:3], limit, shape[4]), like) for _ in range(num_layers)]
            except OSError:
                pass
    return [_empty((*shape[:3], grown, shape[4]), like) for _ in range(num_layers)]


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

    def __init__(self, reward_model: nn.Module):
        backbone = reward_model.backbone
        self.backbone = backbone
        self.config = reward_model.config.text_config
        self.layers = self._layer_modules(backbone)
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
        for subclass in (GPT2Decoder, LlamaFamilyDecoder):
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
    def _layer_modules(backbone: nn.Module) -> nn.ModuleList: ...

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


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """`(rows, n, heads * dim)` to `(rows, heads, n, dim)`."""
    rows, n, _ = x.shape
    return x.view(rows, n, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    rows, heads, n, dim = x.shape
    return x.transpose(1, 2).reshape(rows, n, heads * dim)


class GPT2Decoder(IncrementalDecoder):
    """[`IncrementalDecoder`] for `GPT2Model`.

    A GPT-2 step is a dozen small operations per layer, so on small models the cost of calling modules shows. This
    decoder reads the weights of the blocks' `Conv1D` and `LayerNorm` modules and calls the functional operations
    directly. Blocks whose modules were replaced (adapters, quantised layers) are not covered, and
    [`IncrementalDecoder.for_model`] returns `None` for them.
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

    def __init__(self, reward_model: nn.Module):
        super().__init__(reward_model)
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
    def _layer_modules(backbone: nn.Module) -> nn.ModuleList:
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


class LlamaFamilyDecoder(IncrementalDecoder):
    """[`IncrementalDecoder`] for Llama-style backbones: RMS norms, rotary positions, grouped-query attention, a
    gated MLP (Llama, Mistral and Qwen2 without a sliding window)."""

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

    def __init__(self, reward_model: nn.Module):
        super().__init__(reward_model)
        attention = self.layers[0].self_attn
        self.heads = self.config.num_attention_heads
        self.kv_heads = getattr(self.config, "num_key_value_heads", None) or self.heads
        self.kv_shape = (self.kv_heads, attention.head_dim)
        self.scale = attention.scaling
        # The rotary helper of the backbone's own modeling file, so any variant of it is followed.
        self.apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb

    @staticmethod
    def _layer_modules(backbone: nn.Module) -> nn.ModuleList:
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


__all__ = ["GPT2Decoder", "IncrementalDecoder", "KVBuffer", "LlamaFamilyDecoder"]
