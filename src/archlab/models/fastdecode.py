"""A lean batch-decoding path for the plain LM: one new token per step, few large ops.

Cached decoding of a small model is not limited by arithmetic: at the reference shape one
token costs ~3 M multiply-adds, a few hundred microseconds of matrix-vector work, while the
generic path spends several times that on Python and operator dispatch (views, transposes,
per-layer position tables, cache bookkeeping, masks). This module keeps the arithmetic and
drops the rest, for the configurations where that is provably the same computation:

* per layer: ``rms_norm/layer_norm`` → one ``mm`` for q,k,v → RoPE as one complex multiply
  in place on q and one written straight into the key cache → one copy of the new v into a
  preallocated buffer → fused SDPA over the valid prefix (no causal mask: every cached key
  is earlier; an additive bias scheme's own ``bias`` for the new row as the mask, computed
  once per step when it depends on i − j only; for a ``local`` layer, only its last ``window``
  keys) → ``addmm`` into the residual → norm → ``mm``
  → activation → ``addmm`` into the residual;
* RoPE as a complex multiply: the model rotates channel c with channel c + r/2 of each head
  (rotate-half); here the q and k columns of the projection are permuted once so that those
  partners sit side by side, and a (q or k)·(cos + i·sin) multiply on the complex view does
  the rotation in one operation. Scores q·k are sums over channels, so the same permutation
  of q and k leaves them unchanged; cached keys are kept in the permuted order (the prompt's
  keys are permuted when adopted) and values are not permuted at all;
* a retention layer (:class:`~archlab.nn.mixers.retention.MultiScaleRetention`): one product for
  q, k, v and the gate (the key scale folded into the k columns, q and k paired for the
  complex RoPE multiply like attention's) → the raw state S = Σ γ^(n−m) k_mᵀ[v_m, 1] and the
  count z updated in place (γ per head: consecutive positions) → q·S, both normalisations,
  the group norm and the swish gate → ``addmm`` into the residual; the prompt's state is
  adopted from the generic chunkwise prefill (S = z·S̄ there);
* at batch 1 every weight is stored as column blocks, one per thread, and each product runs
  as a batched product over them (:func:`_mm`): BLAS gives a one-row product a single thread,
  and decoding at batch 1 is bound by streaming the weights, so this uses every core;
* positions are Python integers, weights are copied once per call into (in, out) layout,
  buffers hold prompt + every new token.

Which models qualify is decided structurally (:func:`FastDecoder.build` returns ``None``
otherwise, and :func:`~archlab.models.generation.generate` uses the generic path: rotations
other than plain RoPE, schemes that need the scores such as CoPE, post-norm, local attention
with global heads or tokens, other mixers and feed-forwards, dropout), and the
rotation is checked once against the scheme's own ``rotate`` on a probe before use, so a
scheme that changes its formula (learnable phases, multi-scale bases, ...) is never decoded
with a stale copy of it. Equivalence with the generic path is tested token for token and
logit for logit in float64 (tests/test_model.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.ffn import GeluMLP, SwiGLU
from archlab.nn.cache import KVCache
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.local import LocalAttention
from archlab.nn.mixers.retention import MultiScaleRetention
from archlab.nn.norms import LayerNorm, RMSNorm
from archlab.nn.residual import PreNorm
from archlab.nn.positional.rope import RotaryEmbedding


def _norm_fn(norm: nn.Module):
    # torch.* bindings, not F.*: the same kernels without F's per-call Python checks
    if type(norm) is RMSNorm:
        w, eps = norm.weight, norm.eps
        shape = (w.shape[-1],)
        return lambda x: torch.rms_norm(x, shape, w, eps)
    if type(norm) is LayerNorm:
        w, b, eps = norm.weight, norm.bias, norm.eps
        shape = (w.shape[-1],)
        return lambda x: torch.layer_norm(x, shape, w, b, eps)
    return None


def _t(weight: torch.Tensor) -> torch.Tensor:
    """A Linear's (out, in) weight as a contiguous (in, out) copy: a row vector times a
    row-major matrix streams the weights in order, measurably faster than BLAS's transposed
    case for one row at these sizes. Copied once per ``generate`` call."""
    return weight.detach().t().contiguous()


def _split(w: torch.Tensor, parts: int) -> torch.Tensor:
    """An (in, out) weight as ``parts`` contiguous column blocks (parts, in, out/parts), when
    ``parts`` > 1 divides ``out``; otherwise unchanged. See :func:`_mm`."""
    if parts <= 1 or w.shape[1] % parts:
        return w
    return w.view(w.shape[0], parts, -1).permute(1, 0, 2).contiguous()


def _mm(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (1, in) · w, w as from :func:`_split`. BLAS runs a one-row product on one thread, and
    at batch 1 it only streams the weights; as a batched product over column blocks ATen gives
    each thread its blocks, so every core streams its share. The blocks' outputs lie in column
    order, so the result is a view, and each entry is the same dot product as in ``x @ w``.
    ``out``: a buffer shaped like the product (see :func:`_out_buffer`)."""
    if w.dim() == 2:
        return torch.mm(x, w, out=out)
    return torch.bmm(x.expand(w.shape[0], 1, -1), w, out=out)


def _addmm(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """r + x · w, w as from :func:`_split` (r of shape (1, out) or (out,))."""
    if w.dim() == 2:
        return torch.addmm(r, x, w, out=out)
    S = w.shape[0]
    return torch.baddbmm(r.reshape(S, 1, -1), x.expand(S, 1, -1), w, out=out)


def _out_buffer(w: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, result): a buffer for ``_mm(x, w, out=target)`` with x of ``rows`` rows, and
    its (rows, out) view in column order."""
    n = w.shape[0] * w.shape[2] if w.dim() == 3 else w.shape[1]
    flat = torch.empty(rows * n, dtype=w.dtype, device=w.device)
    return (flat.view(w.shape[0], rows, -1) if w.dim() == 3 else flat.view(rows, n)), flat.view(rows, n)


def ffn_weights(ffn: nn.Module) -> tuple | None:
    """(activation, SwiGLU hidden width, up (in, out), up bias, down (in, out), down bias) of a
    GELU or SwiGLU feed-forward without dropout; None for any other (generic path)."""
    if type(ffn) is SwiGLU:
        act, hidden = "swiglu", ffn.hidden
    elif type(ffn) is GeluMLP:
        act, hidden = "gelu", None
    else:
        return None
    if not isinstance(ffn.dropout, nn.Identity):
        return None
    return act, hidden, _t(ffn.up.weight), ffn.up.bias, _t(ffn.down.weight), ffn.down.bias


def ffn_step(x: torch.Tensor, L: object) -> torch.Tensor:
    """x + FFN(norm2(x)) for one row per batch entry, on a layer holding :func:`ffn_weights`."""
    B = x.shape[0]
    h = L.norm2(x)
    u = (_mm(h, L.w_up) if L.b_up is None else _addmm(L.b_up, h, L.w_up)).view(B, -1)
    u = F.silu(u[:, :L.hidden]) * u[:, L.hidden:] if L.act == "swiglu" else F.gelu(u)
    return (_addmm(x, u, L.w_down) if L.b_down is None else _addmm(x + L.b_down, u, L.w_down)).view(B, -1)


def _pairing(head_dim: int, half: int) -> torch.Tensor:
    """The channel order that puts each rotate-half pair (c, c + half), c < half, side by side
    at (2c, 2c + 1); channels past the rotary width keep their places."""
    idx = torch.arange(head_dim)
    idx[0:2 * half:2] = torch.arange(half)
    idx[1:2 * half:2] = torch.arange(half, 2 * half)
    return idx


def rope_table(pos: RotaryEmbedding, capacity: int, head_dim: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(table, perm): the rotation at every position as complex multipliers (capacity, D/2)
    over paired channels (``cos + i·sin`` for rotary pairs, 1 past the rotary width), from the
    scheme's own cos/sin, and the pairing permutation; None where a complex multiply cannot
    reproduce it (bfloat16, odd widths)."""
    if head_dim % 2 or dtype not in (torch.float32, torch.float64):
        return None  # complex multiply needs a complex dtype: none for bfloat16 (generic path)
    cos, sin = pos.cos_sin(torch.arange(capacity, device=device), dtype)
    cos, sin = cos.reshape(capacity, -1), sin.reshape(capacity, -1)
    half = cos.shape[-1]
    if 2 * half > head_dim:
        return None
    re = torch.ones(capacity, head_dim // 2, dtype=dtype, device=device)
    im = torch.zeros_like(re)
    re[:, :half], im[:, :half] = cos, sin
    return torch.complex(re, im), _pairing(head_dim, half).to(device)


def apply_groups(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """x (B, N, T, D) · M per head, M (G, D, D): head h uses M[h // (N / G)]."""
    N, G = x.shape[1], M.shape[0]
    return torch.einsum("bhtd,hde->bhte", x, M.to(x.dtype)[torch.arange(N, device=x.device) // (N // G)])


def rotation_matches(pos: nn.Module, table: torch.Tensor, perm: torch.Tensor, M: torch.Tensor | None, heads: int,
                     kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``table`` (after the matrix M, when given) rotates a random probe of q and k at a
    few positions exactly as the scheme's own ``rotate`` does: the fast paths never decode with
    a stale copy of a formula (learnable phases, multi-scale bases, ...)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    H = heads
    probe = torch.randn(1, H + kv_heads, 3, head_dim, generator=g, dtype=torch.float64).to(device, dtype)
    at = torch.tensor([0, 1, capacity - 1], device=device)
    try:
        ref_q, ref_k = pos.rotate(probe[:, :H], probe[:, H:], at, at)
    except (RuntimeError, ValueError):  # a scheme whose rotate needs more than positions
        return False
    x = probe if M is None else torch.cat([apply_groups(probe[:, :H], M), apply_groups(probe[:, H:], M)], dim=1)
    paired = torch.view_as_complex(x[..., perm].unflatten(-1, (-1, 2)).contiguous())
    ours = torch.view_as_real(paired * table[at]).flatten(-2)[..., torch.argsort(perm)]
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    return bool(torch.allclose(ours[:, :H], ref_q, atol=tol) and torch.allclose(ours[:, H:], ref_k, atol=tol))


def _permute_heads(w: torch.Tensor, perm: torch.Tensor, start: int, heads: int) -> None:
    """Reorder, in place, the channels of ``heads`` heads of the last dim of ``w`` beginning at
    column ``start`` (each head's ``len(perm)`` channels by ``perm``)."""
    D = len(perm)
    block = w[..., start:start + heads * D].unflatten(-1, (heads, D))
    block.copy_(block[..., perm].clone())


def _project(L: object, x: torch.Tensor, p: int, turns: dict) -> torch.Tensor | None:
    """norm1 and the layer's one fused projection into its output buffer; with RoPE, q rotated
    in place and this position's multipliers returned (looked up once per step and table in
    ``turns``), else None."""
    h = L.norm1(x)
    if L.bqkv is None:
        _mm(h, L.wqkv, out=L.qkv_out)
    else:
        _addmm(L.bqkv, h, L.wqkv, out=L.qkv_out)
    if L.rotary is None:
        return None
    t = turns.get(id(L.rotary))
    if t is None:
        t = turns[id(L.rotary)] = L.rotary[0][p]
    L.q_c.mul_(t)
    return t


class _Layer:
    __slots__ = (
        "Dv",
        "S",
        "act",
        "b_down",
        "b_up",
        "bias",
        "bias_relative",
        "bo",
        "bqkv",
        "hidden",
        "k",
        "k_new",
        "k_new_c",
        "kc",
        "gamma",
        "gate",
        "gnorm",
        "ve",
        "z",
        "norm1",
        "norm2",
        "q",
        "q_c",
        "qkv_out",
        "rotary",
        "v",
        "v_new",
        "w_down",
        "w_up",
        "wo",
        "window",
        "wqkv",
    )

    def __init__(self) -> None:
        self.S = None  # set for retention layers (their state); attention layers keep K/V buffers


class FastDecoder:
    """Decoding state and (in, out)-layout weights of one :class:`~archlab.models.lm.LM`."""

    def __init__(self) -> None:
        self.layers: list[_Layer] = []

    @classmethod
    def build(cls, model: nn.Module, *, batch: int, capacity: int, dtype: torch.dtype,
              device: torch.device, parts: int | None = None) -> FastDecoder | None:
        """The fast path for ``model`` with room for ``capacity`` positions, or ``None`` when
        some part of the model is not one this path reproduces exactly. ``parts``: column
        blocks per weight at batch 1 (default: one per thread on CPU, see :func:`_mm`)."""
        from archlab.models.lm import LM

        if type(model) is not LM or model.training or type(model.embed) is not nn.Embedding:
            return None
        if isinstance(model.drop, nn.Dropout):
            return None
        self = cls()
        self.model = model
        self.B, self.capacity, self.dtype, self.device = batch, capacity, dtype, device
        final = model.norm
        self.final_norm = (lambda x: x) if isinstance(final, nn.Identity) else _norm_fn(final)
        if self.final_norm is None:
            return None
        tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for block in model.blocks:
            attn, ffn = block.mixer, block.ffn
            pre = type(block.residual1) is PreNorm and type(block.residual2) is PreNorm
            if type(attn) is MultiScaleRetention and pre and isinstance(block.drop, nn.Identity):
                L = self._retention_layer(block, tables)
                if L is None:
                    return None
                self.layers.append(L)
                continue
            if type(attn) not in (Attention, LocalAttention) or not pre or not attn.causal \
                    or not isinstance(block.drop, nn.Identity):
                return None
            if type(attn) is LocalAttention and (attn.global_heads or attn.global_tokens):
                return None  # global heads/tokens: generic path
            if attn.persistent or attn.pid is not None or block.ffn is None:
                return None  # persistent slots, PID control, no feed-forward: generic path
            pos = attn.position
            if type(pos) is RotaryEmbedding:
                # one table for every head and for q and k alike: no multi-scale head groups,
                # no query-only phase (both decode through the generic path)
                if getattr(pos, "groups", 1) != 1 or getattr(pos, "phase", None) is not None:
                    return None
                if id(pos) not in tables:
                    tables[id(pos)] = self._rope_tables(pos, attn.head_dim)
                    if tables[id(pos)] is None:
                        return None
            elif pos.uses_rotate or pos.needs_scores or pos.attend is not None:
                return None  # other rotations, CoPE and other score-dependent schemes: generic path
            elif pos.uses_embed and pos is not model.position:
                return None
            L = _Layer()
            # an additive bias (ALiBi, T5, clipped relative, dynamic): the scheme's own, as the mask
            L.bias = pos if pos.uses_bias else None
            L.bias_relative = L.bias is not None and pos.relative_bias
            # local attention: the last `window` keys (the window as it is now: a controller's
            # adapted value included)
            L.window = attn.window if type(attn) is LocalAttention else None
            L.norm1, L.norm2 = _norm_fn(block.norm1), _norm_fn(block.norm2)
            if L.norm1 is None or L.norm2 is None:
                return None
            L.wqkv, L.bqkv = _t(attn.qkv.weight), attn.qkv.bias
            L.wo, L.bo = _t(attn.out.weight), attn.out.bias
            plan = ffn_weights(ffn)
            if plan is None:
                return None
            L.act, L.hidden, L.w_up, L.b_up, L.w_down, L.b_down = plan
            L.rotary = tables.get(id(pos))
            # K and V of this layer for every position: (B, Hk, capacity, D), written in place.
            L.k = torch.empty(batch, attn.kv_heads, capacity, attn.head_dim, dtype=dtype, device=device)
            L.v = torch.empty_like(L.k)
            L.kc = None
            if L.rotary is not None:  # pair the rotary channels of q and k (module docstring)
                perm = L.rotary[1]
                _permute_heads(L.wqkv, perm, 0, attn.heads + attn.kv_heads)
                if L.bqkv is not None:
                    L.bqkv = L.bqkv.detach().clone()
                    _permute_heads(L.bqkv, perm, 0, attn.heads + attn.kv_heads)
                L.kc = torch.view_as_complex(L.k.unflatten(-1, (-1, 2)))
            self.layers.append(L)
        self.attn = [b.mixer for b in model.blocks]
        a0 = self.attn[0]
        self.H, self.Hk, self.D = a0.heads, getattr(a0, "kv_heads", a0.heads), a0.head_dim
        if any((a.heads, getattr(a, "kv_heads", a.heads), a.head_dim) != (self.H, self.Hk, self.D)
               for a in self.attn):
            return None
        self.gqa = self.Hk != self.H
        self.n_qk = (self.H + self.Hk) * self.D
        self.length = 0
        self.positions = torch.arange(capacity, device=device)
        self.head = _t(model.head.weight)
        # One row at a time: weights in column blocks, one per thread (see _mm).
        if parts is None:
            parts = torch.get_num_threads() if device.type == "cpu" else 1
        if batch != 1:
            parts = 1
        for L in self.layers:
            L.wqkv, L.wo, L.w_up, L.w_down = (_split(w, parts) for w in (L.wqkv, L.wo, L.w_up, L.w_down))
        self.head = _split(self.head, parts)
        # q, k, v of the newest position land in a fixed buffer per layer, so the views that
        # RoPE, the cache writes and attention read are made once here, not at every step.
        H, Hk, D, HD = self.H, self.Hk, self.D, self.H * self.D
        for L in self.layers:
            if L.S is not None:  # retention
                self._retention_buffers(L, batch)
                continue
            L.qkv_out, qkv = _out_buffer(L.wqkv, batch)
            L.q = qkv[:, :HD].view(batch, H, 1, D)
            L.k_new = qkv[:, HD:self.n_qk].view(batch, Hk, D)
            L.v_new = qkv[:, self.n_qk:].view(batch, Hk, D)
            if L.rotary is not None:
                L.q_c = torch.view_as_complex(qkv[:, :HD].view(batch, H, D // 2, 2))
                L.k_new_c = torch.view_as_complex(qkv[:, HD:self.n_qk].view(batch, Hk, D // 2, 2))
        return self

    def _rope_tables(self, pos: RotaryEmbedding, head_dim: int):
        """(table, perm) of :func:`rope_table`, verified by :func:`rotation_matches`."""
        spec = rope_table(pos, self.capacity, head_dim, self.dtype, self.device)
        mixer = self.model.blocks[0].mixer
        if spec is None or not rotation_matches(pos, *spec, None, mixer.heads, mixer.kv_heads, head_dim,
                                                self.capacity, self.dtype, self.device):
            return None
        return spec

    # ------------------------------------------------------------------ retention layers

    def _retention_layer(self, block: nn.Module, tables: dict) -> _Layer | None:
        """A retention layer's plan: its projection in (in, out) layout with the key scale
        1/√d_k folded into the k columns and q/k paired for the complex RoPE multiply, the
        per-head decays, the raw state S = Σ γ^(n−m) k_mᵀ[v_m, 1] (B, H, Dk, Dv + 1) and z."""
        ret = block.mixer
        pos = ret.position
        if type(pos) is RotaryEmbedding:
            if getattr(pos, "groups", 1) != 1 or getattr(pos, "phase", None) is not None:
                return None
            if id(pos) not in tables:
                spec = rope_table(pos, self.capacity, ret.head_dim, self.dtype, self.device)
                if spec is None or not rotation_matches(pos, *spec, None, ret.heads, ret.heads, ret.head_dim,
                                                        self.capacity, self.dtype, self.device):
                    return None
                tables[id(pos)] = spec
        elif pos.uses_rotate or pos.uses_embed and pos is not self.model.position:
            return None
        L = _Layer()
        L.norm1, L.norm2 = _norm_fn(block.norm1), _norm_fn(block.norm2)
        plan = ffn_weights(block.ffn)
        if L.norm1 is None or L.norm2 is None or plan is None:
            return None
        L.act, L.hidden, L.w_up, L.b_up, L.w_down, L.b_down = plan
        H, Dk, Dv = ret.heads, ret.head_dim, ret.value_dim
        L.wqkv, L.bqkv = _t(ret.proj.weight), None if ret.proj.bias is None else ret.proj.bias.detach().clone()
        L.wo, L.bo = _t(ret.out.weight), ret.out.bias
        scale = 1.0 / Dk ** 0.5
        L.wqkv[:, H * Dk:2 * H * Dk] *= scale
        if L.bqkv is not None:
            L.bqkv[H * Dk:2 * H * Dk] *= scale
        L.rotary = tables.get(id(pos)) if type(pos) is RotaryEmbedding else None
        if L.rotary is not None:
            _permute_heads(L.wqkv, L.rotary[1], 0, 2 * H)
            if L.bqkv is not None:
                _permute_heads(L.bqkv, L.rotary[1], 0, 2 * H)
        L.gamma = ret.log_gamma.to(self.device, self.dtype).exp()
        L.gnorm = ret.norm
        L.Dv = Dv
        L.S = torch.zeros(self.B, H, Dk, Dv + 1, dtype=self.dtype, device=self.device)
        L.z = torch.zeros(self.B, H, dtype=self.dtype, device=self.device)
        L.window, L.bias = None, None
        return L

    def _retention_buffers(self, L: _Layer, batch: int) -> None:
        H, Dk, Dv = L.S.shape[1], L.S.shape[2], L.Dv
        L.qkv_out, qkv = _out_buffer(L.wqkv, batch)
        L.q = qkv[:, :H * Dk].view(batch, H, Dk)
        L.k_new = qkv[:, H * Dk:2 * H * Dk].view(batch, H, Dk)
        L.v_new = qkv[:, 2 * H * Dk:2 * H * Dk + H * Dv].view(batch, H, Dv)
        L.gate = qkv[:, 2 * H * Dk + H * Dv:]
        if L.rotary is not None:
            L.q_c = torch.view_as_complex(qkv[:, :H * Dk].view(batch, H, Dk // 2, 2))
            L.k_new_c = torch.view_as_complex(qkv[:, H * Dk:2 * H * Dk].view(batch, H, Dk // 2, 2))
        L.ve = torch.ones(batch, H, Dv + 1, dtype=self.dtype, device=self.device)

    def _retention_step(self, L: _Layer, x: torch.Tensor, p: int, turns: dict) -> torch.Tensor:
        """x + MSR(norm1(x)) for the token at position p (one step after the previous one:
        the decay is γ), then the feed-forward. The state is kept as raw sums here (the
        generic path stores S/z); the output is the same function."""
        B, H, Dv = x.shape[0], L.S.shape[1], L.Dv
        t = _project(L, x, p, turns)
        if t is not None:
            L.k_new_c.mul_(t)
        L.ve[..., :Dv].copy_(L.v_new)
        L.S.mul_(L.gamma[:, None, None]).add_(L.k_new.unsqueeze(-1) * L.ve.unsqueeze(-2))
        L.z.mul_(L.gamma).add_(1.0)
        y = torch.matmul(L.q.unsqueeze(-2), L.S).squeeze(-2)  # (B, H, Dv + 1): [q S, q·u]
        inv_r = L.z.rsqrt()
        den = (y[..., -1].abs() * inv_r).clamp_(min=1.0)
        o = y[..., :-1] * (inv_r / den).unsqueeze(-1)
        g = L.gnorm
        o = torch.group_norm(o.reshape(B, H * Dv), g.num_groups, g.weight, g.bias, g.eps)
        u = F.silu(L.gate) * o
        x = (_addmm(x, u, L.wo) if L.bo is None else _addmm(x + L.bo, u, L.wo)).view(B, -1)
        return ffn_step(x, L)

    # ------------------------------------------------------------------ decoding

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt through the model's ordinary cached forward (one batched pass) and
        adopt its keys/values; returns the last position's logits (B, V)."""
        from archlab.models.lm import ModelCache

        # every key of the prompt (a local layer's own cache would keep only its window)
        cache = ModelCache([b.init_cache() if L.S is not None else KVCache()
                            for b, L in zip(self.model.blocks, self.layers)])
        logits = self.model(ids, cache=cache).logits[:, -1]
        T = ids.shape[1]
        for L, c in zip(self.layers, cache.layers):
            if L.S is not None:  # retention: the raw sums S = z·S̄ (rows in the paired order), and z
                S = c.S * c.z[..., None, None]
                L.S.copy_(S if L.rotary is None else S[:, :, L.rotary[1]])
                L.z.copy_(c.z)
                continue
            L.k[:, :, :T] = c.k[:, :, :T] if L.rotary is None else c.k[:, :, :T][..., L.rotary[1]]
            L.v[:, :, :T] = c.v[:, :, :T]
        self.length = T
        return logits

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,) at the next position; returns logits (B, V)."""
        p = self.length
        if p >= self.capacity:
            raise ValueError(f"fast decoder is full ({self.capacity} positions)")
        m = self.model
        B, H, D = self.B, self.H, self.D
        x = torch.embedding(m.embed.weight, tok)
        if m.position.uses_embed:
            x = m.position.embed(x, self.positions[p:p + 1].expand(B))
        n = p + 1
        turns = {}  # each rotary table's multipliers at position p, looked up once per step
        masks = {}  # each relative bias at position p
        for L in self.layers:
            if L.S is not None:
                x = self._retention_step(L, x, p, turns)
                continue
            t = _project(L, x, p, turns)
            if t is not None:  # q is rotated; write the rotated k straight into the cache
                torch.mul(L.k_new_c, t, out=L.kc.select(2, p))
            else:
                L.k.select(2, p).copy_(L.k_new)
            L.v.select(2, p).copy_(L.v_new)
            start = 0 if L.window is None else max(0, n - L.window)
            k, v = L.k.narrow(2, start, n - start), L.v.narrow(2, start, n - start)
            mask = None
            if L.bias is not None:
                # a bias that depends on i − j only is computed once per step for its layers
                key = (id(L.bias), start)
                mask = masks.get(key) if L.bias_relative else None
                if mask is None:
                    mask = L.bias.bias(L.q, k, self.positions[p:p + 1], self.positions[start:n]).to(x.dtype)
                    if L.bias_relative:
                        masks[key] = mask
            y = F.scaled_dot_product_attention(L.q, k, v, attn_mask=mask, enable_gqa=self.gqa)
            y = y.view(B, H * D)
            x = (_addmm(x, y, L.wo) if L.bo is None else _addmm(x + L.bo, y, L.wo)).view(B, -1)
            x = ffn_step(x, L)
        self.length = n
        return _mm(self.final_norm(x), self.head).view(B, -1)
