"""Decoding caches.

:class:`KVCache` keeps one attention layer's keys and values (already rotated) and their
positions in preallocated buffers that double when full, so appending one token costs a copy
of that token, not of the whole history.
"""

from __future__ import annotations

import torch


class KVCache:
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

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search / HF cache reordering)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            if self.pos.dim() == 2:
                self.pos = self.pos.index_select(0, index)
