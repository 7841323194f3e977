"""The ``local`` mixer: causal sliding-window attention with optional global heads/tokens."""

from __future__ import annotations

from dataclasses import dataclass

from archlab.catalog.context import BuildContext
from archlab.nn.mixers.local import LocalAttention
from archlab.registry import MIXER, ConfigError, PartConfig


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
                          dim=ctx.dim, heads=ctx.heads, kv_heads=ctx.kv_heads, head_dim=ctx.head_dim,
                          position=ctx.position, causal=True, bias=ctx.bias, dropout=ctx.dropout)
