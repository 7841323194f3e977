"""Token mixers by kind: full attention (optionally with persistent memory slots: the
all-attention layer), sliding-window (local) attention, attention with a parallel causal
convolution, multi-scale retention, and the memory-read block."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from archlab.catalog.context import BuildContext
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.conv_attention import ConvAttention
from archlab.nn.mixers.local import LocalAttention
from archlab.nn.mixers.memory import MemoryRead
from archlab.nn.mixers.pid import PIDControl
from archlab.nn.mixers.retention import MultiScaleRetention
from archlab.registry import MIXER, POSITION, ConfigError, PartConfig


def attention_options(ctx: BuildContext) -> dict:
    """The keywords every attention-based mixer takes from its build context."""
    return dict(dim=ctx.dim, heads=ctx.heads, kv_heads=ctx.kv_heads, head_dim=ctx.head_dim,
                position=ctx.position, causal=ctx.causal, bias=ctx.bias, dropout=ctx.dropout)


def layer_scheme(ctx: dict) -> tuple[str, object]:
    """(kind, built module) of the positional scheme a layer's mixer gets, for config checks
    that need the scheme's declared capabilities (``uses_bias``, ``needs_scores``, ...)."""
    m, layer = ctx["model"], ctx.get("layer")
    pos_cfg = layer.position if layer is not None and layer.position is not None else m.position
    probe = BuildContext(dim=m.dim, heads=m.heads, kv_heads=m.resolved_kv_heads(), head_dim=m.resolved_head_dim(),
                         max_seq_len=m.max_seq_len)
    return pos_cfg.kind, POSITION.build(pos_cfg, probe)


@dataclass
class PIDConfig:
    """PID control of attention across layers (PIDformer, nn/mixers/pid.py); the defaults are the
    fixed constants of the public implementation that follows the authors'."""

    p: float = 0.8  # λ_P: the error against the reference
    i: float = 0.5  # λ_I: the error summed over the layers so far
    d: float = 0.05  # λ_D: the error's change since the previous controlled layer
    beta: float = 0.1  # the reference f = β · V of the first controlled layer


def pid_control(cfg: PIDConfig | None) -> PIDControl | None:
    return None if cfg is None else PIDControl(p=cfg.p, i=cfg.i, d=cfg.d, beta=cfg.beta)


@dataclass
class Controlled(PartConfig):
    """What every attention-based mixer config shares: optional PID control (needs family lm)."""

    pid: PIDConfig | None = None

    def validate(self, where: str) -> None:
        if self.pid is not None:
            for name in ("p", "i", "d", "beta"):
                if getattr(self.pid, name) < 0:
                    raise ConfigError(f"{where}.pid.{name}: must be ≥ 0 (0 switches the term off), "
                                      f"got {getattr(self.pid, name)}")

    def check(self, ctx: dict, where: str) -> None:
        if self.pid is not None and ctx["model"].family != "lm":
            raise ConfigError(f"{where}.pid: PID control across layers is built for family 'lm' only; "
                              f"leave it unset for family '{ctx['model'].family}'")


@dataclass
class AttentionConfig(Controlled):
    # learned key/value vectors per key/value head in the same softmax as the context, visible to
    # every query, without position (Sukhbaatar et al., 2019); with ffn 'none': the all-attention layer
    persistent: int = 0

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.persistent < 0:
            raise ConfigError(f"{where}.persistent: must be ≥ 0 (0: no persistent memory), got {self.persistent}")

    def check(self, ctx: dict, where: str) -> None:
        super().check(ctx, where)
        if self.persistent:
            kind, scheme = layer_scheme(ctx)
            if scheme.needs_scores or scheme.attend is not None:
                raise ConfigError(f"{where}.persistent: the slots have no position for '{kind}' to count; "
                                  "allowed: persistent 0 with this scheme, or a rotary/bias/embedding scheme")


@MIXER.register("attention", AttentionConfig, "full (causal) multi-head attention (+ persistent memory slots)")
def _attention(cfg: AttentionConfig, ctx: BuildContext):
    try:
        return Attention(**attention_options(ctx), persistent=cfg.persistent, pid=pid_control(cfg.pid))
    except ValueError as e:
        raise ConfigError(f"mixer.persistent: {e}") from None


@dataclass
class ConvAttentionConfig(Controlled):
    kernel: int = 4  # taps of the depthwise convolution (the current token and kernel − 1 before it)
    combine: Literal["sum", "gate"] = "sum"  # gate: learned per-channel sigmoid mix of the branches

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.kernel < 1:
            raise ConfigError(f"{where}.kernel: must be ≥ 1, got {self.kernel}")


@MIXER.register("conv_attention", ConvAttentionConfig,
                "attention + a parallel depthwise (causal) convolution branch, summed or gated")
def _conv_attention(cfg: ConvAttentionConfig, ctx: BuildContext):
    attn = Attention(**attention_options(ctx), pid=pid_control(cfg.pid))
    # The branch writes into the residual stream, so its taps get the GPT-2 residual-output scale
    # std/√(2·depth), like attention's output projection (init_weights in models/lm.py).
    return ConvAttention(dim=ctx.dim, attention=attn, kernel=cfg.kernel, combine=cfg.combine,
                         causal=ctx.causal, init_std=ctx.init_std / math.sqrt(2 * ctx.depth))


@dataclass
class LocalConfig(Controlled):
    # Keys each query sees, itself included. The default is small so that `kind: local` differs
    # from full attention even on short sequences; set it for your sequence length.
    window: int = 16
    global_heads: int = 0  # the last global_heads heads attend to every earlier key
    global_tokens: int = 0  # positions < global_tokens are visible to every later query

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.window < 1:
            raise ConfigError(f"{where}.window: must be ≥ 1, got {self.window}")
        if self.global_heads < 0:
            raise ConfigError(f"{where}.global_heads: must be ≥ 0, got {self.global_heads}")
        if self.global_tokens < 0:
            raise ConfigError(f"{where}.global_tokens: must be ≥ 0, got {self.global_tokens}")

    def check(self, ctx: dict, where: str) -> None:
        super().check(ctx, where)
        heads = ctx["model"].heads
        if self.global_heads > heads:
            raise ConfigError(f"{where}.global_heads: {self.global_heads} exceeds model.heads={heads}; "
                              f"allowed: 0..{heads}")


@MIXER.register("local", LocalConfig, "causal sliding-window attention (+ global heads / global tokens)")
def _local(cfg: LocalConfig, ctx: BuildContext):
    if not ctx.causal:
        raise ConfigError("mixer.kind: 'local' is causal-only; use 'attention' in bidirectional (encoder) stacks")
    return LocalAttention(window=cfg.window, global_heads=cfg.global_heads, global_tokens=cfg.global_tokens,
                          pid=pid_control(cfg.pid), **attention_options(ctx))  # ctx.causal is True here


@dataclass
class RetentionConfig(PartConfig):
    output_neutral: ClassVar[dict[str, str]] = {
        "form": "the parallel, chunkwise and recurrent forms compute the same outputs (float64 equality "
                "in tests/test_retention.py); the form decides cost and memory",
        "chunk_size": "any chunk size gives the same outputs (tests/test_retention.py); it trades the "
                      "T × C score blocks against the number of state updates",
    }
    # per-head decays γ_h in (0, 1), one per head; default the paper's 1 − 2^(−5−h)
    gammas: list[float] | None = None
    value_factor: int = 1  # value/gate width per head = head_dim · value_factor (the paper: 2)
    # auto: parallel up to chunk_size tokens, chunkwise beyond; with a cache recurrent per token
    form: Literal["auto", "parallel", "chunkwise", "recurrent"] = "auto"
    chunk_size: int = 256  # CPU measurements (docs/retnet.md): the parallel form is cheaper up to ~512 tokens

    def validate(self, where: str) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"{where}.chunk_size: must be ≥ 1, got {self.chunk_size}")
        if self.value_factor < 1:
            raise ConfigError(f"{where}.value_factor: must be ≥ 1, got {self.value_factor}")
        if self.gammas is not None and not all(0.0 < g < 1.0 for g in self.gammas):
            raise ConfigError(f"{where}.gammas: every decay must be in (0, 1), got {self.gammas}")

    def check(self, ctx: dict, where: str) -> None:
        m = ctx["model"]
        if self.gammas is not None and len(self.gammas) != m.heads:
            raise ConfigError(f"{where}.gammas: {len(self.gammas)} decays for model.heads={m.heads}; "
                              "give one per head")
        kind, scheme = layer_scheme(ctx)
        if scheme.uses_bias or scheme.needs_scores or scheme.attend is not None:
            raise ConfigError(f"{where}: retention has no attention logits for position '{kind}' to act on; "
                              "allowed: a rotary scheme (rope and its variants), an input-embedding scheme, or none")


@MIXER.register("retention", RetentionConfig,
                "multi-scale retention (RetNet): parallel, chunkwise and recurrent forms, constant-size state")
def _retention(cfg: RetentionConfig, ctx: BuildContext):
    if not ctx.causal:
        raise ConfigError("mixer.kind: 'retention' is causal-only; use 'attention' in bidirectional (encoder) stacks")
    if cfg.gammas is not None and len(cfg.gammas) != ctx.heads:
        raise ConfigError(f"mixer.gammas: {len(cfg.gammas)} decays for {ctx.heads} heads; give one per head")
    try:
        return MultiScaleRetention(dim=ctx.dim, heads=ctx.heads, head_dim=ctx.head_dim, position=ctx.position,
                                   value_factor=cfg.value_factor, gammas=cfg.gammas, form=cfg.form,
                                   chunk_size=cfg.chunk_size, bias=ctx.bias)
    except ValueError as e:  # a bias scheme handed to retention
        raise ConfigError(f"mixer.kind: 'retention': {e}") from None


@dataclass
class MemoryConfig(PartConfig):
    # heads: model.heads, of width model.dim / model.heads (the positional scheme is built for them)
    slots: int = 64  # persistent memory slots per head (the swapped read's hidden units)
    temperature: float = 0.0  # of every read; 0: √(dim / heads)
    learn_temperature: bool = False  # one learned temperature per read and head, starting at the above
    projections: bool = False  # the context read through q/k/v/output projections (as attention)
    norm: bool = False  # an RMS norm before each read
    tied: bool = True  # the swapped read uses the first read's memory (as written); false: its own

    def validate(self, where: str) -> None:
        if self.slots < 1:
            raise ConfigError(f"{where}.slots: must be ≥ 1, got {self.slots}")
        if self.temperature < 0:
            raise ConfigError(f"{where}.temperature: must be > 0 (or 0: √head width), got {self.temperature}")

    def check(self, ctx: dict, where: str) -> None:
        m = ctx["model"]
        if m.dim % m.heads or m.dim // m.heads != m.resolved_head_dim():
            raise ConfigError(f"{where}: the memory reads split model.dim={m.dim} into model.heads={m.heads} heads; "
                              "allowed: heads that divide dim, with model.head_dim unset (or dim / heads)")


@MIXER.register("memory", MemoryConfig,
                "memory reads: persistent memory, causal context, persistent memory swapped (the 'MLP')")
def _memory(cfg: MemoryConfig, ctx: BuildContext):
    # MemoryConfig.check has refused a head width other than dim / heads
    return MemoryRead(dim=ctx.dim, heads=ctx.heads, position=ctx.position, slots=cfg.slots,
                      temperature=cfg.temperature or None, learn_temperature=cfg.learn_temperature,
                      projections=cfg.projections, norm=cfg.norm, tied=cfg.tied, causal=ctx.causal,
                      dropout=ctx.dropout, bias=ctx.bias)
