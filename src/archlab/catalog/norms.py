"""Normalisation layers by kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archlab.catalog.context import BuildContext
from archlab.nn.norms import LayerNorm, RMSNorm
from archlab.registry import NORM, ConfigError, PartConfig


@dataclass
class NormConfig(PartConfig):
    placement: Literal["pre", "post"] = "pre"
    eps: float = 1e-5

    def validate(self, where: str) -> None:
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
