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
from archlab.nn.mixers.pid import PIDControl
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


def fold_rows(weight: torch.Tensor, bias: torch.Tensor | None, M: torch.Tensor, heads: int):
    """The projection whose per-head outputs are those of (``weight``, ``bias``) times M.

    weight (heads·D, dim), bias (heads·D,) or None, M (G, D, D) with G dividing ``heads`` (head
    h uses M[h // (heads/G)]): (x·W_hᵀ + b_h)·M = x·(MᵀW_h)ᵀ + b_h·M, so W_h ← MᵀW_h and
    b_h ← b_h·M (the bias rides along as one more column)."""
    G, D, _ = M.shape
    Wb = weight if bias is None else torch.cat([weight, bias[:, None]], dim=1)
    Wb = (M.to(Wb.dtype).transpose(-1, -2)[:, None] @ Wb.view(G, heads // G, D, -1)).reshape(heads * D, -1)
    return (Wb, None) if bias is None else (Wb[:, :-1], Wb[:, -1])


def hooked(module: nn.Module) -> bool:
    """Whether forward hooks watch ``module`` (activation capture, probes). PyTorch has no
    public query for this, so the hook dictionaries are read directly; a folded projection
    bypasses the module's call, so attention only folds into modules nobody watches."""
    return bool(module._forward_hooks or module._forward_pre_hooks
                or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)


def fold_worthwhile(x: torch.Tensor) -> bool:
    """Folding a (D, D) matrix per head into a projection of width ``dim`` costs about as much
    as applying it to ``dim`` tokens: worth it once the call has at least that many."""
    return x.shape[0] * x.shape[1] >= x.shape[-1]


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
        persistent: int = 0,
        pid: PIDControl | None = None,
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
        # Persistent memory (Sukhbaatar et al., 2019, "Augmenting Self-attention with Persistent
        # Memory"): ``persistent`` learned key/value vectors per key/value head that every query
        # sees in the same softmax as the context, with no position (no rotation, no bias).
        # PID control across layers (nn/mixers/pid.py); it needs the model's per-call Stream
        self.pid = pid
        self.uses_stream = pid is not None
        self.persistent = int(persistent)
        if self.persistent:
            if position.needs_scores or position.attend is not None:
                raise ValueError("persistent memory slots have no position for a scheme that "
                                 "reads the scores (CoPE) to act on")
            # keys N(0, 1/D) and values N(0, 1/N): logits and outputs of unit scale at the start
            self.memory_k = nn.Parameter(torch.randn(self.kv_heads, self.persistent, hd) / math.sqrt(hd))
            self.memory_v = nn.Parameter(torch.randn(self.kv_heads, self.persistent, hd) / math.sqrt(self.persistent))

    def init_cache(self) -> KVCache:
        return KVCache()

    def pre_rotation(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """The scheme's fixed first rotation when this call should fold it into the projection."""
        pos = self.position
        if not pos.uses_rotate or pos.uses_input or not fold_worthwhile(x) or hooked(self.qkv):
            return None
        return pos.pre_rotation(positions)

    def project(self, x: torch.Tensor, M: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, dim) -> q (B, H, T, D), k and v (B, Hk, T, D); with M (G, D, D), q and k come
        out multiplied by it (folded into the weights: :func:`fold_rows`)."""
        B, T, _ = x.shape
        if M is None:
            qkv = self.qkv(x)
        else:
            W, b = self.qkv.weight, self.qkv.bias
            nq, nk, _ = self.split
            wq, bq = fold_rows(W[:nq], None if b is None else b[:nq], M, self.heads)
            wk, bk = fold_rows(W[nq:nq + nk], None if b is None else b[nq:nq + nk], M, self.kv_heads)
            qkv = F.linear(x, torch.cat([wq, wk, W[nq + nk:]]),
                           None if b is None else torch.cat([bq, bk, b[nq + nk:]]))
        q, k, v = qkv.split(self.split, dim=-1)
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
        stream=None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if self.pid is not None and stream is None:
            raise ValueError("PID attention is controlled across layers: it needs the stream the model's "
                             "blocks carry (archlab.nn.residual.Stream)")
        M = self.pre_rotation(x, positions)
        q, k, v = self.project(x, M)
        pos = self.position
        if pos.uses_rotate:
            if M is not None:
                q, k = pos.rotate_rest(q, k, positions, positions)
            elif pos.uses_input:  # rotation predicted from the hidden state
                q, k = pos.rotate(q, k, positions, positions, x=x)
            else:
                q, k = pos.rotate(q, k, positions, positions)
        fresh = cache is None or len(cache) == 0
        k_pos = positions
        v_new = v
        if cache is not None:
            k, v, k_pos = cache.update(k, v, positions)
        y = self.attend(q, k, v, positions, k_pos, mask=mask, fresh=fresh)
        if self.pid is not None:
            if self.kv_heads != self.heads:
                v_new = v_new.repeat_interleave(self.heads // self.kv_heads, dim=1)
            y = self.pid(y, v_new, stream.state.setdefault("pid", {}))
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def attend(self, q, k, v, q_pos, k_pos, *, mask=None, fresh=True):
        """Attention of q over k/v given explicit positions; returns (B, H, Tq, D)."""
        pos = self.position
        p = self.dropout if self.training else 0.0
        gqa = self.kv_heads != self.heads
        if self.persistent:
            return self._with_memory(q, k, v, q_pos, k_pos, mask=mask, p=p)
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
        if bias is not None and bias.requires_grad:
            return biased_attention(q, k, v, bias, allowed, p=p)
        if bias is None:
            attn_mask = allowed
        else:
            attn_mask = bias.to(q.dtype)
            if allowed is not None:
                attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, enable_gqa=gqa)

    def _with_memory(self, q, k, v, q_pos, k_pos, *, mask, p):
        """One softmax over the persistent slots followed by the context keys: the slots are
        always visible (to every query, whatever the causal or padding mask) and carry no
        positional bias."""
        B, N = q.shape[0], self.persistent
        k = torch.cat([self.memory_k.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([self.memory_v.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        allowed = allowed_mask(q_pos, k_pos, causal=self.causal, key_mask=mask)
        pos = self.position
        bias = pos.bias(q, k[:, :, N:], q_pos, k_pos) if pos.uses_bias else None
        attn_mask = None
        if bias is not None or allowed is not None:
            shape = torch.broadcast_shapes(*(t.shape for t in (bias, allowed) if t is not None))
            attn_mask = q.new_zeros(shape) if bias is None else bias.to(q.dtype).expand(shape)
            if allowed is not None:
                attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
            attn_mask = F.pad(attn_mask, (N, 0))  # the slots: logit bias 0, never masked
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p,
                                              enable_gqa=self.kv_heads != self.heads)

    def _explicit(self, q, k, v, q_pos, k_pos, *, mask, p):
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        allowed = allowed_mask(q_pos, k_pos, causal=self.causal, key_mask=mask)
        return explicit_attention(self.position, q, k, v, q_pos, k_pos, allowed=allowed,
                                  scale=1.0 / math.sqrt(self.head_dim), p=p)


def biased_attention(q, k, v, bias, allowed, *, p: float) -> torch.Tensor:
    """softmax(q·kᵀ/√D + bias, masked to ``allowed``)·v for a bias that is being trained.

    SDPA's fused kernels return no gradient for ``attn_mask``, so a trainable bias sends it to
    its math path, whose safe softmax also scans every row for full masking (``allowed_mask``
    never leaves a row empty). Written out, with the bias as the addend of one batched
    matmul, the same function costs about a third less (forward and backward, tiny Echo's
    encoder shape)."""
    B, H, Tq, D = q.shape
    if k.shape[1] != H:
        k, v = k.repeat_interleave(H // k.shape[1], dim=1), v.repeat_interleave(H // v.shape[1], dim=1)
    Tk = k.shape[2]
    bias = bias.to(q.dtype)
    if allowed is not None:
        bias = bias.masked_fill(~allowed, float("-inf"))
    scores = torch.baddbmm(bias.expand(B, H, Tq, Tk).reshape(B * H, Tq, Tk), q.reshape(B * H, Tq, D),
                           k.reshape(B * H, Tk, D).transpose(1, 2), alpha=1.0 / math.sqrt(D))
    weights = F.dropout(scores.softmax(dim=-1), p=p, training=p > 0)
    return torch.bmm(weights, v.reshape(B * H, Tk, D)).view(B, H, Tq, D)


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
