"""Pieces of a hierarchical transformer's streams: token shift, the per-stream block (a token
mixer from the mixer registry, applied axially, with its decoding state) and the merge of all
streams into one.

A stream of compression factor c and stride s holds one token per s fine positions, each
summarising c of them. Consecutive tokens overlap when s < c, so attention runs *axially*:
the a = c/s interleaved sub-sequences (token indices ≡ r mod a) attend separately, and each
sees non-overlapping summaries of the whole past (the axial trick of lucidrains'
simple-hierarchical-transformer; cost O(T²/c) instead of O(T²)). Token shift (Peng et al.,
2023, RWKV) mixes half of the channels from the previous token of the same sub-sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.compress import expand_to_fine


def token_shift(h: torch.Tensor, prev: torch.Tensor | None, lag: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the upper half of the channels of position t by those of position t − lag
    (zeros before the start). ``prev`` (B, lag, d − d//2): the upper halves of the ``lag``
    positions before ``h`` (``None``: the start). Returns (shifted h, the new ``prev``)."""
    half = h.shape[-1] // 2
    keep, move = h[..., :half], h[..., half:]
    if prev is None:
        prev = move.new_zeros(move.shape[0], lag, move.shape[-1])
    full = torch.cat([prev, move], dim=1)
    return torch.cat([keep, full[:, : h.shape[1]]], dim=-1), full[:, -lag:]


@dataclass
class StreamState:
    """Decoding state of one stream block: one mixer cache per axial sub-sequence, and the
    token-shift memories of the attention and feed-forward inputs."""

    kv: list
    shift: list = field(default_factory=lambda: [None, None])


class StreamBlock(nn.Module):
    """x ← x + Attn(shift(N₁x)); x ← x + FFN(shift(N₂x)). ``attn``: a token mixer
    (:class:`~archlab.nn.mixers.base.TokenMixer`; ``None``, window 0: no attention sub-layer).
    ``axial`` = c/s sub-sequences attend separately (see module doc)."""

    def __init__(self, *, dim: int, attn: nn.Module | None, ffn: nn.Module,
                 norm: Callable[[int], nn.Module], axial: int, shift: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn, self.ffn = attn, ffn
        self.norm1 = norm(dim) if attn is not None else None
        self.norm2 = norm(dim)
        self.axial, self.shift = axial, shift
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_state(self) -> StreamState:
        return StreamState(kv=[self.attn.init_cache() for _ in range(self.axial)] if self.attn is not None else [])

    def forward(self, x: torch.Tensor, *, n0: int = 0, state: StreamState | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n, d): stream tokens n0 … n0+n−1. Without ``state`` the whole stream (n0 = 0);
        ``positions`` then optionally gives the axial positions 0 … ⌈n/a⌉−1 (shared by layers)."""
        if self.attn is not None:
            h = self.norm1(x)
            if self.shift:
                h, tail = token_shift(h, state.shift[0] if state is not None else None, self.axial)
                if state is not None:
                    state.shift[0] = tail
            x = x + self.drop(self._attend(h, n0, state, positions))
        h = self.norm2(x)
        if self.shift:
            h, tail = token_shift(h, state.shift[1] if state is not None else None, self.axial)
            if state is not None:
                state.shift[1] = tail
        return x + self.drop(self.ffn(h))

    def _attend(self, h: torch.Tensor, n0: int, state: StreamState | None, positions: torch.Tensor | None):
        B, n, d = h.shape
        a = self.axial
        if state is None:
            L = -(-n // a)
            if positions is None:
                positions = torch.arange(L, device=h.device)
            if a == 1:
                return self.attn(h, positions=positions)
            # (B, L·a, d) -> (B·a, L, d): row r of batch b is sub-sequence r (indices ≡ r mod a)
            hp = F.pad(h, (0, 0, 0, L * a - n)).view(B, L, a, d).transpose(1, 2).reshape(B * a, L, d)
            y = self.attn(hp, positions=positions)
            return y.view(B, a, L, -1).transpose(1, 2).reshape(B, L * a, -1)[:, :n]
        y = torch.empty_like(h)
        for r in range(a):
            first = n0 + (r - n0) % a  # the first new index in sub-sequence r
            if first >= n0 + n:
                continue
            rows = h[:, first - n0::a]
            start = first // a
            pos = torch.arange(start, start + rows.shape[1], device=h.device)
            y[:, first - n0::a] = self.attn(rows, positions=pos, cache=state.kv[r])
        return y


class HierarchyMerge(nn.Module):
    """pooled_i = W_o · SiLU(Σ_h W_h · N_h(z_h[⌊i/s_h⌋])) for every fine position i.

    The per-stream projections run at each stream's own resolution and are then repeated onto
    the fine positions (a stream token is used only from its end position on), which equals
    one projection of the concatenation of all repeated streams at a fraction of the cost.
    """

    def __init__(self, *, dims: list[int], strides: list[int], dim_out: int, hidden: int,
                 norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.strides = list(strides)
        self.norms = nn.ModuleList(norm(d) for d in dims)
        self.ups = nn.ModuleList(nn.Linear(d, hidden, bias=False) for d in dims)
        self.out = nn.Linear(hidden, dim_out, bias=False)
        self.out.residual_out = True

    def forward(self, zs: list[torch.Tensor], *, i0: int, n: int, j0s: list[int],
                lasts: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, list]:
        """zs[h] (B, m_h, d_h): stream h's new tokens j0s[h] …; ``lasts[h]`` the projection of
        its token j0s[h] − 1 (decoding). Returns pooled (B, n, dim_out) and the new lasts."""
        acc, new_lasts = None, []
        for h, z in enumerate(zs):
            u = self.ups[h](self.norms[h](z))
            last = lasts[h] if lasts is not None else None
            new_lasts.append(u[:, -1:] if u.shape[1] else last)
            e = expand_to_fine(u, stride=self.strides[h], i0=i0, n=n, j0=j0s[h], last=last)
            acc = e if acc is None else acc + e
        return self.out(F.silu(acc)), new_lasts
