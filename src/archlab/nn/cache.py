"""Decoding caches.

:class:`KVCache` keeps one attention layer's keys and values (already rotated) and their
positions in preallocated buffers that double when full, so appending one token costs a copy
of that token, not of the whole history. With ``window`` set it keeps only the last
``window`` keys (local attention), as a ring buffer: memory stays O(window).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, window: int | None = None) -> None:
        self.window = window
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
        """Append new keys/values (B, H, T, D) at positions (T,) or (B, T); return everything
        attendable: all of it, or for a windowed cache the last ``window`` plus the new ones."""
        T = k.shape[2]
        if self.window is not None:
            return self._update_window(k, v, pos)
        need = self.length + T
        if self.k is None or need > self.k.shape[2]:
            self._grow(k, v, pos, need)
        self.k[:, :, self.length:need] = k
        self.v[:, :, self.length:need] = v
        self.pos[..., self.length:need] = pos
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need], self.pos[..., :need]

    def _update_window(self, k, v, pos):
        # Keep the last `window` entries before this chunk; the chunk itself attends to them
        # plus its own keys (the attention mask limits each query to its own window).
        if self.k is None:
            keys, vals, ps = k, v, pos
        else:
            keys = torch.cat([self.k, k], dim=2)
            vals = torch.cat([self.v, v], dim=2)
            ps = torch.cat([self.pos, pos], dim=-1)
        w = self.window
        self.k, self.v, self.pos = keys[:, :, -w:], vals[:, :, -w:], ps[..., -w:]
        self.length = self.k.shape[2]
        return keys, vals, ps

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search / HF cache reordering)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            if self.pos.dim() == 2:
                self.pos = self.pos.index_select(0, index)
