"""Causal sliding-window ("local") attention in O(T·w), with global heads and global tokens.

With window w and g global tokens, the query at position i sees the key at position j iff

    0 ≤ i − j < w                      (its w most recent keys, itself included), or
    j < g  and  j ≤ i                  (the first g positions, visible to every later query),

and y_i = Σ_j softmax_j(q_i·k_j/√d + b(i, j))·v_j over those keys. Local attention follows the
sliding window of Longformer (Beltagy et al., 2020) and Mistral 7B (Jiang et al., 2023); the
global tokens are Longformer's global attention in its causal form (earlier positions only);
global *heads* (the last ``global_heads`` heads attend to every earlier key) mix local and full
heads in one layer. Per-layer patterns (local, local, global) come from layer overrides.

The kernel (:func:`~archlab.nn.kernels.sliding_window.sliding_window_attention`, O(T·w) memory
and time) lives in :mod:`archlab.nn.kernels.sliding_window`, shared with the hierarchical streams.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from archlab.nn.cache import KVCache, WindowedKVCache
from archlab.nn.kernels.sliding_window import default_block, sliding_window_attention, window_allowed
from archlab.nn.mixers.attention import Attention, explicit_attention

__all__ = ["LocalAttention"]

_NEG = float("-inf")


# ----------------------------------------------------------------------------- the mixer


def _contiguous_past(q_pos: torch.Tensor, k_pos: torch.Tensor) -> int | None:
    """Number of keys before the queries when positions are shared (1-D), consecutive and the
    last Tq keys are the queries' own positions; None otherwise."""
    if q_pos.dim() != 1 or k_pos.dim() != 1:
        return None
    Tq, Tk = q_pos.numel(), k_pos.numel()
    start = int(k_pos[0])
    if not torch.equal(k_pos, torch.arange(start, start + Tk, device=k_pos.device)):
        return None
    return Tk - Tq if torch.equal(q_pos, k_pos[Tk - Tq:]) else None


def _head_slice(bias: torch.Tensor, lo: int, hi: int, heads: int) -> torch.Tensor:
    """Heads lo … hi − 1 of a bias broadcastable to (…, heads, Tq, Tk)."""
    if bias.dim() >= 3 and bias.shape[-3] == heads:
        return bias[..., lo:hi, :, :]
    return bias


class LocalAttention(Attention):
    """Causal sliding-window attention (module docstring), optionally with global heads/tokens.

    ``window`` is read on every forward, so :meth:`set_window` takes effect at the next call
    (a learning-dynamics controller adapts it while training). The last ``global_heads`` heads
    attend to every earlier key (full causal attention). Decoding keeps a
    :class:`WindowedKVCache` (the last window − 1 keys plus the ``global_tokens`` first ones)
    when there are no global heads, and a full :class:`KVCache` when there are: those heads
    need every key. The window may shrink while a windowed cache is in use, not grow.

    Paths: fresh (or chunked, with the cache's keys contiguous in position) sequences longer
    than the window go through :func:`sliding_window_attention`, with the bias of relative
    schemes (ALiBi, T5, …) computed for the band; everything else — decoding steps, padding
    masks, per-row positions, schemes that need the scores (CoPE), other biases — through one
    masked attention over the keys at hand, which is exact and, with the windowed cache, small.
    ``block`` overrides the kernel's query block size(s) (see :func:`default_block`).
    """

    def __init__(self, *, window: int, global_heads: int = 0, global_tokens: int = 0, block: int | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.causal:
            raise ValueError("local attention is causal (its window looks back only)")
        if not 0 <= global_heads <= self.heads:
            raise ValueError(f"global_heads must be in [0, heads={self.heads}], got {global_heads}")
        if global_tokens < 0:
            raise ValueError(f"global_tokens must be ≥ 0, got {global_tokens}")
        self.global_heads, self.global_tokens, self.block = global_heads, global_tokens, block
        self._slots: WindowedKVCache | None = None  # set during forward (see there)
        self.set_window(window)

    def set_window(self, window: int) -> None:
        if int(window) != window or window < 1:
            raise ValueError(f"window must be an integer ≥ 1, got {window}")
        self.window = int(window)

    def extra_repr(self) -> str:
        return f"window={self.window}, global_heads={self.global_heads}, global_tokens={self.global_tokens}"

    def init_cache(self) -> KVCache | WindowedKVCache:
        if self.global_heads:
            return KVCache()
        return WindowedKVCache(self.window, keep_first=self.global_tokens)

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache=None,
                mask: torch.Tensor | None = None, stream=None) -> torch.Tensor:
        windowed = isinstance(cache, WindowedKVCache)
        if windowed and cache.window < self.window:
            raise RuntimeError(f"the window grew to {self.window} after this cache was made for "
                               f"{cache.window}; start a new cache")
        # Attention.forward projects, rotates, updates the cache and calls attend(); a padding
        # mask covers every slot, so attend() needs the slots the windowed cache returned.
        self._slots = cache if windowed and mask is not None else None
        try:
            return super().forward(x, positions=positions, cache=cache, mask=mask, stream=stream)
        finally:
            self._slots = None

    def attend(self, q, k, v, q_pos, k_pos, *, mask=None, fresh=True):
        """Local heads 0 … H − global_heads − 1, global heads after; returns (B, H, Tq, D)."""
        w, H, gh = self.window, self.heads, self.global_heads
        if mask is not None and self._slots is not None:
            mask = mask[:, self._slots.index]
        span = int(q_pos.max()) - int(k_pos.min())
        if gh == H or span < w:  # no key is out of any window: full causal attention
            return super().attend(q, k, v, q_pos, k_pos, mask=mask, fresh=fresh)
        pos = self.position
        past = _contiguous_past(q_pos, k_pos) if mask is None and not pos.needs_scores and self.fused else None
        if (past is None or q.shape[2] <= w or (pos.uses_bias and not pos.relative_bias)
                or (self.global_tokens and int(k_pos[0]) != 0)):
            return self._masked(q, k, v, q_pos, k_pos, mask)
        p = self.dropout if self.training else 0.0
        hl = H - gh
        (ql, kl, vl), (qg, kg, vg) = self._split(q, k, v)
        bias_fn = None
        if pos.uses_bias:
            def bias_fn(qp, kp):
                return _head_slice(pos.bias(q, k, qp, kp), 0, hl, H)
        y = sliding_window_attention(ql, kl, vl, window=w, global_tokens=self.global_tokens, bias_fn=bias_fn,
                                     dropout_p=p, block=self.block)
        if not gh:
            return y
        gqa = kg.shape[1] != qg.shape[1]
        if not pos.uses_bias and past == 0:
            yg = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=p, is_causal=True, enable_gqa=gqa)
        else:
            allowed = (q_pos[:, None] >= k_pos[None, :])
            attn = allowed
            if pos.uses_bias:
                attn = _head_slice(pos.bias(q, k, q_pos, k_pos), hl, H, H).to(q.dtype).masked_fill(~allowed, _NEG)
            yg = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=attn, dropout_p=p, enable_gqa=gqa)
        return torch.cat([y, yg], dim=1)

    def _split(self, q, k, v):
        """(local heads, global heads) of q, k, v; key/value heads are shared across the split
        only when it cuts a GQA group, in which case they are expanded to one per query head."""
        hl, H = self.heads - self.global_heads, self.heads
        if not self.global_heads:
            return (q, k, v), (None, None, None)
        rep = H // self.kv_heads
        if hl % rep:
            k, v, rep = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), 1
        c = hl // rep
        return (q[:, :hl], k[:, :c], v[:, :c]), (q[:, hl:], k[:, c:], v[:, c:])

    def _masked(self, q, k, v, q_pos, k_pos, mask):
        """Exact masked attention over the keys at hand, every head with its own key set."""
        H, gh, hl = self.heads, self.global_heads, self.heads - self.global_heads
        local = window_allowed(q_pos, k_pos, window=self.window, global_tokens=self.global_tokens).unsqueeze(-3)
        if gh:
            full = (q_pos.unsqueeze(-1) >= k_pos.unsqueeze(-2)).unsqueeze(-3)
            local = torch.cat([local.expand(*local.shape[:-3], hl, -1, -1),
                               full.expand(*full.shape[:-3], gh, -1, -1)], dim=-3)
        allowed = local if mask is None else local & mask.bool()[:, None, None, :]
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # padding queries: finite, ignored
        pos = self.position
        p = self.dropout if self.training else 0.0
        if pos.needs_scores or not self.fused:
            if self.kv_heads != H:
                rep = H // self.kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            return explicit_attention(pos, q, k, v, q_pos, k_pos, allowed=allowed,
                                      scale=1.0 / math.sqrt(self.head_dim), p=p)
        attn = allowed
        if pos.uses_bias:
            attn = pos.bias(q, k, q_pos, k_pos).to(q.dtype).masked_fill(~allowed, _NEG)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn, dropout_p=p,
                                              enable_gqa=self.kv_heads != H)
