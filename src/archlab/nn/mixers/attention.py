"""Multi-head (optionally grouped-query) attention with pluggable positional schemes.

softmax(q·kᵀ/√d + bias + mask)·v on ``F.scaled_dot_product_attention``. The fused
``is_causal`` path is taken whenever nothing else needs to be added to the logits; a bias
scheme or a padding mask adds one additive float mask; a scheme that needs the raw scores
(CoPE) gets an explicit path, which ``fused = False`` selects for every call (the reference
path kernels are checked against; the same result).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.cache import KVCache
from archlab.nn.positional.base import PositionalScheme


def allowed_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, *, causal: bool, key_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """Boolean (…, 1 or H, Tq, Tk) mask of which keys each query may see (None: all).

    Causal: key position ≤ query position. ``key_mask`` (B, Tk): False marks padding keys. A query left with no key at all (a padding
    query) is allowed every key, so its (ignored) output stays finite instead of NaN.
    """
    allowed = None
    if causal:
        allowed = (q_pos.unsqueeze(-1) >= k_pos.unsqueeze(-2)).unsqueeze(-3)  # head axis
    if key_mask is not None:
        km = key_mask.bool()[:, None, None, :]
        allowed = km if allowed is None else allowed & km
    if allowed is not None:
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed


class Attention(nn.Module):
    fused: bool = True  # False: scores, mask and softmax computed explicitly, never the fused kernel

    def __init__(
        self,
        *,
        dim: int,
        heads: int,
        position: PositionalScheme,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.kv_heads = kv_heads or heads
        self.head_dim = head_dim or dim // heads
        if heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} must divide heads {heads}")
        self.causal = causal
        self.dropout = dropout
        self.position = position
        hd = self.head_dim
        self.split = (heads * hd, self.kv_heads * hd, self.kv_heads * hd)
        self.qkv = nn.Linear(dim, sum(self.split), bias=bias)
        self.out = nn.Linear(heads * hd, dim, bias=bias)
        self.out.residual_out = True

    def init_cache(self) -> KVCache:
        return KVCache()

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, dim) -> q (B, H, T, D), k and v (B, Hk, T, D)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x)
        pos = self.position
        if pos.uses_rotate:
            if pos.uses_input:  # rotation predicted from the hidden state
                q, k = pos.rotate(q, k, positions, positions, x=x)
            else:
                q, k = pos.rotate(q, k, positions, positions)
        fresh = cache is None or len(cache) == 0
        k_pos = positions
        if cache is not None:
            k, v, k_pos = cache.update(k, v, positions)
        y = self.attend(q, k, v, positions, k_pos, mask=mask, fresh=fresh)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def attend(self, q, k, v, q_pos, k_pos, *, mask=None, fresh=True):
        """Attention of q over k/v given explicit positions; returns (B, H, Tq, D)."""
        pos = self.position
        p = self.dropout if self.training else 0.0
        gqa = self.kv_heads != self.heads
        if pos.needs_scores or not self.fused:
            return self._explicit(q, k, v, q_pos, k_pos, mask=mask, p=p)
        bias = pos.bias(q, k, q_pos, k_pos) if pos.uses_bias else None
        Tq = q.shape[2]
        if bias is None and mask is None:
            if not self.causal:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=p, enable_gqa=gqa)
            if fresh:
                return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, enable_gqa=gqa)
            if Tq == 1:  # one new token attends to every cached (earlier) key
                return F.scaled_dot_product_attention(q, k, v, dropout_p=p, enable_gqa=gqa)
        allowed = allowed_mask(q_pos, k_pos, causal=self.causal, key_mask=mask)
        if bias is None:
            attn_mask = allowed
        else:
            attn_mask = bias.to(q.dtype)
            if allowed is not None:
                attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, enable_gqa=gqa)

    def _explicit(self, q, k, v, q_pos, k_pos, *, mask, p):
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        allowed = allowed_mask(q_pos, k_pos, causal=self.causal, key_mask=mask)
        return explicit_attention(self.position, q, k, v, q_pos, k_pos, allowed=allowed,
                                  scale=1.0 / math.sqrt(self.head_dim), p=p)


def explicit_attention(pos: PositionalScheme, q, k, v, q_pos, k_pos, *, allowed, scale: float, p: float):
    """softmax(q·kᵀ·scale + bias, masked to ``allowed``)·v with the scores materialised (k and v
    with one head per query head), or the scheme's own path where it has one (CoPE)."""
    if pos.attend is not None:
        return pos.attend(q, k, v, q_pos, k_pos, allowed=allowed, scale=scale, dropout_p=p)
    scores = (q @ k.transpose(-1, -2)) * scale
    bias = pos.bias(q, k, q_pos, k_pos, scores=scores, allowed=allowed) if pos.uses_bias else None
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return F.dropout(scores.softmax(dim=-1), p=p, training=p > 0) @ v
