"""CoPE, contextual position encoding, registered as the positional scheme ``cope``.

    model:
      position: {kind: cope, max_pos: 64}

Per layer: ``model.layers.overrides: {"0,1": {position: {kind: cope}}}`` gives each listed
layer its own table (the model-wide ``position`` is one table shared by all layers).
"""

from __future__ import annotations

from dataclasses import dataclass

from archlab.catalog.context import BuildContext
from archlab.nn.positional.cope import ContextualPosition
from archlab.nn.positional.rope import rotary_width
from archlab.registry import POSITION, ConfigError, PartConfig


@dataclass
class CopeConfig(PartConfig):
    max_pos: int = 64  # p_max: table size; counted positions are capped at max_pos − 1
    scale_pos_logits: bool = True  # (q·k + q·e)/√d as the authors' code; False: q·k/√d + q·e (the formula)
    scale_gate_logits: bool = True  # gates σ(q·k/√d) as the authors' code; False: σ(q·k)
    rope_fraction: float = 0.0  # > 0: also RoPE (base 10000) on this share of each head's channels

    def validate(self, where: str) -> None:
        if self.max_pos < 2:
            raise ConfigError(f"{where}.max_pos: must be ≥ 2, got {self.max_pos}")
        if not 0.0 <= self.rope_fraction <= 1.0:
            raise ConfigError(f"{where}.rope_fraction: must be in [0, 1] (0: no RoPE), got {self.rope_fraction}")

    def check(self, ctx: dict, where: str) -> None:
        hd = ctx["model"].resolved_head_dim()
        if self.rope_fraction > 0 and rotary_width(hd, self.rope_fraction) < 2:
            raise ConfigError(f"{where}.rope_fraction: {self.rope_fraction} of head_dim {hd} leaves fewer than "
                              "2 rotary channels; use 0 (no RoPE) or a larger share")


@POSITION.register("cope", CopeConfig, "CoPE: contextual position encoding (gated counts of keys)")
def _cope(cfg: CopeConfig, ctx: BuildContext):
    if not ctx.causal:
        raise ConfigError("position.kind: 'cope' counts the keys between a key and its query, which is defined "
                          "for causal attention only; use another scheme for bidirectional attention")
    return ContextualPosition(head_dim=ctx.head_dim, max_pos=cfg.max_pos, scale_pos_logits=cfg.scale_pos_logits,
                              scale_gate_logits=cfg.scale_gate_logits, rope_fraction=cfg.rope_fraction,
                              init_std=ctx.init_std)
