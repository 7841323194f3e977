"""Contextual Position Encoding, CoPE (Golovneva, Wang, Weston, Sukhbaatar, 2024,
"Contextual Position Encoding: Learning to Count What's Important", arXiv:2405.18719).

Positions are counted by the context instead of by tokens. For query i and a visible key j:

    g_ij = σ(q_i·k_j)                      gate: does key j count for query i?
    p_ij = min(Σ_{k=j..i} g_ik, p_max − 1)  fractional position, counting visible keys only
    e[p] = (p − ⌊p⌋)·e[⌈p⌉] + (1 − p + ⌊p⌋)·e[⌊p⌋]   interpolated from a learned table e
    logit_ij = q_i·(k_j + e[p_ij])

Efficient form (paper, §3): q_i·e[p] is linear in e, so compute z_i = q_i·E for every integer
position once (E: the (p_max, head_dim) table; z: (…, T, p_max)) and interpolate z instead of
building e[p] vectors: q_i·e[p_ij] = z_i[⌊p⌋] + (p − ⌊p⌋)·(z_i[⌊p⌋ + 1] − z_i[⌊p⌋]).

Scaling. The paper's formula adds q·e to q·k as written. The authors' code
(facebookresearch/RAM, ``projects/cope``) divides the sum by √d, (q·k + q·e)/√d, and computes
the gates from the scaled scores, σ(q·k/√d). Both are knobs here:

* ``scale_pos_logits`` (default True, the code): the position logit is q·e/√d; False: q·e.
* ``scale_gate_logits`` (default True, the code): g = σ(q·k/√d); False: σ(q·k) (the listing in
  the paper's appendix applies the sigmoid before dividing by √d).

RoPE. With ``rope_fraction`` > 0 queries and keys are also rotated (RoPE on that share of each
head's channels) before the scores, so both the attention logits and the gates see relative
token distances. The CoPE term z is computed from the *un-rotated* query (the rotation is
undone with R(−i)), so q_i·e[p] stays independent of the absolute position i.

With a KV cache the new queries gate over every cached key (attention hands over all keys);
masked keys (causal or padding) get gate 0 and are never counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from archlab.nn.positional.base import PositionalScheme
from archlab.nn.positional.rope import RotaryEmbedding, apply_rotary


def neg_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: 0 where allowed, −inf elsewhere (same shape as ``allowed``)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class ContextualPosition(PositionalScheme):
    """CoPE: a per-scheme table ``table`` (max_pos, head_dim) of position embeddings e[0..p_max−1]."""

    uses_bias = True
    needs_scores = True

    def __init__(
        self,
        *,
        head_dim: int,
        max_pos: int = 64,
        scale_pos_logits: bool = True,
        scale_gate_logits: bool = True,
        rope_fraction: float = 0.0,
        rope_base: float = 10000.0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if max_pos < 2:
            raise ValueError(f"max_pos must be ≥ 2 (positions 0..max_pos−1 are interpolated), got {max_pos}")
        self.head_dim = head_dim
        self.max_pos = max_pos
        self.scale_pos_logits = scale_pos_logits
        self.scale_gate_logits = scale_gate_logits
        # The authors initialise the table at zero. A small random start is used instead so
        # that the gates receive a gradient from the first step (with e = 0 every
        # z[⌊p⌋ + 1] − z[⌊p⌋] is 0) and so that a model at initialisation already depends on
        # every knob.
        self.table = nn.Parameter(torch.randn(max_pos, head_dim) * init_std)
        self.rope = RotaryEmbedding(head_dim=head_dim, base=rope_base, fraction=rope_fraction) if rope_fraction > 0 else None
        self.uses_rotate = self.rope is not None
        # Queries are processed in blocks of this many rows, each over only the keys it can
        # see (about half of them under a causal mask). Not a model knob: it changes speed
        # and memory, never the result.
        self.block = 64

    # ------------------------------------------------------------------------- the seams

    def rotate(self, q, k, q_pos, k_pos):
        return self.rope.rotate(q, k, q_pos, k_pos) if self.rope is not None else (q, k)

    def bias(self, q, k, q_pos, k_pos, scores=None, allowed=None):
        """q·e[p_ij] (÷√d with ``scale_pos_logits``), (B, H, Tq, Tk), from the scores q·kᵀ/√d."""
        if scores is None:
            raise ValueError("CoPE needs the attention scores (needs_scores = True)")
        scale = self.head_dim ** -0.5
        p = self.positions(scores, allowed, scale=scale)
        return self.interpolate(self.position_logits(q, q_pos, scale=scale), p)

    # ------------------------------------------------------------------------- the pieces

    def gates(self, scores: torch.Tensor, allowed: torch.Tensor | None, *, scale: float) -> torch.Tensor:
        """g_ij = σ(q_i·k_j/√d) (or σ(q_i·k_j)), 0 for keys that are not allowed."""
        g = torch.sigmoid(scores if self.scale_gate_logits else scores / scale)
        return g if allowed is None else g * allowed

    def positions(self, scores: torch.Tensor, allowed: torch.Tensor | None, *, scale: float) -> torch.Tensor:
        """p_ij = min(Σ_{k ≥ j, allowed} g_ik, p_max − 1): reverse cumulative sum along the keys."""
        g = self.gates(scores, allowed, scale=scale)
        return g.flip(-1).cumsum(-1).flip(-1).clamp(max=self.max_pos - 1)

    def position_logits(self, q: torch.Tensor, q_pos: torch.Tensor, *, scale: float) -> torch.Tensor:
        """z_i[p] = q_i·e[p] for every integer p: (B, H, Tq, max_pos), ÷√d with ``scale_pos_logits``."""
        if self.rope is not None:  # undo the rotation: q_i·e[p] must not depend on i
            cos, sin = self.rope.cos_sin(q_pos, q.dtype)
            q = apply_rotary(q, cos, -sin)
        if self.scale_pos_logits:
            q = q * scale
        return q @ self.table.to(q.dtype).t()

    def interpolate(self, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """z at fractional positions: z[f] + (p − f)·(z[f + 1] − z[f]), f = min(⌊p⌋, p_max − 2).

        Using f + 1 rather than ⌈p⌉ gives the same value (the weight of z[f + 1] is p − f,
        0 at integers) and lets p = p_max − 1 read z[p_max − 1] with weight 1.
        """
        fl = p.detach().floor().clamp_(max=self.max_pos - 2)
        w = p - fl
        idx = fl.long()
        lo = z.gather(-1, idx)
        hi = z.gather(-1, idx + 1)
        return lo + w * (hi - lo)

    # ------------------------------------------------------------------------- fused attention

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        *,
        allowed: torch.Tensor | None,
        scale: float,
        dropout_p: float = 0.0,
    ) -> torch.Tensor:
        """softmax(q·kᵀ·scale + bias, masked)·v, (B, H, Tq, D); k and v with H heads already.

        The computation of :meth:`bias` plus attention, arranged to touch the (Tq, Tk)
        matrices as few times as possible (see :class:`_CopeAttention`):

        * queries go in blocks of ``self.block`` rows, each over only the keys it can see
          (:func:`query_blocks`), so a causal mask costs about half of the full matrix;
        * keys are taken newest first (k and v flipped, which is cheap), so the reverse
          cumulative sum over keys is one forward ``cumsum``; softmax and the weighted sum of
          values do not depend on the order of the keys;
        * the mask is added once as 0/−inf: σ(−inf) = 0 removes masked keys from the count,
          and the same masked scores become the logits;
        * one autograd node with a hand-written backward (no autograd copies of slices).

        With dropout the plain path (:meth:`bias`, softmax, dropout) is used instead.
        """
        if dropout_p > 0:  # the fused backward assumes undropped probabilities
            scores = (q @ k.transpose(-1, -2)) * scale
            scores = scores + self.bias(q, k, q_pos, k_pos, scores=scores, allowed=allowed)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            return F.dropout(scores.softmax(dim=-1), p=dropout_p) @ v
        kf, vf = k.flip(-2), v.flip(-2)  # keys newest first
        z = self.position_logits(q, q_pos, scale=scale)  # (B, H, Tq, P)
        neg = None if allowed is None else neg_mask(allowed.flip(-1), q.dtype)
        gate_mult = 1.0 if self.scale_gate_logits else 1.0 / scale
        blocks = query_blocks(allowed, q.shape[-2], k.shape[-2], self.block)
        return _CopeAttention.apply(q * scale, kf, vf, z, neg, gate_mult, blocks)


def query_blocks(allowed: torch.Tensor | None, Tq: int, Tk: int, size: int) -> list[tuple[int, int, int]]:
    """(start, stop, keys) for blocks of ``size`` queries: every query in rows start..stop−1
    sees only keys < ``keys`` (by ``allowed``), so a causal mask costs about half the work.
    Without a mask: one block over all keys."""
    if allowed is None or Tq <= size:
        return [(0, Tq, Tk)]
    seen = allowed.reshape(-1, Tq, Tk).any(0)  # (Tq, Tk): visible to some batch row / head
    last = Tk - seen.flip(-1).to(torch.uint8).argmax(-1)  # 1 + index of the last visible key
    starts = list(range(0, Tq, size))
    ends = F.pad(last, (0, len(starts) * size - Tq)).view(len(starts), size).amax(-1).tolist()
    return [(a, min(a + size, Tq), e) for a, e in zip(starts, ends)]


def _floor_and_index(p: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions p ≥ 0 (…, Tq, Tk): p − ⌊p⌋ (in p's memory) and the flat row-major index
    of ⌊p⌋ into a (…, Tq, width) table. The index is int32 where it fits: half the memory of
    int64, and CPUs convert float to int32 much faster."""
    rows = p[..., 0].numel()
    dt = torch.int32 if rows * width < 2**31 else torch.int64
    fl = p.to(dt)  # truncation = floor for p ≥ 0
    w = p.sub_(fl)
    base = torch.arange(rows, dtype=dt, device=p.device).mul_(width).view(*p.shape[:-1], 1)
    return w, fl.add_(base).view(-1)


def _steps(z: torch.Tensor) -> torch.Tensor:
    """z[f + 1] − z[f] for f < P − 1 and 0 at f = P − 1 (…, P): the slope of the interpolation.
    The 0 at the cap makes a clamped position read z[P − 1] with zero slope, i.e. zero
    gradient, without a separate clamp mask."""
    return F.pad(z[..., 1:] - z[..., :-1], (0, 1))


class _CopeAttention(torch.autograd.Function):
    """O = softmax(L)·v with L = s + z[f] + (p − f)·(z[f + 1] − z[f]), s = q·kᵀ + mask,
    f = ⌊p⌋, p = min(cumsum(σ(c·s)), P − 1) along the keys (given newest first).

    Inputs: q (B, H, Tq, D) already scaled; kf, vf (B, H, Tk, D) newest first; z (B, H, Tq, P)
    the position logits; ``neg`` the 0/−inf mask (newest first) or None; c the gate
    multiplier; the query blocks of :func:`query_blocks`. Each block of queries works on the
    keys it can see only. The hand-written backward keeps four (rows, keys) tensors per block
    (σ, p − f, the int32 index, the probabilities) and fuses the softmax backward with dO·O:

        dL = A ⊙ (dO·vᵀ − rowsum(dO ⊙ O))               softmax
        dz[f] += dL·(1 − w),  dz[f + 1] += dL·w         interpolation (w = p − f)
        dp = dL · (z[f + 1] − z[f])                     0 where p is capped
        dg_j = Σ_{l ≥ j} dp_l                           cumsum
        ds = dL + c · σ(c·s)·(1 − σ(c·s)) · dg           then dq = ds·k, dk = dsᵀ·q
    """

    @staticmethod
    def forward(ctx, q, kf, vf, z, neg, gate_mult, blocks):
        Tk, P = kf.shape[-2], z.shape[-1]
        steps = _steps(z)
        outs, saved = [], []
        for a, b, e in blocks:
            s = q[..., a:b, :] @ kf[..., Tk - e:, :].transpose(-1, -2)
            if neg is not None:
                s.add_(neg[..., a:b, Tk - e:])
            g = torch.sigmoid(s if gate_mult == 1.0 else s * gate_mult)
            p = g.cumsum(-1).clamp_(max=P - 1)
            w, idx = _floor_and_index(p, P)
            logits = z[..., a:b, :].reshape(-1).index_select(0, idx).view(s.shape)
            logits.add_(s).addcmul_(w, steps[..., a:b, :].reshape(-1).index_select(0, idx).view(s.shape))
            del s
            probs = torch.softmax(logits, dim=-1)
            del logits
            outs.append(probs @ vf[..., Tk - e:, :])
            saved += [g, w, idx, probs]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)
        ctx.save_for_backward(q, kf, vf, steps, out, *saved)
        ctx.gate_mult, ctx.blocks = gate_mult, blocks
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        q, kf, vf, steps, out, *saved = ctx.saved_tensors
        Tk, P = kf.shape[-2], steps.shape[-1]
        dq, dkf, dvf, dz = torch.empty_like(q), torch.zeros_like(kf), torch.zeros_like(vf), torch.empty_like(steps)
        for n, (a, b, e) in enumerate(ctx.blocks):
            g, w, idx, probs = saved[4 * n: 4 * n + 4]
            do, k_e = d_out[..., a:b, :], kf[..., Tk - e:, :]
            dvf[..., Tk - e:, :] += probs.transpose(-1, -2) @ do
            dl = do @ vf[..., Tk - e:, :].transpose(-1, -2)
            dl.sub_((do * out[..., a:b, :]).sum(-1, keepdim=True)).mul_(probs)  # softmax backward
            # interpolation: L = z[f]·(1 − w) + z[f + 1]·w + s, scattered back onto z's rows
            dlw = dl * w
            d_hi = torch.zeros(steps[..., a:b, :].numel(), dtype=dl.dtype, device=dl.device)
            d_hi.index_add_(0, idx, dlw.view(-1))
            d_lo = torch.zeros_like(d_hi).index_add_(0, idx, torch.sub(dl, dlw, out=dlw).view(-1))
            d_lo, d_hi = d_lo.view(*steps.shape[:-2], b - a, P), d_hi.view(*steps.shape[:-2], b - a, P)
            d_lo[..., 1:] += d_hi[..., :-1]  # d_hi[..., P − 1] only ever holds w = 0 terms
            dz[..., a:b, :] = d_lo
            dp = steps[..., a:b, :].reshape(-1).index_select(0, idx).view(dl.shape).mul_(dl)
            # reverse cumulative sum along the keys: Σ_{l ≥ j} = total − Σ_{l < j}
            dg = dp.cumsum(-1)
            dg = torch.sub(dp.sum(-1, keepdim=True), dg, out=dg).add_(dp)
            ds = torch.ops.aten.sigmoid_backward(dg, g)
            if ctx.gate_mult != 1.0:
                ds.mul_(ctx.gate_mult)
            ds.add_(dl)
            dq[..., a:b, :] = ds @ k_e
            dkf[..., Tk - e:, :] += ds.transpose(-1, -2) @ q[..., a:b, :]
        return dq, dkf, dvf, dz, None, None, None
