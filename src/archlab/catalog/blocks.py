"""Token mixers, feed-forwards and norms by kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archlab.catalog.context import BuildContext
from archlab.nn.ffn import GeluMLP, SwiGLU
from archlab.nn.mixers.attention import Attention
from archlab.nn.norms import LayerNorm, RMSNorm
from archlab.registry import FFN, MIXER, NORM, ConfigError, PartConfig

# ----------------------------------------------------------------------------- mixers


@dataclass
class AttentionConfig(PartConfig):
    pass


@MIXER.register("attention", AttentionConfig, "full (causal) multi-head attention")
def _attention(cfg: AttentionConfig, ctx: BuildContext):
    return Attention(dim=ctx.dim, heads=ctx.heads, kv_heads=ctx.kv_heads, head_dim=ctx.head_dim,
                     position=ctx.position, causal=ctx.causal, bias=ctx.bias, dropout=ctx.dropout)


# ----------------------------------------------------------------------------- feed-forward


@dataclass
class FFNConfig(PartConfig):
    mult: float = 4.0

    def validate(self, where: str) -> None:
        if self.mult <= 0:
            raise ConfigError(f"{where}.mult: must be positive, got {self.mult}")


@dataclass
class SwiGLUConfig(FFNConfig):
    multiple_of: int = 8  # hidden width rounded up to this (matmul-friendly)

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.multiple_of < 1:
            raise ConfigError(f"{where}.multiple_of: must be ≥ 1 (1: no rounding), got {self.multiple_of}")


@FFN.register("gelu", FFNConfig, "GELU MLP, hidden = mult·dim")
def _gelu(cfg: FFNConfig, ctx: BuildContext):
    return GeluMLP(dim=ctx.dim, hidden=int(cfg.mult * ctx.dim), bias=ctx.bias, dropout=ctx.dropout)


@FFN.register("swiglu", SwiGLUConfig, "SwiGLU, hidden = 2/3·mult·dim (same parameters as GELU MLP)")
def _swiglu(cfg: SwiGLUConfig, ctx: BuildContext):
    m = cfg.multiple_of
    hidden = -(-int(2 * cfg.mult * ctx.dim / 3) // m) * m
    return SwiGLU(dim=ctx.dim, hidden=hidden, bias=ctx.bias, dropout=ctx.dropout)


# ----------------------------------------------------------------------------- norms


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
