"""The key/value buffer of [`IncrementalDecoder`] and its memory policy.

A [`KVBuffer`] holds one preallocated tensor per layer: candidates are written after the committed positions and
the chosen one is kept, without concatenation. How it is allocated is decided here: large CPU buffers are anonymous
memory mappings (`MMAP_MIN_BYTES`), a buffer whose final length is known is reserved for it at once
(`RESERVE_MAX_BYTES`), any other grows by `grown_capacity`, and attention reads it in blocks of `ATTEND_BLOCK`
positions.

The policy's constants are read from this module when they are used: to change one (in a test, say), patch it
here, `hf_rgtg.incremental.buffer.GROWTH`, not the name `hf_rgtg.incremental` re-exports.
"""

from __future__ import annotations

import math
import mmap

import torch
from transformers.cache_utils import Cache

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

    Examples:

    ```python
    >>> import torch
    >>> from hf_rgtg.incremental import KVBuffer

    >>> # Two layers, one row, one key/value head of width 4: room for 3 positions and a growth step.
    >>> buffer = KVBuffer.empty(2, rows=1, kv_heads=1, head_dim=4, needed=3, like=torch.empty(0))
    >>> buffer.length, buffer.capacity
    (0, 67)
    >>> prompt = torch.ones(1, 1, 3, 4)  # (rows, kv_heads, n, head_dim)
    >>> buffer.reserve(3)  # attention reads a whole block of positions, the unwritten ones zeros
    64
    >>> for layer in range(2):
    ...     keys, values = buffer.write(layer, prompt, prompt)
    >>> buffer.commit(3)
    >>> # Two sibling candidates for the next token, written after the prompt; the second one is kept.
    >>> candidates = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1).expand(1, 1, 2, 4)
    >>> _ = buffer.reserve(2)
    >>> for layer in range(2):
    ...     keys, values = buffer.write(layer, candidates, candidates)
    >>> buffer.keep_one(torch.tensor([1]))
    >>> buffer.length, buffer.layers[0][0, 0, 0, 3].tolist()
    (4, [2.0, 2.0, 2.0, 2.0])
    ```
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

    def compact(self, columns: torch.Tensor) -> None:
        """Row `i` keeps its committed positions `columns[i]` `(rows, n)`, in that order, as its first `n`; the
        others are forgotten. Attention reads positions through a mask, and positional information is in the
        keys themselves, so moving a position changes nothing a query sees."""
        rows, count = columns.shape
        for buffer in self.layers:
            two, _, heads, _, dim = buffer.shape
            index = columns.view(1, rows, 1, count, 1).expand(two, rows, heads, count, dim)
            buffer[:, :, :, :count] = buffer[:, :, :, : self.length].gather(3, index)
        self.length = count

    def reorder(self, rows: torch.Tensor) -> None:
        """Row `i` becomes the old row `rows[i]`, written positions included: beam search reorders the rows, and
        `rows` may also hold fewer of them (rows dropped, as when a served request ends)."""
        end = self._end
        for i, old in enumerate(self.layers):
            new = _empty((old.shape[0], len(rows), *old.shape[2:]), old)
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


__all__ = ["ATTEND_BLOCK", "GROWTH", "KVBuffer", "MMAP_MIN_BYTES", "RESERVE_MAX_BYTES", "grown_capacity"]
