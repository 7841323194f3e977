"""Normalisation layers by kind. A layer's norm config also names the layer's residual policy
(``placement``: a kind of catalog/residual.py, as a bare name or ``{kind: ..., knobs}``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from archlab.catalog.context import BuildContext
from archlab.nn.norms import LayerNorm, RMSNorm
from archlab.registry import NORM, ConfigError, PartConfig, part


@dataclass
class PlacedConfig(PartConfig):
    # the residual policy around the layer's sublayers: pre, post, mixln, laurel (catalog/residual.py)
    placement: PartConfig = part("residual", lambda: {"kind": "pre"})


@dataclass
class NormConfig(PlacedConfig):
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


@NORM.register("none", PlacedConfig, "no normalisation (identity); the residual policy still applies")
def _none(cfg: PlacedConfig, ctx: BuildContext):
    return nn.Identity()
