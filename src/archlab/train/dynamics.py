"""Learning-dynamics controllers: scalars of the model adapted from the training loss.

A controller is a trainer callback (:class:`archlab.train.trainer.Callback`) that owns one
scalar of the model — the rotary base, the local-attention window, the dropout rate — and
changes it between optimiser steps, never inside a forward. Every controller follows the same
rule (the "adaptive rotary base" of the Echo model, generalised to any scalar):

* after every step whose loss ℓ_t is finite: m_t = d·m_{t−1} + (1 − d)·ℓ_t, m = ℓ at the
  first step (exponential moving average, ``decay`` d);
* at every ``every``-th step from ``start`` on, compare m with its value r at the previous
  check: improvement ρ = (r − m)/|r|. If ρ < ``threshold`` (a plateau), v ← v·``factor``;
  otherwise v ← v·``relax`` (1.0: leave it). Then v ← clamp(v, ``min``, ``max``) and r ← m.
  The first check only records r.

What the value means and which direction helps depends on the target: a larger rotary base
lowers every frequency θ_c = base^{−2c/r} (longer wavelengths, coarser position resolution);
a larger window lets local attention see further; a smaller dropout regularises less. Each
kind has defaults that move its scalar in the direction that usually helps a stalled run
(base and window up, dropout down); every knob can be set.

Config: ``train.dynamics`` is a list of ``{kind: ..., knob: value}`` specs (empty by
default: no controller, nothing changes). The Trainer builds them into callbacks that run
before any other callback; their state (value, EMA, reference) is stored in the checkpoint
under the callback's name, and the current value is added to every step record as
``dynamics/<kind>`` (so it appears in metrics.jsonl and TensorBoard).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from archlab.catalog.dynamics import (  # noqa: F401  (the configs and registry, re-exported)
    CONTROLLER,
    ControllerConfig,
    DropoutConfig,
    RopeBaseConfig,
    WindowConfig,
    parse_dynamics,
)
from archlab.registry import ConfigError

__all__ = ["CONTROLLER", "Controller", "ControllerConfig", "adapted_model_config", "build_controllers",
           "parse_dynamics", "restore"]

class Controller:
    """One adapted scalar: the EMA/threshold/multiply/clamp rule, applied through ``write``.

    ``read()`` gives the model's current value (used once, at construction); ``write(v)`` sets
    it on every target module. ``integer`` values (window sizes) are rounded when written, while
    the controller keeps the unrounded value so that small factors still accumulate.
    """

    def __init__(self, *, name: str, cfg: ControllerConfig, read: Callable[[], float],
                 write: Callable[[float], None], integer: bool = False) -> None:
        self.name = name
        self.kind = cfg.kind
        self.cfg = cfg
        self.write = write
        self.integer = integer
        self.value = float(read())
        self.ema: float | None = None
        self.ref: float | None = None
        self.changes = 0

    @property
    def applied(self) -> float | int:
        """The value as the model sees it (rounded for integer targets)."""
        return max(1, round(self.value)) if self.integer else self.value

    def observe(self, loss: float) -> None:
        if not math.isfinite(loss):
            return  # a skipped step: the EMA keeps its value
        d = self.cfg.decay
        self.ema = loss if self.ema is None else d * self.ema + (1.0 - d) * loss

    def check(self) -> bool:
        """Apply the rule once; True if the value changed."""
        c = self.cfg
        if self.ema is None:
            return False
        if self.ref is None:
            self.ref = self.ema
            return False
        improvement = (self.ref - self.ema) / max(abs(self.ref), 1e-12)
        mult = c.factor if improvement < c.threshold else c.relax
        self.ref = self.ema
        new = min(max(self.value * mult, c.min), c.max)
        if new == self.value:
            return False
        old = self.applied
        self.value = new
        if self.applied != old:
            self.write(self.applied)
        self.changes += 1
        return True

    def after_step(self, trainer: Any, step: int, record: dict[str, Any]) -> None:
        if not record.get("skipped"):
            self.observe(float(record.get("loss", math.nan)))
        if step >= self.cfg.start and step % self.cfg.every == 0:
            self.check()
        record[f"dynamics/{self.kind}"] = self.applied

    def state_dict(self) -> dict:
        return {"value": self.value, "ema": self.ema, "ref": self.ref, "changes": self.changes}

    def load_state_dict(self, state: dict) -> None:
        if not state:  # a checkpoint from before this controller existed: keep the initial value
            return
        self.value = float(state["value"])
        self.ema = None if state.get("ema") is None else float(state["ema"])
        self.ref = None if state.get("ref") is None else float(state["ref"])
        self.changes = int(state.get("changes", 0))
        self.write(self.applied)


# ----------------------------------------------------------------------------- targets


def _common(values: list[float], what: str, where: str) -> float:
    if len(set(values)) > 1:
        raise ConfigError(f"{where}: the model's {what} values differ ({sorted(set(values))}); one controller "
                          "adapts one shared value")
    return values[0]


def _targets(model: nn.Module, method: str, what: str, kind: str, where: str) -> list[nn.Module]:
    mods = [m for m in model.modules() if callable(getattr(m, method, None))]
    if not mods:
        raise ConfigError(f"{where}: kind '{kind}' needs {what} (modules with {method}()); this model has none")
    return mods


def _in_range(value: float, cfg: ControllerConfig, what: str, where: str) -> None:
    if not cfg.min <= value <= cfg.max:
        raise ConfigError(f"{where}: the model's {what} {value:g} is outside [min, max] = [{cfg.min:g}, {cfg.max:g}]")


def rope_base_controller(cfg: RopeBaseConfig, model: nn.Module, name: str, where: str) -> Controller:
    mods = _targets(model, "set_base", "a rotary position scheme", cfg.kind, where)
    value = _common([float(m.base) for m in mods], "rotary base", where)
    _in_range(value, cfg, "rotary base", where)

    def write(v: float) -> None:
        for m in mods:
            m.set_base(float(v))  # also drops the scheme's memoised cos/sin tables

    return Controller(name=name, cfg=cfg, read=lambda: value, write=write)


def window_controller(cfg: WindowConfig, model: nn.Module, name: str, where: str) -> Controller:
    mods = _targets(model, "set_window", "local attention", cfg.kind, where)
    bad = [m for m in mods if not isinstance(getattr(m, "window", None), int)]
    if bad:
        raise ConfigError(f"{where}: kind 'window' reads the current size from an int 'window' attribute; "
                          f"{type(bad[0]).__name__} has none")
    value = _common([float(m.window) for m in mods], "window", where)
    _in_range(value, cfg, "window", where)

    def write(v: float) -> None:
        for m in mods:
            m.set_window(int(v))

    return Controller(name=name, cfg=cfg, read=lambda: value, write=write, integer=True)


def dropout_controller(cfg: DropoutConfig, model: nn.Module, name: str, where: str) -> Controller:
    # Only nn.Dropout layers (embedding, residual, feed-forward); attention-probability dropout
    # is a float inside scaled_dot_product_attention calls and stays at model.dropout.
    mods = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    if not mods:
        raise ConfigError(f"{where}: kind 'dropout' needs nn.Dropout layers; this model has none (model.dropout=0?)")
    value = _common([float(m.p) for m in mods], "dropout", where)
    _in_range(value, cfg, "dropout", where)

    def write(v: float) -> None:
        for m in mods:
            m.p = float(v)

    return Controller(name=name, cfg=cfg, read=lambda: value, write=write)


# ----------------------------------------------------------------------------- config and building


def build_controllers(specs: list, model: nn.Module, where: str = "train.dynamics") -> list[Controller]:
    """The configured controllers bound to ``model``'s modules (empty list: none)."""
    out = []
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        cfg = CONTROLLER.parse(spec, at)
        out.append(CONTROLLER.build(cfg, model, f"dynamics.{cfg.kind}", at))
    return out


def restore(model: nn.Module, specs: list, state: dict) -> list[Controller]:
    """Put the adapted values of a saved run back into a freshly built ``model``.

    ``state`` is a checkpoint's state dict (``state["callbacks"][name]``). The adapted values
    are not weights, so loading a checkpoint's tensors alone leaves the config's initial values.
    """
    ctrls = build_controllers(specs, model)
    saved = state.get("callbacks", {})
    for c in ctrls:
        c.load_state_dict(saved.get(c.name, {}))
    return ctrls


#: Where a model config keeps each adapted value: the knob of every part config (any object
#: with a ``kind``) that has it. Dropout is not here: the controller adapts the nn.Dropout
#: layers only, while ``model.dropout`` also sets attention dropout, so no config value says
#: what an adapted model does in training.
CONFIG_KNOB = {"rope_base": ("base", float), "window": ("window", int)}


def _set_knob(node: Any, knob: str, value: Any) -> int:
    """Set ``knob`` on every part config under ``node``; returns how many were set."""
    n = 0
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        if hasattr(node, "kind") and any(f.name == knob for f in dataclasses.fields(node)):
            setattr(node, knob, value)
            n += 1
        for f in dataclasses.fields(node):
            if f.name != knob:
                n += _set_knob(getattr(node, f.name), knob, value)
    elif isinstance(node, dict):
        n += sum(_set_knob(v, knob, value) for v in node.values())
    elif isinstance(node, (list, tuple)):
        n += sum(_set_knob(v, knob, value) for v in node)
    return n


def adapted_model_config(model_cfg: Any, model: nn.Module, specs: list, where: str = "train.dynamics") -> Any:
    """A copy of ``model_cfg`` with the values the controllers adapted in ``model`` (a model
    whose values were restored, e.g. by :func:`restore`) written into the knobs that hold them,
    so that a model built from the config alone is the adapted one. Used by the Hugging Face
    export; the caller checks the equivalence on a probe (a part that only shares the knob's
    name, such as a sinusoidal table's ``base`` beside rotary layers, makes that check fail and
    the export is refused). One-line ``ConfigError`` for a controller whose value has no knob."""
    out = copy.deepcopy(model_cfg)
    for c in build_controllers(specs, model, where):
        if c.kind not in CONFIG_KNOB:
            raise ConfigError(f"{where}: the adapted '{c.kind}' value has no model-config knob that reproduces it "
                              f"(only {', '.join(CONFIG_KNOB)} can be carried into an exported config)")
        knob, cast = CONFIG_KNOB[c.kind]
        if not _set_knob(out, knob, cast(c.applied)):
            raise ConfigError(f"{where}: no part of the model config has a '{knob}' knob to carry the adapted "
                              f"'{c.kind}' value")
    return out
