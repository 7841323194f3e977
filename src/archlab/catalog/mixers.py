"""Token mixers by kind: full attention, sliding-window (local) attention, attention with a
parallel causal convolution."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from archlab.catalog.context import BuildContext
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.conv_attention import ConvAttention
from archlab.nn.mixers.local import LocalAttention
from archlab.registry import MIXER, ConfigError, PartConfig


def attention_options(ctx: BuildContext) -> dict:
    """The keywords every attention-based mixer takes from its build context."""
    return dict(dim=ctx.dim, heads=ctx.heads, kv_heads=ctx.kv_heads, head_dim=ctx.head_dim,
                position=ctx.position, causal=ctx.causal, bias=ctx.bias, dropout=ctx.dropout)


@dataclass
class AttentionConfig(PartConfig):
    pass


@MIXER.register("attention", AttentionConfig, "full (causal) multi-head attention")
def _attention(cfg: AttentionConfig, ctx: BuildContext):
    return Attention(**attention_options(ctx))


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
    attn = Attention(**attention_options(ctx))
    # The branch writes into the residual stream, so its taps get the GPT-2 residual-output scale
    # std/√(2·depth), like attention's output projection (init_weights in models/lm.py).
    return ConvAttention(dim=ctx.dim, attention=attn, kernel=cfg.kernel, combine=cfg.combine,
                         causal=ctx.causal, init_std=ctx.init_std / math.sqrt(2 * ctx.depth))


@dataclass
class LocalConfig(PartConfig):
    # Keys each query sees, itself included. The default is small so that `kind: local` differs
    # from full attention even on short sequences; set it for your sequence length.
    window: int = 16
    global_heads: int = 0  # the last global_heads heads attend to every earlier key
    global_tokens: int = 0  # positions < global_tokens are visible to every later query

    def validate(self, where: str) -> None:
        if self.window < 1:
            raise ConfigError(f"{where}.window: must be ≥ 1, got {self.window}")
        if self.global_heads < 0:
            raise ConfigError(f"{where}.global_heads: must be ≥ 0, got {self.global_heads}")
        if self.global_tokens < 0:
            raise ConfigError(f"{where}.global_tokens: must be ≥ 0, got {self.global_tokens}")

    def check(self, ctx: dict, where: str) -> None:
        heads = ctx["model"].heads
        if self.global_heads > heads:
            raise ConfigError(f"{where}.global_heads: {self.global_heads} exceeds model.heads={heads}; "
                              f"allowed: 0..{heads}")


@MIXER.register("local", LocalConfig, "causal sliding-window attention (+ global heads / global tokens)")
def _local(cfg: LocalConfig, ctx: BuildContext):
    if not ctx.causal:
        raise ConfigError("mixer.kind: 'local' is causal-only; use 'attention' in bidirectional (encoder) stacks")
    return LocalAttention(window=cfg.window, global_heads=cfg.global_heads, global_tokens=cfg.global_tokens,
                          **attention_options(ctx))  # ctx.causal is True here
