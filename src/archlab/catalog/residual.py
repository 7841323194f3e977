"""Residual policies by kind (``norm.placement`` of a layer, a bare kind or ``{kind, knobs}``):
where the norm sits around each sublayer's residual update and how the update joins the
stream."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from archlab.catalog.context import BuildContext
from archlab.nn.residual import LAuReL, PostNorm, PreNorm
from archlab.registry import RESIDUAL, ConfigError, PartConfig


@RESIDUAL.register("pre", PartConfig, "pre-norm: x + f(N(x))")
def _pre(cfg: PartConfig, ctx: BuildContext):
    return PreNorm()


@RESIDUAL.register("post", PartConfig, "post-norm: N(x + f(x)) (the original Transformer)")
def _post(cfg: PartConfig, ctx: BuildContext):
    return PostNorm()


@dataclass
class MixLNConfig(PartConfig):
    # the fraction of the stack, from the bottom, that is post-norm: layers 0 … ⌊α·depth⌋ − 1
    alpha: float = 0.25

    def validate(self, where: str) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"{where}.alpha: the post-norm fraction must be in [0, 1], got {self.alpha}")


def mixln_is_post(alpha: float, layer: int, depth: int) -> bool:
    """Mix-LN's rule (Li et al., 2024, arXiv 2412.13795): post-norm below ⌊α·L⌋, pre-norm above.
    The small epsilon keeps ⌊0.25 · 12⌋ = 3 whatever binary rounding does to 0.25 · 12."""
    return layer < math.floor(alpha * depth + 1e-9)


@RESIDUAL.register("mixln", MixLNConfig,
                   "Mix-LN: post-norm for the first ⌊α·depth⌋ layers, pre-norm for the rest")
def _mixln(cfg: MixLNConfig, ctx: BuildContext):
    return PostNorm() if mixln_is_post(cfg.alpha, ctx.layer, ctx.depth) else PreNorm()


@dataclass
class LAuReLConfig(PartConfig):
    rw: bool = True  # learned α, β: α·f(x) + β·g
    rank: int = 0  # low-rank B·A (LR; with previous > 0 the rank of each h_j; 0: identity h_j)
    previous: int = 0  # PA: residual-stream states read (this sublayer's input included; the paper: 3)
    norm: Literal["pre", "post"] = "pre"  # where each sublayer's norm sits

    def validate(self, where: str) -> None:
        if self.rank < 0:
            raise ConfigError(f"{where}.rank: must be ≥ 0 (0: no low-rank term), got {self.rank}")
        if self.previous < 0:
            raise ConfigError(f"{where}.previous: must be ≥ 0 (0: no previous activations), got {self.previous}")

    def check(self, ctx: dict, where: str) -> None:
        if self.rank > ctx["model"].dim:
            raise ConfigError(f"{where}.rank: {self.rank} exceeds model.dim={ctx['model'].dim}; "
                              f"allowed: 0..{ctx['model'].dim}")


@RESIDUAL.register("laurel", LAuReLConfig,
                   "LAuReL: α·f(x) + g(x, earlier x) with learned weights (RW), low rank (LR), previous activations (PA)")
def _laurel(cfg: LAuReLConfig, ctx: BuildContext):
    return LAuReL(ctx.dim, rw=cfg.rw, rank=cfg.rank, previous=cfg.previous, post=cfg.norm == "post")
