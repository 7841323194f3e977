"""Warm starts by kind (``train.warm_start.parts`` items): their knobs and checks.

A warm start is an initialiser that reads data: after the model is built (``model.init`` has
drawn its random weights) and before the first step, :mod:`archlab.train.warm` reads the first
``train.warm_start.tokens`` tokens of the training split once, and each part overwrites the
weights it names from those statistics (docs/warm_start.md). The catalogue holds what the
config needs to validate the section without importing torch.

* ``bit_cipher``: the token embedding from frequency-ordered bit-cipher codes.
* ``cooccurrence``: the token embedding from co-occurrence vectors of those codes.
* ``closed_form``: softmax layers from F = Σ x yᵀ (families lm and hierarchical: the LM head, and
  optionally the embedding; family safu: its hidden and output layers, layer by layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from archlab.registry import INT_LIMIT, ConfigError, PartConfig, Registry, to_dict

WARM = Registry("warm_start")

# what each family lets the closed form set
CLOSED_FORM_LAYERS = {"lm": ("head", "embed"), "hierarchical": ("head", "embed"), "safu": ("hidden", "output")}
FAMILIES = tuple(CLOSED_FORM_LAYERS)


@dataclass
class WarmStartConfig:
    """``train.warm_start``: the statistics pass and the parts it feeds."""

    tokens: int = 262144  # tokens of the training split read once (from its start) for the statistics
    parts: list[Any] = field(default_factory=list)


@dataclass
class EmbeddingWarmConfig(PartConfig):
    """Knobs shared by the parts that set the token embedding."""

    width: int | None = None  # code bits b; None: ⌊log2 V⌋ + 1 (raised until 2^b > V)
    train: bool = True  # false: the embedding stays fixed (not trained)
    scale: float = 1.0  # a one-hot code's row norm, in units of the mean row norm model.init drew

    def check(self, ctx: dict, where: str) -> None:
        m = ctx["model"]
        if self.width is not None:
            if isinstance(self.width, bool) or self.width < 1 or self.width > 4096:
                raise ConfigError(f"{where}.width: expected an integer in 1..4096 (code bits), got {self.width}")
            if 2 ** self.width - 1 < m.vocab_size:
                raise ConfigError(f"{where}.width: {self.width} bits give {2 ** self.width - 1} codes, fewer than "
                                  f"the {m.vocab_size} tokens; allowed: width ≥ {m.vocab_size.bit_length()}")
        if not 0 < self.scale < 1e6:
            raise ConfigError(f"{where}.scale: must be in (0, 1e6), got {self.scale}")
        if not self.train and m.tie_embeddings and m.family != "safu":
            raise ConfigError(f"{where}.train: a fixed embedding would fix the head tied to it; "
                              "set model.tie_embeddings=false, or train: true")


@dataclass
class BitCipherConfig(EmbeddingWarmConfig):
    pass


@dataclass
class CooccurrenceConfig(EmbeddingWarmConfig):
    radius: int = 2  # offsets ±1..±radius
    combine: Literal["concat", "sum"] = "concat"
    self_code: bool = True  # the token's own code is concatenated first (types with equal contexts stay apart)

    def check(self, ctx: dict, where: str) -> None:
        super().check(ctx, where)
        if isinstance(self.radius, bool) or not 1 <= self.radius <= 64:
            raise ConfigError(f"{where}.radius: expected an integer in 1..64, got {self.radius}")
        m = ctx["model"]
        if m.family == "safu":  # SAFU keeps the vectors as they are (non-negative): they must fit its width
            d = m.family_config().width or m.dim
            b = self.width if self.width is not None else d
            n = (2 * self.radius * b if self.combine == "concat" else b) + (b if self.self_code else 0)
            if n > d:
                raise ConfigError(f"{where}: vectors of width {n} do not fit family safu's embedding width {d}; "
                                  "lower width or radius, or combine: sum with self_code: false")


@dataclass
class ClosedFormConfig(PartConfig):
    layers: list[str] = field(default_factory=list)  # empty: the family's default (lm: head; safu: hidden, output)
    smoothing: float = 0.5  # pseudo-count added to every cell of F
    ridge: float = 0.1  # lm head: relative ridge of the read-out of the current token from the head's input

    def resolved_layers(self, family: str) -> list[str]:
        if self.layers:
            return list(self.layers)
        return list(CLOSED_FORM_LAYERS[family]) if family == "safu" else ["head"]

    def check(self, ctx: dict, where: str) -> None:
        m = ctx["model"]
        allowed = CLOSED_FORM_LAYERS.get(m.family, ())
        if not isinstance(self.layers, list) or not all(isinstance(x, str) for x in self.layers):
            raise ConfigError(f"{where}.layers: expected a list of layer names; allowed: {', '.join(allowed)}")
        for x in self.layers:
            if x not in allowed:
                raise ConfigError(f"{where}.layers: '{x}' is not a softmax layer of family '{m.family}'; "
                                  f"allowed: {', '.join(allowed)}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"{where}.layers: a layer named twice")
        if not 0 <= self.smoothing < 1e6:
            raise ConfigError(f"{where}.smoothing: must be in [0, 1e6) (a pseudo-count), got {self.smoothing}")
        if not 0 < self.ridge < 1e6:
            raise ConfigError(f"{where}.ridge: must be in (0, 1e6), got {self.ridge}")
        if m.family != "safu" and m.tie_embeddings and "head" in self.resolved_layers(m.family):
            raise ConfigError(f"{where}: the closed-form head needs its own matrix; set model.tie_embeddings=false "
                              "(tied, the head is the embedding)")


def sets_embedding(cfg: PartConfig, family: str) -> bool:
    if isinstance(cfg, ClosedFormConfig):
        return "embed" in cfg.resolved_layers(family)
    return isinstance(cfg, EmbeddingWarmConfig)


WARM.declare("bit_cipher", BitCipherConfig, "token embedding from frequency-ordered bit-cipher codes",
             build="archlab.train.warm:bit_cipher_part")
WARM.declare("cooccurrence", CooccurrenceConfig, "token embedding from co-occurrence vectors of bit-cipher codes",
             build="archlab.train.warm:cooccurrence_part")
WARM.declare("closed_form", ClosedFormConfig, "softmax layers in closed form from F = Σ x yᵀ",
             build="archlab.train.warm:closed_form_part")


def parse_warm_start(section: WarmStartConfig, ctx: dict, where: str = "train.warm_start") -> WarmStartConfig:
    """Validate ``train.warm_start``; its parts normalised (every knob filled in, as dicts)."""
    m = ctx["model"]
    if isinstance(section.tokens, bool) or not 1 <= section.tokens < INT_LIMIT:
        raise ConfigError(f"{where}.tokens: expected a positive number of tokens, got {section.tokens!r}")
    if section.parts and m.family not in FAMILIES:
        raise ConfigError(f"{where}: family '{m.family}' has no warm starts; allowed families: {', '.join(FAMILIES)}")
    parts = WARM.parse_each(section.parts, ctx, f"{where}.parts", example="such as [{kind: bit_cipher}]",
                            second="; one part per kind")
    setters = [i for i, cfg in enumerate(parts) if sets_embedding(cfg, m.family)]
    if len(setters) > 1:
        raise ConfigError(f"{where}.parts[{setters[1]}]: the embedding is already set by {where}.parts[{setters[0]}]; "
                          "one part may set it")
    out = [to_dict(cfg) for cfg in parts]
    section.parts = out
    return section
