"""A lean greedy-decoding path for Echo's decoder: one token per row and step, few large ops.

The arithmetic of :class:`~archlab.models.echo.EchoDecoder`'s cached forward, without its
per-step bookkeeping (the LM's version and its reasons: :mod:`archlab.models.fastdecode`,
whose helpers this uses):

* self-attention per layer: norm → one product for q, k, v → the rotation as one complex
  multiply on q and on the new key, written straight into a preallocated key buffer → fused
  SDPA over the valid prefix, with an additive bias (the clipped relative bias of
  ``max_rel_dist``) read as a row of a table built once → one ``addmm`` into the residual;
* cross-attention: the memory's keys and values computed once per utterance batch (rotated at
  the frame positions when ``cross_attention`` is set, by the scheme's own ``rotate``), the
  query rotated at the token's position, the bias row read from a table built once;
* **rotations before RoPE folded into the projections.** At inference a Givens product (or an
  orthogonal matrix) M is a fixed (D, D) matrix per head group and acts as q ↦ q·M before
  RoPE, on q and k alike; (h·W)·M = h·(W·M), so the q and k columns of the projection are
  multiplied by M once per call, and the step does plain RoPE. The same fold applies to the
  cross-attention's query; its keys are rotated by the scheme itself.

The weights' layouts, the folded rotations and the rotary and bias tables depend only on the
decoder's parameters and the call's sizes, so they are built once (a ``_Plan``) and reused by
every call with the same parameters (data pointers and in-place versions: an optimiser step
invalidates it), capacity, memory length, dtype, device and block count; it is kept on the
model as ``_fast_plan`` (one entry, a copy of the decoder's weights). Per call only the
memory's keys and values and the step buffers are made.

Which decoders qualify is decided structurally (:meth:`EchoFastDecoder.build` returns ``None``
otherwise and :func:`~archlab.models.echo.greedy_decode` takes the generic path): the
rotation must be RoPE with one table for every head (a multi-scale or query-phase RoPE is
generic), optionally preceded by a fixed matrix (``givens_rope``, ``orthogonal_rope``); biases
must depend on positions only; no scheme may need the scores (CoPE) or the hidden state
(conditional rotations); mixers must be plain attention with pre-norm and no dropout. The
rotation and the fold are checked once per call against the scheme's own ``rotate`` on a
probe. Equivalence with the generic path, token for token and logit for logit, is tested in
float64 (tests/test_echo_fastdecode.py).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from archlab.models.fastdecode import (_addmm, _mm, _norm_fn, _out_buffer, _permute_heads, _split, _t, apply_groups,
                                       ffn_step, ffn_weights, rope_table, rotation_matches)
from archlab.nn.mixers.attention import Attention
from archlab.nn.positional.rope import RotaryEmbedding, params_key
from archlab.nn.positional.rotations import RotatedRotary
from archlab.nn.positional.stack import PositionStack
from archlab.nn.residual import PreNorm


def _parts(pos: nn.Module) -> list[nn.Module]:
    return list(pos.parts) if isinstance(pos, PositionStack) else [pos]


def _rotary(pos: nn.Module) -> tuple[RotaryEmbedding | None, bool]:
    """(the rotating part or None, whether this path reproduces the scheme)."""
    if pos.needs_scores or pos.uses_input or pos.attend is not None or pos.uses_embed:
        return None, False
    rot = [p for p in _parts(pos) if p.uses_rotate]
    if not rot:
        return None, True
    if len(rot) > 1 or not isinstance(rot[0], RotaryEmbedding):
        return None, False
    r = rot[0]
    if type(r) not in (RotaryEmbedding, RotatedRotary) or getattr(r, "groups", 1) != 1 or r.phase is not None:
        return None, False
    return r, True


def _matrix(r: RotaryEmbedding) -> torch.Tensor | None:
    """The (G, D, D) matrix a RotatedRotary applies before RoPE (None for plain RoPE)."""
    return r.rotation().detach() if isinstance(r, RotatedRotary) else None


def _fold(w: torch.Tensor, M: torch.Tensor, start: int, heads: int, D: int) -> None:
    """w (in, out): the columns of ``heads`` heads from ``start`` multiplied by M (head h by
    M[h // (heads / G)]), in place."""
    block = w[:, start:start + heads * D].unflatten(-1, (heads, D))  # (in, heads, D)
    block.copy_(apply_groups(block.transpose(0, 1)[None], M)[0].transpose(0, 1))


def _bias_table(pos: nn.Module, q_len: int, k_len: int, H: int, D: int, dtype, device) -> torch.Tensor | None:
    """The scheme's additive bias for every (query, key) position pair, (…, H, q_len, k_len)."""
    if not pos.uses_bias:
        return None
    q = torch.zeros(1, H, q_len, D, dtype=dtype, device=device)
    k = torch.zeros(1, H, k_len, D, dtype=dtype, device=device)
    b = pos.bias(q, k, torch.arange(q_len, device=device), torch.arange(k_len, device=device))
    return None if b is None else b.to(dtype)


class _Layer:
    __slots__ = ("norm1", "norm_x", "norm2", "wqkv", "wo", "rot", "bias", "k", "v", "kc", "qkv_out", "q", "q_c",
                 "k_new", "k_new_c", "v_new", "wq_x", "wo_x", "rot_x", "bias_x", "xk", "xv", "xq_out", "xq",
                 "xq_c", "act", "hidden", "w_up", "b_up", "w_down", "b_down")


class _Plan:
    """What a decoder's weights and the call's sizes fix: the (in, out)-layout weights with the
    rotations folded and the RoPE pairs permuted, the rotary tables and the bias tables. Built
    once per weights version, capacity, memory length, dtype, device and block count, and
    reused by every decoding call that matches (``EchoFastDecoder.build``)."""

    __slots__ = ("layers", "final_norm", "head", "H", "D")


def _rotation_into(r: RotaryEmbedding, w: torch.Tensor, starts: tuple[int, ...], H: int, D: int, capacity: int,
                   dtype, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The scheme's RoPE table over ``capacity`` positions, checked against its own ``rotate``,
    after folding its fixed matrix (if any) into the H heads of (in, out) weight ``w`` at each
    column offset in ``starts`` (consecutive blocks) and pairing their channels; None when
    this path cannot reproduce the scheme."""
    spec = rope_table(r, capacity, D, dtype, device)
    M = _matrix(r)
    if spec is None or not rotation_matches(r, *spec, M, H, H, D, capacity, dtype, device):
        return None
    if M is not None:  # each head h by its group's matrix
        for start in starts:
            _fold(w, M, start, H, D)
    _permute_heads(w, spec[1], starts[0], len(starts) * H)
    return spec


def _plan(model: nn.Module, *, S: int, capacity: int, dtype, device, parts: int) -> _Plan | None:
    dec = model.decoder
    plan = _Plan()
    plan.final_norm = _norm_fn(dec.norm)
    if plan.final_norm is None:
        return None
    plan.layers = []
    for block in dec.blocks:
        attn, cross, ffn = block.mixer, block.cross, block.ffn
        if type(attn) is not Attention or type(block.residual) is not PreNorm or not attn.causal \
                or attn.persistent or not isinstance(block.drop, nn.Identity) or attn.kv_heads != attn.heads \
                or cross.kv_heads != cross.heads or attn.head_dim != cross.head_dim:
            return None
        H, D = attn.heads, attn.head_dim
        L = _Layer()
        L.norm1, L.norm_x, L.norm2 = _norm_fn(block.norm1), _norm_fn(block.norm_cross), _norm_fn(block.norm2)
        if None in (L.norm1, L.norm_x, L.norm2) or any(m.bias is not None for m in
                                                       (attn.qkv, attn.out, cross.q, cross.out)):
            return None
        # self-attention: rotation (folded matrix + RoPE table) and bias table
        r, ok = _rotary(attn.position)
        if not ok:
            return None
        L.wqkv, L.wo = _t(attn.qkv.weight), _t(attn.out.weight)
        L.rot = None
        if r is not None:  # the q heads, then the k heads
            L.rot = _rotation_into(r, L.wqkv, (0, H * D), H, D, capacity, dtype, device)
            if L.rot is None:
                return None
        L.bias = _bias_table(attn.position, capacity, capacity, H, D, dtype, device)
        # cross-attention: the query side (the memory's keys are the call's)
        rx, ok = _rotary(cross.position)
        if not ok:
            return None
        L.wq_x, L.wo_x = _t(cross.q.weight), _t(cross.out.weight)
        L.rot_x = None
        if rx is not None:
            L.rot_x = _rotation_into(rx, L.wq_x, (0,), H, D, max(capacity, S), dtype, device)
            if L.rot_x is None:
                return None
        L.bias_x = _bias_table(cross.position, capacity, S, H, D, dtype, device)
        ffn_plan = ffn_weights(ffn)
        if ffn_plan is None:
            return None
        L.act, L.hidden, L.w_up, L.b_up, L.w_down, L.b_down = ffn_plan
        L.wqkv, L.wo, L.wq_x, L.wo_x, L.w_up, L.w_down = (
            _split(w, parts) for w in (L.wqkv, L.wo, L.wq_x, L.wo_x, L.w_up, L.w_down))
        plan.layers.append(L)
    plan.H, plan.D = dec.blocks[0].mixer.heads, dec.blocks[0].mixer.head_dim
    if any((b.mixer.heads, b.mixer.head_dim) != (plan.H, plan.D) for b in dec.blocks):
        return None
    plan.head = _split(_t(dec.embed.weight), parts)
    return plan


class EchoFastDecoder:
    """Decoding state and (in, out)-layout weights of one EchoModel's decoder over one memory."""

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, memory: torch.Tensor, *, capacity: int,
              parts: int | None = None) -> EchoFastDecoder | None:
        dec = model.decoder
        if model.training or type(dec.embed) is not nn.Embedding or capacity > dec.n_ctx:
            return None
        B, S, _ = memory.shape
        dtype, device = memory.dtype, memory.device
        if parts is None:
            parts = torch.get_num_threads() if device.type == "cpu" else 1
        if B != 1:
            parts = 1
        # The weight plan is reused while the decoder's parameters are unchanged (their data
        # pointers and in-place versions: an optimiser step or load_state_dict invalidates it).
        key = (params_key([*dec.parameters(), *dec.buffers()]), capacity, S, dtype, device, parts)
        memo = getattr(model, "_fast_plan", None)
        if memo is not None and memo[0] == key:
            plan = memo[1]
        else:
            plan = _plan(model, S=S, capacity=capacity, dtype=dtype, device=device, parts=parts)
            model._fast_plan = (key, plan)
        if plan is None:
            return None
        self = cls()
        self.dec, self.B, self.capacity, self.dtype = dec, B, capacity, dtype
        self.final_norm, self.head, self.H, self.D = plan.final_norm, plan.head, plan.H, plan.D
        H, D, HD = self.H, self.D, self.H * self.D
        self_pos = torch.arange(capacity, device=device)
        self.layers = []
        for P, block in zip(plan.layers, dec.blocks):
            L = copy.copy(P)  # the plan's weights and tables, this call's buffers
            L.k = torch.empty(B, H, capacity, D, dtype=dtype, device=device)
            L.v = torch.empty_like(L.k)
            L.kc = torch.view_as_complex(L.k.unflatten(-1, (-1, 2))) if L.rot is not None else None
            cross = block.cross
            k, v = cross.memory_kv(memory)
            if L.rot_x is not None:  # the memory's keys rotated by the scheme itself, then paired
                _, k = cross.position.rotate(torch.zeros_like(k[:, :, :1]), k, self_pos[:1],
                                             torch.arange(S, device=device))
                k = k[..., L.rot_x[1]]
            L.xk, L.xv = k.contiguous(), v.contiguous()
            L.qkv_out, qkv = _out_buffer(L.wqkv, B)
            L.q = qkv[:, :HD].view(B, H, 1, D)
            L.k_new = qkv[:, HD:2 * HD].view(B, H, D)
            L.v_new = qkv[:, 2 * HD:].view(B, H, D)
            L.xq_out, xq = _out_buffer(L.wq_x, B)
            L.xq = xq.view(B, H, 1, D)
            if L.rot is not None:
                L.q_c = torch.view_as_complex(qkv[:, :HD].view(B, H, D // 2, 2))
                L.k_new_c = torch.view_as_complex(qkv[:, HD:2 * HD].view(B, H, D // 2, 2))
            if L.rot_x is not None:
                L.xq_c = torch.view_as_complex(xq.view(B, H, D // 2, 2))
            self.layers.append(L)
        self.positions = torch.arange(capacity, device=device)
        self.length = 0
        return self

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,) at the next position; returns logits (B, V)."""
        p = self.length
        if p >= self.capacity:
            raise ValueError(f"fast decoder is full ({self.capacity} positions)")
        dec, B, H, D = self.dec, self.B, self.H, self.D
        x = torch.embedding(dec.embed.weight, tok)
        if dec.position is not None:
            x = dec.position.embed(x[:, None], self.positions[p:p + 1])[:, 0]
        n = p + 1
        for L in self.layers:
            _mm(L.norm1(x), L.wqkv, out=L.qkv_out)
            if L.rot is not None:
                t = L.rot[0][p]
                L.q_c.mul_(t)
                torch.mul(L.k_new_c, t, out=L.kc.select(2, p))
            else:
                L.k.select(2, p).copy_(L.k_new)
            L.v.select(2, p).copy_(L.v_new)
            mask = None if L.bias is None else L.bias[..., p:p + 1, :n]
            y = F.scaled_dot_product_attention(L.q, L.k[:, :, :n], L.v[:, :, :n], attn_mask=mask)
            x = _addmm(x, y.view(B, H * D), L.wo).view(B, -1)
            _mm(L.norm_x(x), L.wq_x, out=L.xq_out)
            if L.rot_x is not None:
                L.xq_c.mul_(L.rot_x[0][p])
            mask = None if L.bias_x is None else L.bias_x[..., p:p + 1, :]
            y = F.scaled_dot_product_attention(L.xq, L.xk, L.xv, attn_mask=mask)
            x = _addmm(x, y.view(B, H * D), L.wo_x).view(B, -1)
            x = ffn_step(x, L)
        self.length = n
        return _mm(self.final_norm(x), self.head).view(B, -1)
