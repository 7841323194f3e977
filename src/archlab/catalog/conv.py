"""Convolution mixers by kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from archlab.catalog.context import BuildContext
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.conv_attention import ConvAttention
from archlab.registry import MIXER, ConfigError, PartConfig


@dataclass
class ConvAttentionConfig(PartConfig):
    kernel: int = 4  # taps of the depthwise convolution (the current token and kernel − 1 before it)
    combine: Literal["sum", "gate"] = "sum"  # gate: learned per-channel sigmoid mix of the branches

    def validate(self, where: str) -> None:
        if self.kernel < 1:
            raise ConfigError(f"{where}.kernel: must be ≥ 1, got {self.kernel}")


@MIXER.register("conv_attention", ConvAttentionConfig,
                "attention + a parallel depthwise (causal) convolution branch, summed or gated")
def _conv_attention(cfg: ConvAttentionConfig, ctx: BuildContext):
    attn = Attention(dim=ctx.dim, heads=ctx.heads, kv_heads=ctx.kv_heads, head_dim=ctx.head_dim,
                     position=ctx.position, causal=ctx.causal, bias=ctx.bias, dropout=ctx.dropout)
    # The branch writes into the residual stream, so its taps get the GPT-2 residual-output scale
    # std/√(2·depth), like attention's output projection (init_weights in models/lm.py).
    return ConvAttention(dim=ctx.dim, attention=attn, kernel=cfg.kernel, combine=cfg.combine,
                         causal=ctx.causal, init_std=ctx.init_std / math.sqrt(2 * ctx.depth))
