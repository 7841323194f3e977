"""Normalisation layers by kind."""

from __future__ import annotations

from dataclasses import dataclass

from archlab.catalog.context import BuildContext
from archlab.nn.norms import LayerNorm, RMSNorm
from archlab.registry import NORM, RESIDUAL, ConfigError, PartConfig


@dataclass
class NormConfig(PartConfig):
    placement: str = "pre"  # the residual policy around the layer's sublayers (catalog/residual.py)
    eps: float = 1e-5

    def validate(self, where: str) -> None:
        if self.placement not in RESIDUAL:
            raise ConfigError(f"{where}.placement: {self.placement!r} is not allowed; "
                              f"allowed: {', '.join(RESIDUAL.kinds())}")
        # eps keeps the division by the norm finite; 0 or less brings back the NaN it guards against
        if self.eps <= 0:
            raise ConfigError(f"{where}.eps: must be positive, got {self.eps}")


@dataclass
class LayerNormConfig(NormConfig):
    bias: bool = True


@NORM.register("rms", NormConfig, "RMSNorm")
def _rms(cfg: NormConfig, ctx: BuildContext):
    return RMSNorm(ctx.dim, eps=cfg.eps)


@NORM.register("layer", LayerNormConfig, "LayerNorm")
def _layer(cfg: LayerNormConfig, ctx: BuildContext):
    return LayerNorm(ctx.dim, eps=cfg.eps, bias=cfg.bias)
