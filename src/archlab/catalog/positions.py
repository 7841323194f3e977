"""Positional schemes by kind."""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def validate(self, where: str) -> None:
        if self.base <= 1.0:  # as for rope: wavelengths grow as base^(2i/dim), so base ≤ 1 collapses them
            raise ConfigError(f"{where}.base: must be > 1, got {self.base}")
        if self.scale <= 0:
            raise ConfigError(f"{where}.scale: must be positive (kind 'none' is no position signal), got {self.scale}")


@dataclass
class RopeConfig(PartConfig):
    base: float = 10000.0
    fraction: float = 1.0  # share of each head's channels that rotate
    # Options (docs/echo_positional.md); off = plain RoPE.
    learn_freq: bool = False  # θ_c · exp(δ_c), δ trainable (log-space offsets), init 0
    learn_scale: bool = False  # positions × s, s = exp(ℓ) trainable, init 1
    learn_phase: bool = False  # query angle + φ_{h,c} (query side only: a shared q/k phase cancels)
    base_mults: list[float] = field(default_factory=list)  # multi-scale: head group g uses base · base_mults[g]

    def validate(self, where: str) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"{where}.fraction: must be in (0, 1], got {self.fraction}")
        if self.base <= 1.0:
            raise ConfigError(f"{where}.base: must be > 1, got {self.base}")
        if any(self.base * m <= 1.0 for m in self.base_mults):
            raise ConfigError(f"{where}.base_mults: every base · mult must be > 1, got {self.base_mults}")

    def check(self, ctx: dict, where: str) -> None:
        hd = ctx["model"].resolved_head_dim()
        if rotary_width(hd, self.fraction) < 2:
            raise ConfigError(f"{where}.fraction: {self.fraction} of head_dim {hd} leaves fewer than 2 rotary channels")
        m = ctx["model"]
        g, kv = len(self.base_mults), m.resolved_kv_heads()
        if g and kv % g:
            raise ConfigError(f"{where}.base_mults: {g} head groups must divide the {kv} key/value heads "
                              "(each group holds whole key heads and the query heads that read them)")


@dataclass
class AlibiConfig(PartConfig):
    pass


@dataclass
class T5Config(PartConfig):
    num_buckets: int = 32
    max_distance: int = 128

    def validate(self, where: str) -> None:
        if self.num_buckets < 4:
            raise ConfigError(f"{where}.num_buckets: must be ≥ 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 2:
            # half the buckets are exact distances; the log-spaced rest need room above them
            raise ConfigError(f"{where}.max_distance: must exceed num_buckets/2 = {self.num_buckets // 2}, "
                              f"got {self.max_distance}")


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
    return P.RotaryEmbedding(**rope_options(cfg, ctx))


def rope_options(cfg: RopeConfig, ctx: BuildContext) -> dict:
    """RotaryEmbedding keyword arguments from a RopeConfig (shared by the kinds that extend rope)."""
    return {"head_dim": ctx.head_dim, "base": cfg.base, "fraction": cfg.fraction, "heads": ctx.heads,
            "kv_heads": ctx.kv_heads, "learn_freq": cfg.learn_freq, "learn_scale": cfg.learn_scale,
            "learn_phase": cfg.learn_phase, "base_mults": cfg.base_mults}


@POSITION.register("alibi", AlibiConfig, "ALiBi linear distance bias")
def _alibi(cfg: AlibiConfig, ctx: BuildContext):
    return P.ALiBi(heads=ctx.heads, bidirectional=not ctx.causal)


@POSITION.register("t5", T5Config, "T5 bucketed relative bias")
def _t5(cfg: T5Config, ctx: BuildContext):
    return P.T5RelativeBias(heads=ctx.heads, num_buckets=cfg.num_buckets, max_distance=cfg.max_distance,
                            bidirectional=not ctx.causal)
