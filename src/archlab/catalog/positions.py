"""Positional schemes by kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from archlab.catalog.context import BuildContext
from archlab.nn import positional as P
from archlab.nn.positional.rope import rotary_width
from archlab.registry import POSITION, ConfigError, PartConfig


@dataclass
class NoneConfig(PartConfig):
    pass


@dataclass
class LearnedConfig(PartConfig):
    embed_only: ClassVar[bool] = True

    def check(self, ctx: dict, where: str) -> None:
        m, t = ctx["model"], ctx["train"]
        if m.max_seq_len < t.seq_len:
            raise ConfigError(f"{where}: learned table has model.max_seq_len={m.max_seq_len} positions "
                              f"but train.seq_len={t.seq_len}; raise model.max_seq_len")


@dataclass
class SinusoidalConfig(PartConfig):
    embed_only: ClassVar[bool] = True
    base: float = 10000.0
    scale: float = 1.0


@dataclass
class RopeConfig(PartConfig):
    base: float = 10000.0
    fraction: float = 1.0  # share of each head's channels that rotate

    def validate(self, where: str) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{where}.fraction: must be in (0, 1], got {self.fraction}")
        if self.base <= 1.0:
            raise ConfigError(f"{where}.base: must be > 1, got {self.base}")

    def check(self, ctx: dict, where: str) -> None:
        hd = ctx["model"].resolved_head_dim()
        if rotary_width(hd, self.fraction) < 2:
            raise ConfigError(f"{where}.fraction: {self.fraction} of head_dim {hd} leaves fewer than 2 rotary channels")


@dataclass
class AlibiConfig(PartConfig):
    pass


@dataclass
class T5Config(PartConfig):
    num_buckets: int = 32
    max_distance: int = 128

    def validate(self, where: str) -> None:
        if self.num_buckets < 4 or self.max_distance <= self.num_buckets // 2:
            raise ConfigError(f"{where}: need num_buckets ≥ 4 and max_distance > num_buckets/2")


@POSITION.register("none", NoneConfig, "NoPE: no positional signal")
def _none(cfg: NoneConfig, ctx: BuildContext):
    return P.NoPosition()


@POSITION.register("learned", LearnedConfig, "learned absolute embedding table")
def _learned(cfg: LearnedConfig, ctx: BuildContext):
    return P.LearnedAbsolute(dim=ctx.dim, max_len=ctx.max_seq_len, init_std=ctx.init_std)


@POSITION.register("sinusoidal", SinusoidalConfig, "fixed sinusoidal embedding")
def _sinusoidal(cfg: SinusoidalConfig, ctx: BuildContext):
    return P.Sinusoidal(dim=ctx.dim, base=cfg.base, scale=cfg.scale)


@POSITION.register("rope", RopeConfig, "rotary position embedding")
def _rope(cfg: RopeConfig, ctx: BuildContext):
    return P.RotaryEmbedding(head_dim=ctx.head_dim, base=cfg.base, fraction=cfg.fraction)


@POSITION.register("alibi", AlibiConfig, "ALiBi linear distance bias")
def _alibi(cfg: AlibiConfig, ctx: BuildContext):
    return P.ALiBi(heads=ctx.heads, bidirectional=not ctx.causal)


@POSITION.register("t5", T5Config, "T5 bucketed relative bias")
def _t5(cfg: T5Config, ctx: BuildContext):
    return P.T5RelativeBias(heads=ctx.heads, num_buckets=cfg.num_buckets, max_distance=cfg.max_distance,
                            bidirectional=not ctx.causal)
