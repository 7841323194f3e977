"""Pieces of a hierarchical transformer's streams: attention with an explicit and a fused
path, token shift, the per-stream block (with axial grouping and its decoding state) and the
merge of all streams into one.

A stream of compression factor c and stride s holds one token per s fine positions, each
summarising c of them. Consecutive tokens overlap when s < c, so attention runs *axially*:
the a = c/s interleaved sub-sequences (token indices ≡ r mod a) attend separately, and each
sees non-overlapping summaries of the whole past (the axial trick of lucidrains'
simple-hierarchical-transformer; cost O(T²/c) instead of O(T²)). Token shift (Peng et al.,
2023, RWKV) mixes half of the channels from the previous token of the same sub-sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.cache import KVCache, WindowedKVCache
from archlab.nn.compress import expand_to_fine
from archlab.nn.positional.rope import RotaryEmbedding

from archlab.nn.kernels.sliding_window import sliding_window_attention


def attention_cache(window: int | None) -> KVCache | WindowedKVCache:
    """A KV cache for full (``None``) or local attention of ``window`` keys (bounded)."""
    return KVCache() if window is None else WindowedKVCache(window)


def allowed_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool (Tq, Tk): key j visible to query i iff 0 ≤ i − j (< window, when local)."""
    d = q_pos[:, None] - k_pos[None, :]
    ok = d >= 0
    return ok & (d < window) if window is not None else ok


class StreamAttention(nn.Module):
    """softmax(q·kᵀ/√d + mask)·v over one stream, with RoPE on explicit positions.

    ``flash=True`` uses ``F.scaled_dot_product_attention`` (the fused kernel; the causal flag
    when nothing else needs masking, a boolean mask otherwise, the blockwise sliding-window
    kernel for local attention); ``flash=False`` computes the scores, masks them
    and applies softmax explicitly. Both give the same result (tested).
    """

    def __init__(self, *, dim: int, heads: int, dim_head: int, window: int | None, flash: bool,
                 rotary: RotaryEmbedding | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dim_head, self.window, self.flash = heads, dim_head, window, flash
        self.rotary = rotary
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim, bias=False)
        self.out.residual_out = True

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache=None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rotary is not None:
            q, k = self.rotary.rotate(q, k, positions, positions)
        fresh = cache is None or len(cache) == 0  # then positions are 0 … T−1
        k_pos = positions
        if cache is not None:
            k, v, k_pos = cache.update(k, v, positions)
        y = self.attend(q, k, v, positions, k_pos, fresh=fresh)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def attend(self, q, k, v, q_pos, k_pos, *, fresh: bool) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        w = self.window
        if w is not None and fresh and q.shape[2] <= w:
            w = None  # the window covers the whole sequence: plain causal attention, same result
        if not self.flash:
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dim_head))
            scores = scores.masked_fill(~allowed_keys(q_pos, k_pos, w), float("-inf"))
            return F.dropout(scores.softmax(dim=-1), p=p, training=p > 0) @ v
        if w is None:
            if fresh:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            if q.shape[2] == 1:  # one new token sees every cached (earlier) key
                return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        elif fresh:  # blockwise O(T·w), never a T×T matrix
            return sliding_window_attention(q, k, v, window=w, dropout_p=p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_keys(q_pos, k_pos, w), dropout_p=p)


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
    """Decoding state of one stream block: one KV cache per axial sub-sequence, and the
    token-shift memories of the attention and feed-forward inputs."""

    kv: list
    shift: list = field(default_factory=lambda: [None, None])


class StreamBlock(nn.Module):
    """x ← x + Attn(shift(N₁x)); x ← x + FFN(shift(N₂x)). ``attn=None`` (window 0): no
    attention sub-layer. ``axial`` = c/s sub-sequences attend separately (see module doc)."""

    def __init__(self, *, dim: int, attn: StreamAttention | None, ffn: nn.Module,
                 norm: Callable[[int], nn.Module], axial: int, shift: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn, self.ffn = attn, ffn
        self.norm1 = norm(dim) if attn is not None else None
        self.norm2 = norm(dim)
        self.axial, self.shift = axial, shift
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_state(self) -> StreamState:
        w = self.attn.window if self.attn is not None else None
        return StreamState(kv=[attention_cache(w) for _ in range(self.axial)])

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
