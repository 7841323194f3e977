"""Positional schemes from the Echo seed, rebuilt so each one really acts (docs/echo_positional.md).

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from archlab.catalog.context import BuildContext
from archlab.catalog.positions import RopeConfig, rope_options
from archlab.nn import positional as P
from archlab.registry import POSITION, ConfigError, PartConfig


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
                   "tests/test_echo_positional.py)",
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
                      "it: same outputs, less memory (tested in tests/test_echo_positional.py)",
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
