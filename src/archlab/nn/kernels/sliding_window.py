"""Sliding-window attention kernels: each query i sees the keys j with 0 ≤ i − j < w (plus the
first g positions, global tokens), without forming a T×T matrix.

:func:`sliding_window_attention` never forms a T×T matrix. Queries are cut into blocks of b;
block n attends to a band of L = P + b keys (P = ⌈(w−1)/b⌉·b) starting P positions before
it, taken as an overlapping strided *view* of the (front-padded) keys — no gather copy — and
one fixed (b, L) mask selects 0 ≤ i − j < w. On CPU the band goes through PyTorch's fused
flash-attention kernel; the backward pass calls its backward kernel and folds the band
gradients back onto the keys (custom autograd). Global tokens are a second, small flash call
whose result is merged by log-sum-exp (as in blockwise/ring attention: the backward of each
part uses the merged output and log-sum-exp, which gives exact gradients). Trainable biases,
dropout and other devices take an explicit blockwise path of the same cost order.
:func:`masked_window_attention` is the plain masked T×T reference.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

BiasFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_NEG = float("-inf")


def window_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, *, window: int, global_tokens: int = 0) -> torch.Tensor:
    """Bool (Tq, Tk) or (B, Tq, Tk): key j visible to query i (the rule in the module docstring)."""
    d = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)
    ok = (d >= 0) & (d < window)
    if global_tokens > 0:
        ok = ok | ((d >= 0) & (k_pos.unsqueeze(-2) < global_tokens))
    return ok


def masked_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, global_tokens: int = 0,
    bias_fn: BiasFn | None = None, dropout_p: float = 0.0, q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: full attention with the window mask, O(Tq·Tk). q (B, H, Tq, D), k/v (B, Hk, Tk, D).

    Positions default to keys 0..Tk−1 and queries at the last Tq of them. ``key_mask`` (B, Tk):
    False marks padding. ``bias_fn(q_pos, k_pos)`` returns an additive bias broadcastable to
    (B, H, Tq, Tk). A query with no visible key (padding) sees every key, so it stays finite.
    """
    Tq, Tk = q.shape[2], k.shape[2]
    if k_pos is None:
        k_pos = torch.arange(Tk, device=q.device)
    if q_pos is None:
        q_pos = k_pos[..., Tk - Tq:]
    allowed = window_allowed(q_pos, k_pos, window=window, global_tokens=global_tokens).unsqueeze(-3)
    if key_mask is not None:
        allowed = allowed & key_mask.bool()[:, None, None, :]
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    mask = allowed
    if bias_fn is not None:
        mask = bias_fn(q_pos, k_pos).to(q.dtype).masked_fill(~allowed, _NEG)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          enable_gqa=k.shape[1] != q.shape[1])


def default_block(window: int) -> tuple[int, int]:
    """Query block sizes (forward, backward). A band costs (P + b)/w ≥ 1 + b/w times the w keys
    a query needs, so small blocks waste less; the fused forward kernel works in 32-row tiles
    anyway, so its block is 32 (16 for w ≤ 16). The backward kernel accumulates key gradients
    per band, (P + b)/b times the keys, which are then summed back: there b ≈ w/2 (a power of
    two within 32…256) balances waste against that traffic. Measured on CPU at T = 8192,
    w = 64…1024 (docs/local_attention.md)."""
    fwd = 16 if window <= 16 else 32
    bwd = max(32, min(256, 1 << max(0, (window // 2).bit_length() - 1)))
    return fwd, bwd


class _Geom:
    """One blocking: blocks of b queries, each with a band of L = P + b keys starting P keys
    before the block (P = ⌈(w − 1)/b⌉·b). Query i of a block and key j of its band are
    d = i + P − j positions apart; the padded key buffer holds ``plan.P`` ≥ P keys in front,
    so band 0 starts at offset ``plan.P − P`` in it."""

    def __init__(self, plan: _Band, b: int, bias_fn: BiasFn | None) -> None:
        dev, w = plan.device, plan.w
        self.b, self.m = b, -(-(w - 1) // b)
        self.P = self.m * b
        self.L, self.nb, self.off = self.P + b, plan.Tpad // b, plan.P - self.P
        self.n_head = min(self.nb, -(-(self.P - plan.past) // b))  # blocks whose band starts before k
        self.shared, self.valid = _band_masks(w, b, self.P, plan.past, self.nb, dev)
        self.bias = None  # bias_fn is translation invariant: one (H, b, L) table serves every block
        if bias_fn is not None:
            qp, kp = torch.arange(self.P, self.L, device=dev), torch.arange(self.L, device=dev)
            self.bias = _heads_first(bias_fn(qp, kp).to(plan.dtype))

    def parts(self, plan: _Band) -> tuple[tuple[int, int, torch.Tensor], ...]:
        """(first block, end block, additive mask) of the flash calls: head blocks, the rest."""
        if self.bias is None:
            return _flash_parts(plan.w, self.b, self.P, plan.past, self.nb, self.n_head, plan.dtype, plan.device)
        return _parts(self.shared, self.valid, self.n_head, self.nb, lambda a: plan.additive(a, self.bias))

    def band(self, kp: torch.Tensor) -> torch.Tensor:
        """Overlapping view (B·H, nb, L, D) of the padded keys: band n starts b·n later (no copy)."""
        BH, N, D = kp.shape
        return kp.as_strided((BH, self.nb, self.L, D), (N * D, self.b * D, D, 1),
                             kp.storage_offset() + self.off * D)

    def fold(self, dkp: torch.Tensor, grads: list[tuple[int, torch.Tensor]]) -> None:
        """Sum band gradients [(n0, g (B·H, n, L, D)), ...] (together every block) back onto the
        padded keys: sub-block s of band n is key block n + s. The s = 0 terms cover blocks
        < nb once and are written, not added, which saves zero-filling most of the buffer."""
        BH, _, D = dkp.shape
        blocks = dkp[:, self.off:].view(BH, self.m + self.nb, self.b, D)
        blocks[:, self.nb:].zero_()
        grads = [(n0, g.view(BH, g.shape[1], self.m + 1, self.b, D)) for n0, g in grads]
        for n0, g in grads:
            blocks[:, n0: n0 + g.shape[1]] = g[:, :, 0]
        for s in range(1, self.m + 1):
            for n0, g in grads:
                blocks[:, n0 + s: n0 + s + g.shape[1]] += g[:, :, s]


class _Band:
    """Shapes, blockings and masks of one call (everything but the data). ``past`` keys before
    the first query go in front of it (at most w − 1 are needed); queries are padded to Tpad."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, *, window: int, global_tokens: int,
                 blocks: tuple[int, int], bias_fn: BiasFn | None, backward: bool) -> None:
        B, H, Tq, D = q.shape
        Hk, Tk = k.shape[1], k.shape[2]
        self.B, self.H, self.Hk, self.Tq, self.Tk, self.D, self.rep = B, H, Hk, Tq, Tk, D, H // Hk
        self.w, self.dtype, self.device = window, q.dtype, q.device
        self.scale = 1.0 / math.sqrt(D)
        self.past = min(Tk - Tq, window - 1)  # earlier keys that some query can see
        self.kstart = Tk - Tq - self.past  # index in k of the first band key
        bf, bb = (max(1, min(b, 1 << (Tq - 1).bit_length())) for b in blocks)
        if not backward:
            bb = bf
        span = math.lcm(bf, bb)
        self.Tpad = -(-Tq // span) * span
        self.P = max(-(-(window - 1) // b) * b for b in (bf, bb))
        self.fwd = _Geom(self, bf, bias_fn)
        self.bwd = self.fwd if bb == bf else _Geom(self, bb, bias_fn)
        # Global keys j < g beyond the window: for queries at absolute position p ≥ w, keys j ≤ p − w.
        self.i0 = max(0, window - (Tk - Tq))
        self.G = min(global_tokens, Tk) if self.i0 < Tq else 0
        self.g_ok = self.g_bias = None
        if self.G:
            self.g_ok = _global_ok(window, Tq, Tk, self.i0, self.G, q.device)
            if bias_fn is not None:
                pq = torch.arange(Tk - Tq + self.i0, Tk, device=q.device)
                self.g_bias = _heads_first(bias_fn(pq, torch.arange(self.G, device=q.device)).to(q.dtype))

    def needs_bias_grad(self) -> bool:
        return torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (self.fwd.bias, self.g_bias))

    def additive(self, allowed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """0/−inf mask (+ bias) of shape (1, X, r, c), or (B·H, X, r, c) when the bias has heads."""
        m = _neg_mask(allowed, self.dtype)
        if bias is None:
            return m.unsqueeze(0)
        full = bias.unsqueeze(1) + m.unsqueeze(0)  # (h, X, r, c)
        return full if full.shape[0] == 1 else full.repeat(self.B, 1, 1, 1)

    def global_mask(self) -> torch.Tensor:
        if self.g_bias is None:
            return _global_flash_mask(self.w, self.Tq, self.Tk, self.i0, self.G, self.dtype, self.device)
        return self.additive(self.g_ok[None], self.g_bias)


# Masks depend only on the geometry; caching them spares a dozen small ops per call, which on
# a busy machine with several threads cost more than their arithmetic (thread wake-ups).


@functools.lru_cache(maxsize=64)
def _band_masks(w: int, b: int, P: int, past: int, nb: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """shared (b, L): 0 ≤ d < w with d = i + P − j; valid (nb, 1, L): band key j of block n exists."""
    with torch.inference_mode(False), torch.no_grad():
        i = torch.arange(b, device=device)[:, None]
        j = torch.arange(P + b, device=device)[None, :]
        d = i + P - j
        n = torch.arange(nb, device=device)[:, None, None]
        return (d >= 0) & (d < w), n * b + j - P >= -past


def _neg_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, _NEG)


def _parts(shared, valid, n_head: int, nb: int, additive) -> tuple[tuple[int, int, torch.Tensor], ...]:
    out = []
    if n_head:
        out.append((0, n_head, additive(shared & valid[:n_head])))
    if n_head < nb:
        out.append((n_head, nb, additive(shared[None])))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _flash_parts(w, b, P, past, nb, n_head, dtype, device) -> tuple[tuple[int, int, torch.Tensor], ...]:
    shared, valid = _band_masks(w, b, P, past, nb, device)
    with torch.inference_mode(False), torch.no_grad():
        return _parts(shared, valid, n_head, nb, lambda a: _neg_mask(a, dtype).unsqueeze(0))


@functools.lru_cache(maxsize=64)
def _global_ok(w: int, Tq: int, Tk: int, i0: int, G: int, device: torch.device) -> torch.Tensor:
    """(Tq − i0, G): global key j beyond the window of the query at absolute position p (j ≤ p − w)."""
    with torch.inference_mode(False), torch.no_grad():
        pq = torch.arange(Tk - Tq + i0, Tk, device=device)
        return torch.arange(G, device=device)[None, :] <= pq[:, None] - w


@functools.lru_cache(maxsize=64)
def _global_flash_mask(w, Tq, Tk, i0, G, dtype, device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return _neg_mask(_global_ok(w, Tq, Tk, i0, G, device), dtype)[None, None]


def _heads_first(bias: torch.Tensor) -> torch.Tensor:
    """A bias broadcastable to (H, r, c) as a 3-D (1 or H, r, c) tensor."""
    while bias.dim() < 3:
        bias = bias.unsqueeze(0)
    if bias.dim() > 3:
        if any(s != 1 for s in bias.shape[:-3]):
            raise ValueError(f"bias_fn must return a bias broadcastable to (heads, Tq, Tk), got {tuple(bias.shape)}")
        bias = bias.reshape(bias.shape[-3:])
    return bias


def _pad_queries(x: torch.Tensor, Tpad: int) -> torch.Tensor:
    """(B, H, T, D) -> contiguous (B, H, Tpad, D), zero rows past T (whole query blocks)."""
    if x.shape[2] == Tpad:
        return x.contiguous()
    out = x.new_zeros(*x.shape[:2], Tpad, x.shape[3])
    out[:, :, :x.shape[2]] = x
    return out


class _BandFlash(torch.autograd.Function):
    """The band through the fused CPU flash kernel; global tokens merged by log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, plan: _Band):
        B, H, Tq, D, Tpad, g = plan.B, plan.H, plan.Tq, plan.D, plan.Tpad, plan.fwd
        BH = B * H
        qp = _pad_queries(q, Tpad)
        kp, vp = _pad_keys(k, plan), _pad_keys(v, plan)
        qb, kb, vb = qp.view(BH, g.nb, g.b, D), g.band(kp), g.band(vp)
        outs, lses = [], []
        for n0, n1, mask in g.parts(plan):
            o, lse = _flash(qb[:, n0:n1], kb[:, n0:n1], vb[:, n0:n1], 0.0, False, attn_mask=mask, scale=plan.scale)
            outs.append(o)
            lses.append(lse)
        out = (torch.cat(outs, 1) if len(outs) > 1 else outs[0]).reshape(B, H, Tpad, D)
        lse = (torch.cat(lses, 1) if len(lses) > 1 else lses[0]).reshape(B, H, Tpad)
        kg = vg = g_mask = None
        if plan.G:
            kg, vg = _global_keys(k, plan), _global_keys(v, plan)
            g_mask = plan.global_mask()
            qg = qp.view(BH, 1, Tpad, D)[:, :, plan.i0:Tq]
            og, lg = _flash(qg, kg, vg, 0.0, False, attn_mask=g_mask, scale=plan.scale)
            o_seg = out.view(BH, 1, Tpad, D)[:, :, plan.i0:Tq]
            l_seg = lse.view(BH, 1, Tpad)[:, :, plan.i0:Tq]
            new = torch.logaddexp(l_seg, lg)
            o_seg.copy_(o_seg * (l_seg - new).exp().unsqueeze(-1).to(o_seg.dtype)
                        + og * (lg - new).exp().unsqueeze(-1).to(og.dtype))
            l_seg.copy_(new)
        ctx.plan, ctx.g_mask = plan, g_mask
        ctx.save_for_backward(qp, kp, vp, out, lse, kg, vg)
        return out[:, :, :Tq]

    @staticmethod
    def backward(ctx, dout):
        # Each part's backward gets the merged output and log-sum-exp: its probabilities are
        # then the merged softmax's, and the per-part gradients add up to the exact ones.
        plan = ctx.plan
        qp, kp, vp, out, lse, kg, vg = ctx.saved_tensors
        B, H, Tq, D, Tpad, g = plan.B, plan.H, plan.Tq, plan.D, plan.Tpad, plan.bwd
        BH = B * H
        do = _pad_queries(dout, Tpad)
        qb, kb, vb = qp.view(BH, g.nb, g.b, D), g.band(kp), g.band(vp)
        dob, ob, lb = do.view(BH, g.nb, g.b, D), out.view(BH, g.nb, g.b, D), lse.view(BH, g.nb, g.b)
        dqs, gks, gvs = [], [], []
        for n0, n1, mask in g.parts(plan):
            gq, gk, gv = _flash_bwd(dob[:, n0:n1], qb[:, n0:n1], kb[:, n0:n1], vb[:, n0:n1], ob[:, n0:n1],
                                    lb[:, n0:n1], 0.0, False, attn_mask=mask, scale=plan.scale)
            dqs.append(gq)
            gks.append((n0, gk))
            gvs.append((n0, gv))
        dkp, dvp = torch.empty_like(kp), torch.empty_like(vp)
        g.fold(dkp, gks)
        g.fold(dvp, gvs)
        dq = (torch.cat(dqs, 1) if len(dqs) > 1 else dqs[0]).reshape(B, H, Tpad, D)
        dkg = dvg = None
        if plan.G:
            sl = slice(plan.i0, Tq)
            gq, dkg, dvg = _flash_bwd(do.view(BH, 1, Tpad, D)[:, :, sl], qp.view(BH, 1, Tpad, D)[:, :, sl], kg, vg,
                                      out.view(BH, 1, Tpad, D)[:, :, sl], lse.view(BH, 1, Tpad)[:, :, sl], 0.0,
                                      False, attn_mask=ctx.g_mask, scale=plan.scale)
            dq.view(BH, 1, Tpad, D)[:, :, sl] += gq
        return dq[:, :, :Tq], _unpad_keys(dkp, dkg, plan), _unpad_keys(dvp, dvg, plan), None


def _pad_keys(k: torch.Tensor, plan: _Band) -> torch.Tensor:
    """(B, Hk, Tk, D) -> (B·H, P + Tpad, D): band keys at P − past … P + Tq, zeros around, GQA groups expanded."""
    B, Hk, rep, D, P = plan.B, plan.Hk, plan.rep, plan.D, plan.P
    a, z = P - plan.past, P + plan.Tq
    kp = k.new_empty(B, Hk, rep, P + plan.Tpad, D)
    kp[:, :, :, :a].zero_()
    kp[:, :, :, z:].zero_()
    kp[:, :, :, a:z] = k[:, :, None, plan.kstart:]
    return kp.view(B * Hk * rep, P + plan.Tpad, D)


def _unpad_keys(dkp: torch.Tensor, dkg: torch.Tensor | None, plan: _Band) -> torch.Tensor:
    B, Hk, rep, D, P = plan.B, plan.Hk, plan.rep, plan.D, plan.P
    band = dkp.view(B, Hk, rep, P + plan.Tpad, D)[:, :, :, P - plan.past: P + plan.Tq]
    band = band.sum(2) if rep > 1 else band[:, :, 0]
    if plan.kstart == 0 and dkg is None:
        return band
    dk = dkp.new_zeros(B, Hk, plan.Tk, D)
    dk[:, :, plan.kstart:] = band
    if dkg is not None:
        dk[:, :, : plan.G] += dkg.view(B, Hk, rep, plan.G, D).sum(2)
    return dk


def _global_keys(k: torch.Tensor, plan: _Band) -> torch.Tensor:
    """The first G keys as (B·H, 1, G, D) (GQA groups expanded)."""
    B, Hk, rep, D, G = plan.B, plan.Hk, plan.rep, plan.D, plan.G
    return k[:, :, None, :G].expand(B, Hk, rep, G, D).reshape(B * Hk * rep, 1, G, D)


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: _Band, dropout_p: float) -> torch.Tensor:
    """The band with explicit scores (autograd throughout): bias gradients, dropout, any device."""
    B, H, Tq, D, Tpad, g = plan.B, plan.H, plan.Tq, plan.D, plan.Tpad, plan.fwd
    b, L, nb = g.b, g.L, g.nb
    if plan.rep > 1:
        k, v = k.repeat_interleave(plan.rep, dim=1), v.repeat_interleave(plan.rep, dim=1)
    qp = F.pad(q, (0, 0, 0, Tpad - Tq))
    pads = (0, 0, g.P - plan.past, Tpad - Tq)
    kb = F.pad(k[:, :, plan.kstart:], pads).unfold(2, L, b)  # (B, H, nb, D, L)
    vb = F.pad(v[:, :, plan.kstart:], pads).unfold(2, L, b)
    s = (qp.view(B, H, nb, b, D) @ kb) * plan.scale  # (B, H, nb, b, L)
    if g.bias is not None:
        s = s + g.bias.unsqueeze(-3)
    s = s.masked_fill(~(g.shared & g.valid), _NEG)
    if plan.G:
        kg, vg = k[:, :, : plan.G], v[:, :, : plan.G]
        sg = (qp @ kg.transpose(-1, -2)) * plan.scale  # (B, H, Tpad, G)
        ok = torch.zeros(Tpad, plan.G, dtype=torch.bool, device=q.device)
        ok[plan.i0:Tq] = plan.g_ok
        if plan.g_bias is not None:
            gb = plan.g_bias.new_zeros(plan.g_bias.shape[0], Tpad, plan.G)
            gb[:, plan.i0:Tq] = plan.g_bias
            sg = sg + gb
        s = torch.cat([s, sg.masked_fill(~ok, _NEG).view(B, H, nb, b, plan.G)], dim=-1)
    p = s.softmax(dim=-1)
    if dropout_p > 0:
        p = F.dropout(p, p=dropout_p)
    y = (p[..., :L] @ vb.transpose(-1, -2)).reshape(B, H, Tpad, D)
    if plan.G:
        y = y + p[..., L:].reshape(B, H, Tpad, plan.G) @ vg
    return y[:, :, :Tq]


def sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, global_tokens: int = 0,
    bias_fn: BiasFn | None = None, dropout_p: float = 0.0, block: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Causal sliding-window attention in O(T·(w + b)) time and memory, never a T×T matrix.

    q (B, H, Tq, D); k, v (B, Hk, Tk, D) with Hk dividing H (grouped-query attention), Tk ≥ Tq.
    Keys cover contiguous positions 0 … Tk − 1 of one sequence and the queries are the last Tq
    of them (Tk = Tq: a fresh sequence; Tk > Tq: a chunk after earlier keys). Query at position
    i sees keys j with 0 ≤ i − j < ``window``, and keys j < ``global_tokens`` (j ≤ i).
    ``bias_fn(q_pos, k_pos)`` (1-D position tensors) returns an additive logit bias
    broadcastable to (H, Tq, Tk) that depends on positions only through i − j (ALiBi, T5 and
    other relative biases): one table is reused for every block. ``block``: query block size
    for both passes, or (forward, backward) (default :func:`default_block`). Returns (B, H, Tq, D).
    """
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (B, H, Tq, D) and k, v (B, Hk, Tk, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[1] % k.shape[1] or k.shape[2] < q.shape[2]:
        raise ValueError(f"need key heads dividing query heads and Tk ≥ Tq; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if window < 1 or global_tokens < 0:
        raise ValueError(f"need window ≥ 1 and global_tokens ≥ 0, got {window}, {global_tokens}")
    Tq, Tk = q.shape[2], k.shape[2]
    if window >= Tk:  # every earlier key is in the window: plain causal attention
        if bias_fn is None and Tq == Tk:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                                  enable_gqa=k.shape[1] != q.shape[1])
        return masked_window_attention(q, k, v, window=window, bias_fn=bias_fn, dropout_p=dropout_p)
    flash = (_flash is not None and q.device.type == "cpu" and dropout_p == 0.0
             and q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16))
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    plan = _Band(q, k, window=int(window), global_tokens=int(global_tokens), bias_fn=bias_fn,
                 blocks=default_block(window) if block is None else
                 (block, block) if isinstance(block, int) else tuple(block), backward=flash and grad)
    if flash and not plan.needs_bias_grad():
        return _BandFlash.apply(q, k, v, plan)
    return _explicit(q, k, v, plan, dropout_p)
