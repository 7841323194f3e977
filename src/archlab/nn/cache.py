"""Decoding caches.

:class:`KVCache` keeps one attention layer's keys and values (already rotated) and their
positions in preallocated buffers that double when full, so appending one token costs a copy
of that token, not of the whole history.
"""

from __future__ import annotations

import torch


class _RowCache:
    """What the key/value caches share: ``k``, ``v`` (B, H, T, D) and ``pos`` ((T,) or (B, T))."""

    k: torch.Tensor | None
    v: torch.Tensor | None
    pos: torch.Tensor | None

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search / HF cache reordering)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            if self.pos.dim() == 2:
                self.pos = self.pos.index_select(0, index)


class KVCache(_RowCache):
    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.length = 0  # number of valid slots

    def __len__(self) -> int:
        return self.length

    def _grow(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, need: int) -> None:
        cap = max(64, 1 << (need - 1).bit_length())
        B, H, _, D = k.shape
        nk = k.new_empty(B, H, cap, D)
        nv = v.new_empty(B, v.shape[1], cap, v.shape[-1])
        npos = pos.new_empty(*pos.shape[:-1], cap)
        if self.k is not None and self.length:
            nk[:, :, : self.length] = self.k[:, :, : self.length]
            nv[:, :, : self.length] = self.v[:, :, : self.length]
            npos[..., : self.length] = self.pos[..., : self.length]
        self.k, self.v, self.pos = nk, nv, npos

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append new keys/values (B, H, T, D) at positions (T,) or (B, T); return all of them."""
        T = k.shape[2]
        need = self.length + T
        if self.k is None or need > self.k.shape[2]:
            self._grow(k, v, pos, need)
        self.k[:, :, self.length:need] = k
        self.v[:, :, self.length:need] = v
        self.pos[..., self.length:need] = pos
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need], self.pos[..., :need]

class WindowedKVCache(_RowCache):
    """Bounded cache for causal sliding-window attention of ``window`` keys.

    A query at position p sees keys at positions p − window + 1 … p, plus (global tokens) keys
    at positions < ``keep_first``. So after each update only the last ``window − 1`` tokens and
    the tokens at positions < ``keep_first`` are kept: memory stays O(window + keep_first) however
    long the decoding runs. :meth:`update` has :class:`KVCache`'s signature and returns the kept
    old tokens followed by the new ones, which is every key the new queries may need — also
    for chunked prefill (T > 1 new queries after a cache: the first new query still finds its
    window − 1 predecessors); older keys in the result are masked by position downstream.

    "The last window − 1 tokens" is by arrival (slot), which equals "within window − 1
    positions" when each real token's position is one more than the previous one's (plain
    decoding, left padding with positions = cumsum(mask) − 1). :attr:`index` holds the slot
    numbers (0 = first token ever appended) of the tensors the last :meth:`update` returned, so
    a padding mask over all slots can be cut down to them (``mask[:, cache.index]``).
    """

    def __init__(self, window: int, keep_first: int = 0) -> None:
        if window < 1 or keep_first < 0:
            raise ValueError(f"WindowedKVCache needs window ≥ 1 and keep_first ≥ 0, got {window}, {keep_first}")
        self.window, self.keep_first = int(window), int(keep_first)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.slots: torch.Tensor | None = None  # slot numbers of the kept tokens
        self.index: torch.Tensor | None = None  # slot numbers of what the last update returned
        self.length = 0  # tokens appended so far (not the number kept)

    def __len__(self) -> int:
        return self.length

    @property
    def stored(self) -> int:
        """Number of tokens currently held (≤ window − 1 + those at positions < keep_first)."""
        return 0 if self.k is None else self.k.shape[2]

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append keys/values (B, H, T, D) at positions (T,) or (B, T); return the kept old ones
        followed by the new ones (keys, values, positions)."""
        T = k.shape[2]
        slots = torch.arange(self.length, self.length + T, device=k.device)
        if self.k is not None:
            if pos.dim() != self.pos.dim():  # shared (T,) and per-row (B, T) positions mixed
                if pos.dim() == 1:
                    pos = pos.expand(k.shape[0], -1)
                else:
                    self.pos = self.pos.expand(k.shape[0], -1)
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
            pos, slots = torch.cat([self.pos, pos], dim=-1), torch.cat([self.slots, slots])
        self.length += T
        self.index = slots
        n = k.shape[2]
        recent = max(0, n - (self.window - 1))  # first index of the last window − 1 tokens
        if self.keep_first and recent > 0:
            # Keep a token older than the window while any row has it at a position < keep_first.
            early = pos < self.keep_first
            early = early.any(dim=0) if early.dim() == 2 else early
            early[recent:] = True
            keep = early.nonzero().squeeze(-1)
            if keep.numel() == n:
                self.k, self.v, self.pos, self.slots = k, v, pos, slots
            else:  # index_select copies: the cache never pins the whole (possibly long) input
                self.k, self.v = k.index_select(2, keep), v.index_select(2, keep)
                self.pos, self.slots = pos.index_select(-1, keep), slots.index_select(0, keep)
        elif recent > 0:
            # clone: a view would keep a long prompt's storage alive.
            self.k, self.v = k[:, :, recent:].clone(), v[:, :, recent:].clone()
            self.pos, self.slots = pos[..., recent:].clone(), slots[recent:].clone()
        else:
            self.k, self.v, self.pos, self.slots = k, v, pos, slots
        return k, v, pos
