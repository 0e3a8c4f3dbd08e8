"""An inference-only incremental forward of common decoder backbones, on a key/value buffer that grows in place.

Guided decoding scores k candidate tokens on top of a reward model's cache at every step. On small models most of
the time of a transformers forward goes to Python: output capture, mask construction, cache bookkeeping and one
`torch.cat` per layer and step. [`IncrementalDecoder`] runs the same layers with the backbone's own weights (the
Llama family through its norms, projections, rotary embedding and MLPs; GPT-2 through functional calls on its
blocks' weights) and does the attention itself, on a [`KVBuffer`]: one preallocated tensor per layer that
candidates are written into and the chosen one is kept in, without concatenation.

It covers GPT-2 and the Llama family (Llama, Mistral, Qwen2 without sliding windows); for any other backbone
[`IncrementalDecoder.for_backbone`] returns `None` and callers use the transformers forward. A decoder takes a
backbone (a transformers base model) and a [`Depth`], how many of its layers run: a reward model's own backbone up
to its head's layer, or a language model's. Tests compare it with a full re-encoding of every prefix.

The package has one module per part: `buffer` ([`KVBuffer`] and its memory policy), `decoder` (the base class and
[`Depth`]), and one per family of backbones, `gpt2` and `llama`. Importing the package defines every family. The memory
policy's constants re-exported here are copies: to change one, patch it in `hf_rgtg.incremental.buffer`.
"""

from .buffer import ATTEND_BLOCK, GROWTH, MMAP_MIN_BYTES, RESERVE_MAX_BYTES, KVBuffer, grown_capacity
from .decoder import Depth, IncrementalDecoder
from .gpt2 import GPT2Decoder
from .llama import LlamaFamilyDecoder

__all__ = [
    "ATTEND_BLOCK",
    "Depth",
    "GPT2Decoder",
    "GROWTH",
    "IncrementalDecoder",
    "KVBuffer",
    "LlamaFamilyDecoder",
    "MMAP_MIN_BYTES",
    "RESERVE_MAX_BYTES",
    "grown_capacity",
]
