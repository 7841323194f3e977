"""Positional schemes by kind: absolute tables, RoPE, biases, the rotary variants, CoPE.

Rotary variants (rebuilt so each one really acts; docs/rotary_variants.md):
* ``givens_rope`` / ``orthogonal_rope``: an orthogonal transform of q and k *before* RoPE
  (Givens rounds; a full orthogonal matrix, exact or penalised; or both).
* ``conditional_rope``: the rotation is predicted from each token's hidden state.
* ``relative``: a learned per-head bias per clipped signed distance.
* ``dynamic``: a per-head bias from a small MLP over the signed log-distance.
* ``learned_sinusoidal``: a trainable absolute table initialised with normalised sinusoids.

The rotary options (learnable frequencies / phase / scale, multi-scale bases) are knobs of
``rope`` itself (:class:`~archlab.catalog.positions.RopeConfig`) and are inherited by the
three rotation kinds, which are RoPE plus a pre-rotation.

``output_neutral`` (a ClassVar) names knobs that by design do not change the logits, with the
reason; the shared knob test skips them and their own tests prove their effect.

CoPE: contextual position encoding, the positional scheme ``cope``.

    model:
      position: {kind: cope, max_pos: 64}

Per layer: ``model.layers.overrides: {"0,1": {position: {kind: cope}}}`` gives each listed
layer its own table (the model-wide ``position`` is one table shared by all layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from archlab.catalog.context import BuildContext
from archlab.nn import positional as P
from archlab.nn.positional.cope import ContextualPosition
from archlab.nn.positional.rope import rotary_width
from archlab.registry import POSITION, ConfigError, PartConfig


@dataclass
class NoneConfig(PartConfig):
    pass


@dataclass
class LearnedConfig(PartConfig):
    embed_only: ClassVar[bool] = True

    def check(self, ctx: dict, where: str) -> None:
        m, t = ctx["model"], ctx["train"]
        if m.max_seq_len < t.seq_len:
            raise ConfigError(f"{where}: learned table has model.max_seq_len={m.max_seq_len} positions "
                              f"but train.seq_len={t.seq_len}; raise model.max_seq_len")


@dataclass
class SinusoidalConfig(PartConfig):
    embed_only: ClassVar[bool] = True
    base: float = 10000.0
    scale: float = 1.0

    def validate(self, where: str) -> None:
        if self.base <= 1.0:  # as for rope: wavelengths grow as base^(2i/dim), so base ≤ 1 collapses them
            raise ConfigError(f"{where}.base: must be > 1, got {self.base}")
        if self.scale <= 0:
            raise ConfigError(f"{where}.scale: must be positive (kind 'none' is no position signal), got {self.scale}")


@dataclass
class RopeConfig(PartConfig):
    base: float = 10000.0
    fraction: float = 1.0  # share of each head's channels that rotate
    # Options (docs/rotary_variants.md); off = plain RoPE.
    learn_freq: bool = False  # θ_c · exp(δ_c), δ trainable (log-space offsets), init 0
    learn_scale: bool = False  # positions × s, s = exp(ℓ) trainable, init 1
    learn_phase: bool = False  # query angle + φ_{h,c} (query side only: a shared q/k phase cancels)
    base_mults: list[float] = field(default_factory=list)  # multi-scale: head group g uses base · base_mults[g]

    def validate(self, where: str) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{where}.fraction: must be in (0, 1], got {self.fraction}")
        if self.base <= 1.0:
            raise ConfigError(f"{where}.base: must be > 1, got {self.base}")
        if any(self.base * m <= 1.0 for m in self.base_mults):
            raise ConfigError(f"{where}.base_mults: every base · mult must be > 1, got {self.base_mults}")

    def check(self, ctx: dict, where: str) -> None:
        hd = ctx["model"].resolved_head_dim()
        if rotary_width(hd, self.fraction) < 2:
            raise ConfigError(f"{where}.fraction: {self.fraction} of head_dim {hd} leaves fewer than 2 rotary channels")
        m = ctx["model"]
        g, kv = len(self.base_mults), m.resolved_kv_heads()
        if g and kv % g:
            raise ConfigError(f"{where}.base_mults: {g} head groups must divide the {kv} key/value heads "
                              "(each group holds whole key heads and the query heads that read them)")


@dataclass
class AlibiConfig(PartConfig):
    pass


@dataclass
class T5Config(PartConfig):
    num_buckets: int = 32
    max_distance: int = 128

    def validate(self, where: str) -> None:
        if self.num_buckets < 4:
            raise ConfigError(f"{where}.num_buckets: must be ≥ 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 2:
            # half the buckets are exact distances; the log-spaced rest need room above them
            raise ConfigError(f"{where}.max_distance: must exceed num_buckets/2 = {self.num_buckets // 2}, "
                              f"got {self.max_distance}")


@POSITION.register("none", NoneConfig, "NoPE: no positional signal")
def _none(cfg: NoneConfig, ctx: BuildContext):
    return P.NoPosition()


@POSITION.register("learned", LearnedConfig, "learned absolute embedding table")
def _learned(cfg: LearnedConfig, ctx: BuildContext):
    return P.LearnedAbsolute(dim=ctx.dim, max_len=ctx.max_seq_len, init_std=ctx.init_std)


@POSITION.register("sinusoidal", SinusoidalConfig, "fixed sinusoidal embedding")
def _sinusoidal(cfg: SinusoidalConfig, ctx: BuildContext):
    return P.Sinusoidal(dim=ctx.dim, base=cfg.base, scale=cfg.scale)


@POSITION.register("rope", RopeConfig, "rotary position embedding")
def _rope(cfg: RopeConfig, ctx: BuildContext):
    return P.RotaryEmbedding(**rope_options(cfg, ctx))


def rope_options(cfg: RopeConfig, ctx: BuildContext) -> dict:
    """RotaryEmbedding keyword arguments from a RopeConfig (shared by the kinds that extend rope)."""
    return {"head_dim": ctx.head_dim, "base": cfg.base, "fraction": cfg.fraction, "heads": ctx.heads,
            "kv_heads": ctx.kv_heads, "learn_freq": cfg.learn_freq, "learn_scale": cfg.learn_scale,
            "learn_phase": cfg.learn_phase, "base_mults": cfg.base_mults}


@POSITION.register("alibi", AlibiConfig, "ALiBi linear distance bias")
def _alibi(cfg: AlibiConfig, ctx: BuildContext):
    return P.ALiBi(heads=ctx.heads, bidirectional=not ctx.causal)


@POSITION.register("t5", T5Config, "T5 bucketed relative bias")
def _t5(cfg: T5Config, ctx: BuildContext):
    return P.T5RelativeBias(heads=ctx.heads, num_buckets=cfg.num_buckets, max_distance=cfg.max_distance,
                            bidirectional=not ctx.causal)


# ----------------------------------------------------------------------------- rotary variants


def _check_rounds(value: int, head_dim: int, where: str, *, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if value != -1 and not low <= value <= head_dim - 1:
        none = "0 (none), " if zero_ok else ""
        raise ConfigError(f"{where}: {value} Givens rounds for head_dim {head_dim}; allowed: {none}1 … "
                          f"{head_dim - 1}, or -1 (a full tournament, head_dim − 1 rounds)")


def _check_even(ctx: dict, where: str) -> int:
    hd = ctx["model"].resolved_head_dim()
    if hd % 2:
        raise ConfigError(f"{where}: Givens rotations pair channels; head_dim {hd} must be even")
    return hd


@dataclass
class GivensRopeConfig(RopeConfig):
    rounds: int = -1  # Givens rounds of disjoint pairs; -1: all head_dim − 1 (every pair once)
    scope: Literal["shared", "head"] = "shared"  # one rotation for all heads, or one per key/value head

    def check(self, ctx: dict, where: str) -> None:
        super().check(ctx, where)
        _check_rounds(self.rounds, _check_even(ctx, where), f"{where}.rounds")


@dataclass
class OrthogonalRopeConfig(RopeConfig):
    output_neutral: ClassVar[dict[str, str]] = {
        "penalty": "selects exact (0) or penalised (> 0) orthogonality of the same initial matrix, so the "
                   "initial logits agree; it changes the parameterisation and out.loss (tested in "
                   "tests/test_rotary_variants.py)",
    }
    penalty: float = 0.0  # 0: exactly orthogonal R = R0·exp(A − Aᵀ); λ > 0: free R + λ‖RRᵀ − I‖²_F in the loss
    givens_rounds: int = 0  # Givens rounds before R (x·∏G_k·R): 0 none, -1 all head_dim − 1
    scope: Literal["shared", "head"] = "shared"

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.penalty < 0:
            raise ConfigError(f"{where}.penalty: must be ≥ 0 (0: exact orthogonality), got {self.penalty}")

    def check(self, ctx: dict, where: str) -> None:
        super().check(ctx, where)
        if self.givens_rounds:
            _check_rounds(self.givens_rounds, _check_even(ctx, where), f"{where}.givens_rounds", zero_ok=True)


@dataclass
class ConditionalRopeConfig(RopeConfig):
    rounds: int = 2  # Givens rounds applied per token (-1: all head_dim − 1)
    hidden: int = 0  # 0: angles = linear(x); > 0: a SiLU MLP with this hidden width
    scope: Literal["shared", "head"] = "shared"

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.hidden < 0:
            raise ConfigError(f"{where}.hidden: must be ≥ 0 (0: linear), got {self.hidden}")

    def check(self, ctx: dict, where: str) -> None:
        super().check(ctx, where)
        _check_rounds(self.rounds, _check_even(ctx, where), f"{where}.rounds")


@dataclass
class RelativeConfig(PartConfig):
    max_rel_dist: int = 64  # distances beyond ±max_rel_dist share the last entry

    def validate(self, where: str) -> None:
        if self.max_rel_dist < 1:
            raise ConfigError(f"{where}.max_rel_dist: must be ≥ 1, got {self.max_rel_dist}")


@dataclass
class DynamicConfig(PartConfig):
    hidden: int = 32  # MLP width
    depth: int = 2  # hidden layers

    def validate(self, where: str) -> None:
        for name in ("hidden", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be ≥ 1, got {getattr(self, name)}")


@dataclass
class LearnedSinusoidalConfig(PartConfig):
    embed_only: ClassVar[bool] = True
    output_neutral: ClassVar[dict[str, str]] = {
        "checkpoint": "activation checkpointing recomputes the position signal in backward instead of saving "
                      "it: same outputs, less memory (tested in tests/test_rotary_variants.py)",
    }
    scale: float = 1.0  # ‖position vector‖ = scale · init_std · √dim (a token embedding's norm at init)
    checkpoint: bool = False

    def validate(self, where: str) -> None:
        if self.scale <= 0:
            raise ConfigError(f"{where}.scale: must be positive, got {self.scale}")

    def check(self, ctx: dict, where: str) -> None:
        m, t = ctx["model"], ctx["train"]
        if m.max_seq_len < t.seq_len:
            raise ConfigError(f"{where}: learned table has model.max_seq_len={m.max_seq_len} positions "
                              f"but train.seq_len={t.seq_len}; raise model.max_seq_len")


@POSITION.register("givens_rope", GivensRopeConfig, "Givens rotations (trainable angles) before RoPE")
def _givens_rope(cfg: GivensRopeConfig, ctx: BuildContext):
    return P.RotatedRotary(givens_rounds=cfg.rounds, scope=cfg.scope, **rope_options(cfg, ctx))


@POSITION.register("orthogonal_rope", OrthogonalRopeConfig, "a full orthogonal matrix (exact or penalised) before RoPE")
def _orthogonal_rope(cfg: OrthogonalRopeConfig, ctx: BuildContext):
    return P.RotatedRotary(givens_rounds=cfg.givens_rounds, orthogonal=True, penalty=cfg.penalty, scope=cfg.scope,
                           **rope_options(cfg, ctx))


@POSITION.register("conditional_rope", ConditionalRopeConfig, "input-dependent Givens rotations before RoPE")
def _conditional_rope(cfg: ConditionalRopeConfig, ctx: BuildContext):
    return P.ConditionalRotary(dim=ctx.dim, rounds=cfg.rounds, hidden=cfg.hidden, scope=cfg.scope,
                               **rope_options(cfg, ctx))


@POSITION.register("relative", RelativeConfig, "learned per-head bias per clipped signed distance")
def _relative(cfg: RelativeConfig, ctx: BuildContext):
    return P.ClippedRelativeBias(heads=ctx.heads, max_rel_dist=cfg.max_rel_dist, bidirectional=not ctx.causal,
                                 init_std=ctx.init_std)


@POSITION.register("dynamic", DynamicConfig, "per-head bias from an MLP over the signed log-distance")
def _dynamic(cfg: DynamicConfig, ctx: BuildContext):
    return P.DynamicPositionBias(heads=ctx.heads, hidden=cfg.hidden, depth=cfg.depth, bidirectional=not ctx.causal,
                                 init_std=ctx.init_std)


@POSITION.register("learned_sinusoidal", LearnedSinusoidalConfig, "trainable table initialised with normalised sinusoids")
def _learned_sinusoidal(cfg: LearnedSinusoidalConfig, ctx: BuildContext):
    return P.LearnedSinusoidal(dim=ctx.dim, max_len=ctx.max_seq_len, scale=cfg.scale, init_std=ctx.init_std,
                               checkpoint=cfg.checkpoint)


# ----------------------------------------------------------------------------- CoPE


@dataclass
class CopeConfig(PartConfig):
    max_pos: int = 64  # p_max: table size; counted positions are capped at max_pos − 1
    scale_pos_logits: bool = True  # (q·k + q·e)/√d as the authors' code; False: q·k/√d + q·e (the formula)
    scale_gate_logits: bool = True  # gates σ(q·k/√d) as the authors' code; False: σ(q·k)
    rope_fraction: float = 0.0  # > 0: also RoPE (base 10000) on this share of each head's channels

    def validate(self, where: str) -> None:
        if self.max_pos < 2:
            raise ConfigError(f"{where}.max_pos: must be ≥ 2, got {self.max_pos}")
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ConfigError(f"{where}.rope_fraction: must be in [0, 1] (0: no RoPE), got {self.rope_fraction}")

    def check(self, ctx: dict, where: str) -> None:
        hd = ctx["model"].resolved_head_dim()
        if self.rope_fraction > 0 and rotary_width(hd, self.rope_fraction) < 2:
            raise ConfigError(f"{where}.rope_fraction: {self.rope_fraction} of head_dim {hd} leaves fewer than "
                              "2 rotary channels; use 0 (no RoPE) or a larger share")


@POSITION.register("cope", CopeConfig, "CoPE: contextual position encoding (gated counts of keys)")
def _cope(cfg: CopeConfig, ctx: BuildContext):
    if not ctx.causal:
        raise ConfigError("position.kind: 'cope' counts the keys between a key and its query, which is defined "
                          "for causal attention only; use another scheme for bidirectional attention")
    return ContextualPosition(head_dim=ctx.head_dim, max_pos=cfg.max_pos, scale_pos_logits=cfg.scale_pos_logits,
                              scale_gate_logits=cfg.scale_gate_logits, rope_fraction=cfg.rope_fraction,
                              init_std=ctx.init_std)
