"""Multi-scale retention (Sun et al., 2023, "Retentive Network: A Successor to Transformer for
Large Language Models", arXiv 2307.08621) in its three forms.

Per head h with decay γ_h ∈ (0, 1), queries and keys rotated by the layer's rotary scheme
(Q = XW_Q ⊙ Θ, K = XW_K ⊙ Θ̄: the paper's xPos-style rotation is RoPE's), s = 1/√d_k:

    R_nm = s · q_n·k_m · γ^(p_n − p_m)    for m ≤ n and key m present, else 0
    z_n  = Σ_m γ^(p_n − p_m)               (over the same m: the row sum of D)
    o_n  = (Σ_m R_nm v_m / √z_n) / max(|Σ_m R_nm| / √z_n, 1)

which is the paper's parallel form (QKᵀ ⊙ D)V with both of its normalisations: D's rows
divided by the square root of their sum, then the retention scores by max(|row sum|, 1).
Then a group norm per head, a swish gate and the output projection:
MSR(X) = (swish(XW_G) ⊙ GroupNorm_h(o)) W_O.

The decay runs over *positions* p (not token indices), so left padding (positions
cumsum(mask) − 1, pads masked out) decays exactly as the unpadded sequence does: a pad
contributes nothing to any sum and no decay step runs across it. Positions must not decrease
along a row (every caller's do).

The three forms compute the same o in exact arithmetic (tests/test_retention.py checks them in
float64):

* **parallel**: the T × T matrix R at once (training on short sequences);
* **recurrent**: a state per head, S_n = γ^Δ S_(n−1) + k_nᵀv_n with Δ = p_n − p_(n−1), and
  alongside it the key sum u_n = γ^Δ u_(n−1) + k_n and the count z_n = γ^Δ z_(n−1) + 1, so
  that the output q_n S_n / √z_n and the score sum q_n·u_n are available per token at constant
  cost (decoding). u is kept as one more column of S (values extended by a 1: S = Σ kᵀ[v, 1]),
  and the same extension gives the parallel form's row sums Σ_m R_nm from its R·V product;
* **chunkwise**: the parallel form within each chunk plus the state carried across chunks,
  for any chunk size (the last chunk may be shorter).

**The state is stored normalised**: S̄ = S / z and ū = u / z, decay-weighted *averages* of the
k_mᵀv_m and k_m, so it stays bounded however long the sequence (S itself grows up to
1/(1 − γ) times; for the slowest of 16 heads, 2²⁰ times). z is kept as a number per head.

Where the published implementations differ (read, not copied): torchscale's parallel form
divides by the sum of |R_nm| (not |Σ R_nm|) and detaches that denominator, and its recurrent
form applies no such division, so its forms agree only up to the group norm's eps (the group
norm removes any per-token, per-head factor except for eps; newer versions use an RMS norm
without affine weights there). yet-another-retnet's decay mask is γ^(n−m) without the row
normalisation and without the score normalisation. Here both normalisations are applied
identically in all three forms (the row-sum division and the max(|Σ R|, 1) division are
computable recurrently through z and u) and the gradient flows through both denominators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.positional.base import PositionalScheme


def decay_schedule(heads: int, gammas: Sequence[float] | None = None) -> torch.Tensor:
    """Per-head decays (H,) in float64: the paper's γ_h = 1 − 2^(−5−h), h = 0 … H − 1, or
    ``gammas`` (one value in (0, 1) per head) as given."""
    if gammas is None:
        return 1.0 - torch.pow(2.0, -5.0 - torch.arange(heads, dtype=torch.float64))
    g = torch.tensor([float(x) for x in gammas], dtype=torch.float64)
    if g.shape != (heads,) or not bool(((g > 0) & (g < 1)).all()):
        raise ValueError(f"retention decays: need {heads} values in (0, 1), got {list(gammas)}")
    return g


class RetentionState:
    """One layer's decoding state: S (B, H, Dk, Dv + 1), whose first Dv columns are S̄ and
    last column ū (:func:`_extend`), z (B, H), the position the sums are referred to ((B,) or
    (1,) when the rows share positions), and the number of tokens consumed (``len``)."""

    def __init__(self) -> None:
        self.S: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.ref: torch.Tensor | None = None
        self.length = 0

    def __len__(self) -> int:
        return self.length

    def reorder(self, index: torch.Tensor) -> None:
        if self.S is not None:
            self.S, self.z = self.S.index_select(0, index), self.z.index_select(0, index)
            if self.ref.shape[0] > 1:  # per-row positions (shared ones need no reordering)
                self.ref = self.ref.index_select(0, index)

    @staticmethod
    def empty(q: torch.Tensor, v_ext: torch.Tensor, pos: torch.Tensor) -> tuple:
        B, H, _, Dk = q.shape
        return q.new_zeros(B, H, Dk, v_ext.shape[-1]), q.new_zeros(B, H), pos[:, 0]


def _extend(v: torch.Tensor) -> torch.Tensor:
    """(…, T, Dv) -> (…, T, Dv + 1) with a column of ones: one product with R then gives both
    Σ_m R_nm v_m and Σ_m R_nm, and the state kᵀ[v, 1] holds S and u side by side."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def _safe_sqrt(z: torch.Tensor) -> torch.Tensor:
    """√z, with rows that have no key at all (z = 0: a padding query) kept finite (their sums
    are 0, so they come out 0)."""
    return z.clamp(min=torch.finfo(z.dtype).tiny).sqrt()


def _finish(num_ext: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """o = (num / √z) / max(|dot| / √z, 1) for num_ext = [num, dot] (…, T, Dv + 1), z (…, T)."""
    num, dot = num_ext[..., :-1], num_ext[..., -1]
    r = _safe_sqrt(z)
    den = (dot.abs() / r).clamp(min=1.0)
    return num / (r * den).unsqueeze(-1)


def _decay(log_gamma: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """γ^Δ per head: log_gamma (H,), Δ (B, …) -> (B, H, …)."""
    shape = (1, -1) + (1,) * (delta.dim() - 1)
    return torch.exp(delta.unsqueeze(1) * log_gamma.view(shape))


def _block(q, k, log_gamma, pos, visible):
    """Within a block of C tokens: A (B or 1, H, C, C) = γ^(p_n − p_m) on m ≤ n (present keys
    only: D, unnormalised) and R = (q·kᵀ) ⊙ A. Rows sharing positions share A."""
    C = q.shape[2]
    A = _decay(log_gamma, (pos[:, :, None] - pos[:, None, :]).clamp(min=0))
    keep = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if visible is not None:
        keep = keep & visible[:, None, None, :]
    A = A * keep
    return A, (q @ k.transpose(-1, -2)).mul_(A)  # in place: the product is not saved for backward


def _advance(state: tuple, k, v_ext, log_gamma, pos, visible) -> tuple:
    """The state after a block of keys/values, referred to the block's last position."""
    S, z, ref = state
    end = pos[:, -1]
    w = _decay(log_gamma, end[:, None] - pos)  # (B, H, C): each key's weight at the end
    if visible is not None:
        w = w * visible[:, None, :]
    carry = _decay(log_gamma, end - ref) * z  # (B, H): the old state's
    z_new = carry + w.sum(-1)
    inv = 1.0 / z_new.clamp(min=torch.finfo(z_new.dtype).tiny)
    S = (carry[..., None, None] * S + (k * w.unsqueeze(-1)).transpose(-1, -2) @ v_ext) * inv[..., None, None]
    return S, z_new, end


def retention_parallel(q, k, v, log_gamma, pos, visible=None):
    """q, k (B, H, T, Dk) (k already scaled), v (B, H, T, Dv); log_gamma (H,); pos (B, T), or
    (1, T) shared by the rows, float; visible (B, T) bool or None -> o (B, H, T, Dv) from the
    whole T × T matrix, and the state after the last token (to continue recurrently)."""
    ve = _extend(v)
    A, R = _block(q, k, log_gamma, pos, visible)
    o = _finish(R @ ve, A.sum(-1))
    return o, _advance(RetentionState.empty(q, ve, pos), k, ve, log_gamma, pos, visible)


def retention_chunkwise(q, k, v, log_gamma, pos, visible=None, *, chunk: int, state: tuple | None = None):
    """The parallel form on chunks of ``chunk`` tokens (the last may be shorter) with the
    state carried across them; ``state`` (S, z, ref) continues an earlier call. Same
    arguments and results as :func:`retention_parallel`."""
    ve = _extend(v)
    T = q.shape[2]
    state = state if state is not None else RetentionState.empty(q, ve, pos)
    outs = []
    for a in range(0, T, chunk):
        b = min(a + chunk, T)
        qc, kc, vc, pc = q[:, :, a:b], k[:, :, a:b], ve[:, :, a:b], pos[:, a:b]
        vis = None if visible is None else visible[:, a:b]
        S, z, ref = state
        A, R = _block(qc, kc, log_gamma, pc, vis)
        into = _decay(log_gamma, pc - ref[:, None]) * z[..., None]  # (B, H, C): the state's weight per query
        outs.append(_finish(R @ vc + into.unsqueeze(-1) * (qc @ S), into + A.sum(-1)))
        state = _advance(state, kc, vc, log_gamma, pc, vis)
    return torch.cat(outs, dim=2), state


def retention_recurrent(q, k, v, log_gamma, pos, visible=None, *, state: tuple | None = None):
    """One token at a time: S ← γ^Δ S + kᵀv, u ← γ^Δ u + k, z ← γ^Δ z + 1 (stored as the
    averages S̄ = S/z, ū = u/z); o_n from q_n S_n, q_n·u_n and z_n. Same arguments and
    results as :func:`retention_chunkwise`."""
    ve = _extend(v)
    S, z, ref = state if state is not None else RetentionState.empty(q, ve, pos)
    outs = []
    for t in range(q.shape[2]):
        qt, kt, vt, pt = q[:, :, t], k[:, :, t], ve[:, :, t], pos[:, t]
        present = torch.ones_like(pt) if visible is None else visible[:, t].to(q.dtype)
        carry = _decay(log_gamma, pt - ref) * z  # (B, H)
        z = carry + present[:, None]
        inv = 1.0 / z.clamp(min=torch.finfo(z.dtype).tiny)
        kp = kt * present[:, None, None]
        S = (carry[..., None, None] * S + kp.unsqueeze(-1) * vt.unsqueeze(-2)) * inv[..., None, None]
        ref = pt
        # with S = z·S̄: q S / √z = q S̄ √z (and the same for the score sum)
        outs.append(_finish(((qt.unsqueeze(-2) @ S) * z[..., None, None]), z.unsqueeze(-1)))
    return torch.cat(outs, dim=2), (S, z, ref)


FORMS = ("auto", "parallel", "chunkwise", "recurrent")


class MultiScaleRetention(nn.Module):
    """MSR(X) = (swish(XW_G) ⊙ GroupNorm_h(Retention(X))) W_O, a causal token mixer whose
    decoding state is :class:`RetentionState` (constant size per layer).

    ``gammas``: per-head decays (default the paper's schedule, :func:`decay_schedule`), fixed
    buffers. ``value_factor``: value (and gate) width per head = head_dim · value_factor (the
    paper uses 2 with a narrower feed-forward; 1 keeps the mixer near attention's size).
    ``form``: ``auto`` (training: parallel up to ``chunk_size`` tokens, chunkwise beyond;
    with a cache: recurrent for one token, chunkwise for more) or one form for every call.
    ``position``: the layer's scheme; its rotation (RoPE and its variants) is the paper's
    Θ. A scheme that biases logits has nothing to act on here (refused)."""

    def __init__(self, *, dim: int, heads: int, position: PositionalScheme, head_dim: int | None = None,
                 value_factor: int = 1, gammas: Sequence[float] | None = None, form: str = "auto",
                 chunk_size: int = 256, bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"retention form '{form}'; allowed: {', '.join(FORMS)}")
        if chunk_size < 1 or value_factor < 1:
            raise ValueError(f"retention needs chunk_size ≥ 1 and value_factor ≥ 1, got {chunk_size}, {value_factor}")
        if position.uses_bias or position.needs_scores or position.attend is not None:
            raise ValueError("retention has no attention logits for a bias scheme to act on; use a rotary "
                             "position (rope and its variants) or none")
        self.heads, self.head_dim = heads, head_dim or dim // heads
        self.value_dim = self.head_dim * value_factor
        self.form, self.chunk_size, self.position = form, chunk_size, position
        hk, hv = heads * self.head_dim, heads * self.value_dim
        self.split = (hk, hk, hv, hv)
        self.proj = nn.Linear(dim, sum(self.split), bias=bias)  # q, k, v, gate
        self.norm = nn.GroupNorm(heads, hv, eps=eps)
        self.out = nn.Linear(hv, dim, bias=bias)
        self.out.residual_out = True
        # log γ, not γ: in low precision γ = 1 − 2^(−12) would round to 1 (no decay), its log keeps
        # its relative precision
        self.register_buffer("log_gamma", decay_schedule(heads, gammas).log().to(torch.get_default_dtype()),
                             persistent=False)

    def init_cache(self) -> RetentionState:
        return RetentionState()

    def pick_form(self, T: int, cached: bool) -> str:
        if self.form != "auto":
            return self.form
        if cached:
            return "recurrent" if T == 1 else "chunkwise"
        return "parallel" if T <= self.chunk_size else "chunkwise"

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache: RetentionState | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Dk, Dv = self.heads, self.head_dim, self.value_dim
        q, k, v, g = self.proj(x).split(self.split, dim=-1)
        q = q.view(B, T, H, Dk).transpose(1, 2)
        k = k.view(B, T, H, Dk).transpose(1, 2)
        v = v.view(B, T, H, Dv).transpose(1, 2)
        if self.position.uses_rotate:
            q, k = (self.position.rotate(q, k, positions, positions, x=x) if self.position.uses_input
                    else self.position.rotate(q, k, positions, positions))
        k = k * (1.0 / math.sqrt(Dk))
        pos = positions.to(q.dtype)
        pos = pos[None] if pos.dim() == 1 else pos  # (1, T): rows share positions, and the decay matrix
        visible = None if mask is None else mask[:, -T:].bool()
        lg = self.log_gamma.to(q.dtype)
        state = None
        if cache is not None and cache.S is not None:
            state = (cache.S, cache.z, cache.ref)
        form = self.pick_form(T, cache is not None)
        if form == "recurrent":
            o, new = retention_recurrent(q, k, v, lg, pos, visible, state=state)
        elif form == "parallel" and state is None:
            o, new = retention_parallel(q, k, v, lg, pos, visible)
        else:  # chunkwise, or a parallel form asked to continue a state (one chunk after it)
            chunk = T if form == "parallel" else self.chunk_size
            o, new = retention_chunkwise(q, k, v, lg, pos, visible, chunk=chunk, state=state)
        if cache is not None:
            cache.S, cache.z, cache.ref = new
            cache.length += T
        y = self.norm(o.transpose(1, 2).reshape(B * T, H * Dv)).view(B, T, H * Dv)
        return self.out(F.silu(g) * y)

    def extra_repr(self) -> str:
        gam = ", ".join(f"{x:.6g}" for x in self.log_gamma.exp().tolist())
        return f"heads={self.heads}, head_dim={self.head_dim}, value_dim={self.value_dim}, form={self.form}, " \
               f"chunk_size={self.chunk_size}, gammas=[{gam}]"
