"""Rotary position embedding (Su et al., 2021, "RoFormer"), with optional learnable knobs.

Pairs of channels (c, c + r/2) of each head's q and k are rotated by the angle pos·θ_c with
θ_c = base^{−2c/r}, r = the rotary width (``fraction`` of the head dimension, even). Because
R(m)ᵀR(n) = R(n − m), the score q_mᵀk_n depends on positions only through n − m. Channels
past r pass through unchanged (partial rotary, as in GPT-NeoX).

Options (each off by default; off is exactly the formula above):

* ``base_mults`` (multi-scale rotary): the heads are split into G contiguous groups and group
  g uses the base ``base · base_mults[g]``, so some heads see coarse and others fine position
  (cf. the per-head frequency spectra of "Scaling Laws of RoPE-based Extrapolation", Liu et
  al., 2023). Groups follow key/value heads, so grouped-query attention keeps every query
  head on the base of the key head it reads.
* ``learn_freq``: θ_{g,c} = (base·mult_g)^{−2c/r} · exp(δ_{g,c}), δ trainable, init 0: learnable
  offsets in log space around the base schedule (the schedule stays the prior; ``set_base``
  moves it and the learned offsets move with it).
* ``learn_scale``: angle = s · pos · θ with s = exp(ℓ), ℓ trainable, init 0 (s = 1, s > 0).
* ``learn_phase``: the *query* angle is pos·θ_c + φ_{h,c} (φ per query head and frequency,
  trainable, init 0); keys are rotated as usual. Then q'ᵀk' = qᵀR((n − m)θ − φ)k: a learned
  per-head offset of every relative angle. A phase added to *both* q and k would cancel in
  R(mθ + φ)ᵀR(nθ + φ) = R((n − m)θ) and do nothing; separate q/k phases are equivalent to
  their difference, so one phase on the query side is the complete, non-redundant choice.
  Keys are unchanged, so a KV cache stores them exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from archlab.nn.positional.base import PositionalScheme, per_position


def rotary_width(head_dim: int, fraction: float) -> int:
    return int(head_dim * fraction) // 2 * 2


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2·cos.shape[-1] channels of x (…, T, D) by the given per-position angles:
    (x1, x2) -> (x1·cos − x2·sin, x2·cos + x1·sin), the channels past 2·r/2 unchanged."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad):
        return _rotate_autograd(x, cos, sin)  # learnable frequencies/scale: gradients reach the tables
    return _FixedRotation.apply(x, cos, sin)


def _rotate_autograd(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = cos.shape[-1]
    rot = 2 * half
    x1, x2 = x[..., :half], x[..., half:rot]
    parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if rot < x.shape[-1]:
        parts.append(x[..., rot:])
    return torch.cat(parts, dim=-1)


def _rotate_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation written half by half into one output (no concatenation). Each product is
    rounded on its own before the sum, as in the plain formula, so results are bit-identical."""
    half = cos.shape[-1]
    rot = 2 * half
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    x1, x2, y1, y2 = x[..., :half], x[..., half:rot], y[..., :half], y[..., half:rot]
    tmp = torch.empty_like(y1)
    torch.mul(x1, cos, out=y1)
    y1.sub_(torch.mul(x2, sin, out=tmp))
    torch.mul(x2, cos, out=y2)
    y2.add_(torch.mul(x1, sin, out=tmp))
    if rot < x.shape[-1]:
        y[..., rot:] = x[..., rot:]
    return y


class _FixedRotation(torch.autograd.Function):
    """RoPE with fixed angles as one autograd node. The backward is the rotation by −angle
    (gradients: g1·cos + g2·sin and g2·cos − g1·sin), so neither pass builds the slices,
    zero-filled slice gradients and concatenations of the plain formula; about 3.5× faster
    forward + backward at the reference shape, with bit-identical values and gradients
    (tests/test_positional.py). It supports forward mode too (``jvp``), so ``torch.func.jvp``
    runs through a RoPE model (the forward-gradient training of issue #20 needs it)."""

    @staticmethod
    def forward(x, cos, sin):
        return _rotate_into(x, cos, sin)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, cos, sin = inputs
        ctx.save_for_backward(cos, sin)
        ctx.save_for_forward(cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate_into(grad, cos, -sin), None, None

    @staticmethod
    def jvp(ctx, x_tangent, cos_tangent, sin_tangent):
        """Forward mode (torch.func.jvp, forward AD): the rotation is linear in x and the
        angles are fixed, so a tangent of x rotates like x."""
        cos, sin = ctx.saved_tensors
        return _rotate_into(x_tangent, cos, sin)


def params_key(params: Sequence[torch.Tensor]) -> tuple:
    """Identity and in-place version of each tensor: changes whenever an optimiser step,
    ``load_state_dict`` or any in-place write touches one of them (a memo keyed on it is never
    stale)."""
    return tuple((p.data_ptr(), p._version, p.dtype) for p in params)


class RotaryEmbedding(PositionalScheme):
    uses_rotate = True

    def __init__(
        self,
        *,
        head_dim: int,
        base: float = 10000.0,
        fraction: float = 1.0,
        heads: int = 1,
        kv_heads: int | None = None,
        learn_freq: bool = False,
        learn_scale: bool = False,
        learn_phase: bool = False,
        base_mults: Sequence[float] = (),
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rot_dim = rotary_width(head_dim, fraction)
        if self.rot_dim < 2:
            raise ValueError(f"rotary width {self.rot_dim} from head_dim {head_dim} × fraction {fraction} is < 2")
        self.base = float(base)
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.base_mults = tuple(float(m) for m in base_mults) or (1.0,)
        G = len(self.base_mults)
        if self.kv_heads % G or self.heads % G:
            raise ValueError(f"{G} base groups must divide heads {heads} and kv_heads {self.kv_heads}")
        half = self.rot_dim // 2
        # Parameters that change the cos/sin tables (and so must not be read from a memo).
        self.freq_offset = nn.Parameter(torch.zeros(G, half)) if learn_freq else None
        self.log_pos_scale = nn.Parameter(torch.zeros(1)) if learn_scale else None
        self.phase = nn.Parameter(torch.zeros(heads, half)) if learn_phase else None
        self._memo: tuple | None = None

    @property
    def groups(self) -> int:
        return len(self.base_mults)

    def _table_params(self) -> list[torch.Tensor]:
        return [p for p in (self.freq_offset, self.log_pos_scale) if p is not None]

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """θ_c = base^{−2c/r} (· exp(δ_c) with ``learn_freq``) in float64: (r/2,), or (G, r/2)
        with G > 1 base groups. Computed, not a buffer: casting the model to a low precision
        must not round the frequencies (that would blur long-range positions)."""
        expo = -torch.arange(0, self.rot_dim, 2, dtype=torch.float64, device=device) / self.rot_dim
        bases = torch.tensor(self.base_mults, dtype=torch.float64, device=device) * self.base
        inv = bases[:, None] ** expo  # (G, r/2)
        if self.freq_offset is not None:
            inv = inv * self.freq_offset.to(torch.float64).exp()
        return inv[0] if self.groups == 1 else inv

    def set_base(self, base: float) -> None:
        """Change the base (used by learning-dynamics controllers); invalidates cached angles.
        Multi-scale groups keep their multipliers (group g: base · base_mults[g]); learned
        frequency offsets stay relative to the new schedule."""
        self.base = float(base)
        self._memo = None

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """s · pos · θ for every position and frequency in float64: (…, T, r/2), or
        (…, G, T, r/2) with G > 1 base groups."""
        pos = positions.to(torch.float64)
        if self.log_pos_scale is not None:
            pos = pos * self.log_pos_scale.to(torch.float64).exp()
        inv = self.inv_freq(positions.device)
        if self.groups == 1:
            return pos.unsqueeze(-1) * inv
        return pos[..., None, :, None] * inv[:, None, :]

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables broadcastable over (B, heads, T, r/2): (1 or B, 1 or G, T, r/2);
        float64 for a float64 model, else float32 (cast to q's dtype later). Key-side tables:
        no phase."""
        dt = torch.float64 if dtype == torch.float64 else torch.float32
        # All layers sharing this scheme get the same positions tensor within one forward:
        # computing cos/sin once per forward instead of once per layer.
        # Under torch.compile the graph is traced once and Python-side state would force a
        # recompile, so the memo is only used eagerly. Learnable tables are memoised only when
        # no gradient is wanted, keyed on their versions, so an update is never served stale.
        # The memo is keyed on the positions tensor's identity *and* its in-place version, so a
        # caller who rewrites a positions buffer in place (pos.add_(1), pos[:] = …) gets fresh
        # tables. ``Tensor._version`` is the autograd version counter that every in-place write
        # bumps; PyTorch has no public API for it (params_key relies on it the same way). An
        # inference tensor (created under torch.inference_mode) has no version counter, so its
        # tables are not memoised: an in-place write to it could not be detected.
        eager = not torch.compiler.is_compiling()
        tp = self._table_params()
        need_grad = torch.is_grad_enabled() and any(p.requires_grad for p in tp)
        use_memo = eager and not need_grad and not positions.is_inference()
        key = (positions._version, params_key(tp)) if use_memo else None  # data pointers exist only outside a trace
        memo = self._memo
        if use_memo and memo is not None and memo[0] is positions and memo[1] == (dt, key):
            return memo[2], memo[3]
        ang = self.angles(positions)
        if self.groups == 1:
            cos, sin = per_position(ang.cos().to(dt)), per_position(ang.sin().to(dt))
        else:
            cos, sin = ang.cos().to(dt), ang.sin().to(dt)
            if positions.dim() == 1:
                cos, sin = cos[None], sin[None]
        if use_memo:
            self._memo = (positions, (dt, key), cos, sin)
        return cos, sin

    def _for_heads(self, cos: torch.Tensor, sin: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group tables (…, G, T, r/2) -> per-head tables for a tensor with n heads."""
        G = cos.shape[-3]
        if G == 1 or G == n:
            return cos, sin
        if n % G:
            raise ValueError(f"a tensor with {n} heads cannot be split into the {G} base groups of multi-scale "
                             "rotary (every group needs whole heads)")
        return cos.repeat_interleave(n // G, dim=-3), sin.repeat_interleave(n // G, dim=-3)

    def _query_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the per-head query phase: cos(a + φ) and sin(a + φ) by the angle-sum formulas
        (so the key tables, memoised or not, are reused)."""
        if self.phase is None:
            return cos, sin
        ph = self.phase.to(cos.dtype)[:, None, :]  # (H, 1, r/2)
        pc, ps = ph.cos(), ph.sin()
        return cos * pc - sin * ps, sin * pc + cos * ps

    def rotate(self, q, k, q_pos, k_pos):
        kcos, ksin = self.cos_sin(k_pos, k.dtype)
        qcos, qsin = (kcos, ksin) if q_pos is k_pos else self.cos_sin(q_pos, q.dtype)
        qcos, qsin = self._for_heads(qcos, qsin, q.shape[1])
        kcos, ksin = self._for_heads(kcos, ksin, k.shape[1])
        qcos, qsin = self._query_tables(qcos, qsin)
        return apply_rotary(q, qcos, qsin), apply_rotary(k, kcos, ksin)

    def extra_repr(self) -> str:
        opts = [f"head_dim={self.head_dim}", f"rot_dim={self.rot_dim}", f"base={self.base:g}"]
        if self.groups > 1:
            opts.append(f"base_mults={list(self.base_mults)}")
        return ", ".join(opts)
