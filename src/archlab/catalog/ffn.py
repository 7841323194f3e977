"""Feed-forward blocks by kind."""

from __future__ import annotations

from dataclasses import dataclass

from archlab.catalog.context import BuildContext
from archlab.nn.ffn import GeluMLP, SwiGLU
from archlab.registry import FFN, ConfigError, PartConfig


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


@FFN.register("none", PartConfig, "no feed-forward sublayer (memory-read and all-attention blocks)")
def _none(cfg: PartConfig, ctx: BuildContext):
    return None  # the block has no second sublayer (nn/block.py)
