"""The learning-dynamics controllers by kind (``train.dynamics`` items): their knobs and checks.

The controllers themselves (objects that adapt a scalar of the model during training) are
built by :mod:`archlab.train.dynamics`; the catalogue holds what the config needs to validate
``train.dynamics`` without importing the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from archlab.registry import ConfigError, PartConfig, Registry, to_dict

CONTROLLER = Registry("dynamics")


@dataclass
class ControllerConfig(PartConfig):
    """Knobs shared by every controller kind (see the module docstring for the rule)."""

    every: int = 100  # steps between checks
    decay: float = 0.95  # EMA decay d of the training loss
    threshold: float = 0.01  # relative EMA improvement below which the run counts as stalled
    factor: float = 2.0  # value multiplier on a plateau
    relax: float = 1.0  # value multiplier when the loss improved (1.0: leave the value)
    min: float = 0.0  # clamp range of the value
    max: float = math.inf
    start: int = 0  # no check before this step (e.g. the end of warmup)

    def validate(self, where: str) -> None:
        if self.every <= 0:
            raise ConfigError(f"{where}.every: must be a positive number of steps, got {self.every}")
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"{where}.decay: must be in [0, 1), got {self.decay}")
        if self.threshold < 0:
            raise ConfigError(f"{where}.threshold: must be ≥ 0 (a relative improvement), got {self.threshold}")
        if self.factor <= 0 or self.factor == 1.0:
            raise ConfigError(f"{where}.factor: must be positive and not 1 (1 would change nothing), got {self.factor}")
        if self.relax <= 0:
            raise ConfigError(f"{where}.relax: must be positive (1.0 leaves the value when the loss improves), "
                              f"got {self.relax}")
        if not self.min <= self.max:
            raise ConfigError(f"{where}: min {self.min} must be ≤ max {self.max}")
        if self.start < 0:
            raise ConfigError(f"{where}.start: must be ≥ 0, got {self.start}")

    def check(self, ctx: dict, where: str) -> None:
        """Refusals that need the rest of the config (none by default)."""


@dataclass
class RopeBaseConfig(ControllerConfig):
    min: float = 100.0
    max: float = 1.0e6

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.min <= 1.0:
            raise ConfigError(f"{where}.min: a rotary base must stay > 1, got min {self.min}")


@dataclass
class WindowConfig(ControllerConfig):
    min: float = 16.0
    max: float = 4096.0

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.min < 1:
            raise ConfigError(f"{where}.min: a window must stay ≥ 1 token, got min {self.min}")


@dataclass
class DropoutConfig(ControllerConfig):
    factor: float = 0.5
    min: float = 0.0
    max: float = 0.5

    def validate(self, where: str) -> None:
        super().validate(where)
        if not 0.0 <= self.min <= self.max < 1.0:
            raise ConfigError(f"{where}: dropout range [min, max] must lie in [0, 1), got [{self.min}, {self.max}]")

    def check(self, ctx: dict, where: str) -> None:
        if ctx["model"].dropout <= 0:
            raise ConfigError(f"{where}: the dropout controller needs model.dropout > 0 (with 0 the model "
                              "has no dropout layers to adapt)")


CONTROLLER.declare("rope_base", RopeBaseConfig, "rotary base of every module with set_base()",
                   build="archlab.train.dynamics:rope_base_controller")
CONTROLLER.declare("window", WindowConfig, "attention window of every module with set_window()",
                   build="archlab.train.dynamics:window_controller")
CONTROLLER.declare("dropout", DropoutConfig, "rate p of every nn.Dropout layer",
                   build="archlab.train.dynamics:dropout_controller")


def parse_dynamics(specs: Any, ctx: dict, where: str = "train.dynamics") -> list[dict]:
    """Validate ``train.dynamics`` and return it normalised (every knob filled in).

    Called by the config's validation; each item is a ``{kind: ..., **knobs}`` mapping or a
    bare kind name. One controller per kind: two would fight over the same scalar.
    """
    parts = CONTROLLER.parse_each(specs, ctx, where, example="of controllers, e.g. [{kind: rope_base}]",
                                  second=" controller; one per kind (they would fight over one value)")
    return [to_dict(c) for c in parts]
