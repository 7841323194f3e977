"""Name -> part lookup, and the typed parsing of config values.

Every swappable part (positional scheme, token mixer, feed-forward, norm, model family) is
registered under a ``kind`` together with a dataclass of its parameters. A config names the
kind and its parameters; :meth:`Registry.parse` turns that into the dataclass instance,
refusing unknown kinds, unknown keys and wrong types with a one-line :class:`ConfigError`
that names the offending key and lists what is allowed.

This module knows nothing about ``torch``; builders are plain callables.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Union


class ConfigError(ValueError):
    """A configuration mistake, described in one line (key, problem, what is allowed).

    The line may quote what the user wrote; a pasted newline in it would split the CLI's one
    error line, so line breaks are kept visible as ``\\n`` instead."""

    def __init__(self, message: str) -> None:
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


@dataclass
class PartConfig:
    """Base of every part's parameter dataclass. ``kind`` names the registered part."""

    kind: str = ""


@dataclass
class Entry:
    kind: str
    config_cls: type
    build: Callable[..., Any]
    doc: str = ""


class Registry:
    """A named table of parts of one group (e.g. ``position``)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, Entry] = {}

    def register(self, kind: str, config_cls: type = PartConfig, doc: str = "") -> Callable:
        """Decorator registering ``build(cfg, ctx) -> module`` under ``kind``."""

        def deco(build: Callable) -> Callable:
            if kind in self._entries:
                raise ValueError(f"{self.group}: kind '{kind}' registered twice")
            self._entries[kind] = Entry(kind, config_cls, build, doc or (build.__doc__ or "").strip())
            return build

        return deco

    def declare(self, kind: str, config_cls: type, doc: str, *, build: str) -> None:
        """Register ``kind`` whose builder lives on a higher floor, named ``"module:function"``.

        The module is imported when the first part of this kind is built, so the catalogue can
        list (and the config validate) a kind without importing the code that builds it."""
        module, _, name = build.partition(":")
        if not module or not name:
            raise ValueError(f"{self.group}: builder of '{kind}' must be 'module:function', got {build!r}")

        def lazy(*args: Any, **kwargs: Any) -> Any:
            import importlib

            return getattr(importlib.import_module(module), name)(*args, **kwargs)

        lazy.__qualname__ = build
        self.register(kind, config_cls, doc)(lazy)

    def kinds(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, kind: str) -> bool:
        return kind in self._entries

    def entry(self, kind: str, where: str = "") -> Entry:
        if kind not in self._entries:
            where = where or self.group
            raise ConfigError(
                f"{where}.kind: unknown {self.group} kind '{kind}'; allowed: {', '.join(self.kinds())}"
            )
        return self._entries[kind]

    def field_names(self, kind: str) -> set[str]:
        return {f.name for f in dataclasses.fields(self.entry(kind).config_cls)}

    def parse_each(self, specs: Any, ctx: dict, where: str, *, example: str, second: str) -> list[PartConfig]:
        """A list of parts, one per kind, each parsed and ``check``-ed against ``ctx``: what a list
        section such as ``train.dynamics`` holds. ``example`` follows "expected a list" in the
        refusal of a non-list; ``second`` follows "a second '<kind>'" in the refusal of a repeat."""
        if not isinstance(specs, (list, tuple)):
            raise ConfigError(f"{where}: expected a list {example}; kinds: {', '.join(self.kinds())}")
        out: list[PartConfig] = []
        for i, spec in enumerate(specs):
            at = f"{where}[{i}]"
            cfg = self.parse(spec, at)
            if any(c.kind == cfg.kind for c in out):
                raise ConfigError(f"{at}: a second '{cfg.kind}'{second}")
            if hasattr(cfg, "check"):
                cfg.check(ctx, at)
            out.append(cfg)
        return out

    def parse(self, value: Any, where: str) -> PartConfig:
        """A ``{kind: ..., **params}`` mapping (or a bare kind string) -> the kind's dataclass."""
        if isinstance(value, PartConfig):
            value = dataclasses.asdict(value)
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, dict):
            got = "null" if value is None else type(value).__name__
            raise ConfigError(f"{where}: expected a mapping with a 'kind' key, got {got}; "
                              f"allowed kinds: {', '.join(self.kinds())}")
        if "kind" not in value:
            raise ConfigError(f"{where}: missing 'kind'; allowed: {', '.join(self.kinds())}")
        entry = self.entry(str(value["kind"]), where)
        cfg = from_dict(entry.config_cls, value, where)
        check = getattr(cfg, "validate", None)
        if check is not None:
            check(where)
        return cfg

    def build(self, cfg: PartConfig, *args: Any, **kwargs: Any) -> Any:
        return self.entry(cfg.kind).build(cfg, *args, **kwargs)


POSITION = Registry("position")
MIXER = Registry("mixer")
FFN = Registry("ffn")
NORM = Registry("norm")
FAMILY = Registry("family")
TASK = Registry("task")  # synthetic tasks (data.task); kinds in archlab.catalog.tasks
RESIDUAL = Registry("residual")  # residual policies, chosen by a layer's norm.placement
INIT = Registry("init")  # initialisers, chosen by model.init
METHOD = Registry("method")  # training methods, chosen by train.method
COMPRESSOR = Registry("compressor")  # the hierarchical family's compressors (family_options.compressor)

REGISTRIES: dict[str, Registry] = {r.group: r for r in (POSITION, MIXER, FFN, NORM, FAMILY, TASK, RESIDUAL, INIT, METHOD, COMPRESSOR)}


def part(group: str, default: Callable[[], Any] | None = None, optional: bool = False) -> Any:
    """A dataclass field holding a registered part of ``group`` (parsed through its registry)."""
    meta = {"registry": group, "optional": optional}
    if default is None:
        return field(default=None, metadata=meta)
    return field(default_factory=lambda: REGISTRIES[group].parse(default(), group), metadata=meta)


# ----------------------------------------------------------------------------- typed parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# Integers must fit a signed 64-bit word: numpy and torch (seeds, sizes) refuse anything wider, and
# a value that large is a typo in any field of a config.
INT_LIMIT = 2**63


def _show(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: an error stays one readable line whatever was pasted."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _union_label(args: tuple) -> str:
    names = ["null" if a is type(None) else _type_name(a) for a in args]
    return " or ".join(names)


def _refuse_wild_numbers(value: Any, where: str) -> None:
    """NaN compares false with everything, so a range check downstream would let it through;
    refuse it, and integers past 64 bits, wherever they hide in a loosely typed (``Any``)
    value. (±inf stays: a normalised ``train.dynamics`` item carries ``max: inf``.)"""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{where}: expected a finite number, got nan")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(f"{where}: {value} is out of range; allowed: integers of magnitude below 2**63")
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_wild_numbers(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_wild_numbers(v, f"{where}[{i}]")


def coerce(value: Any, tp: Any, where: str, *, allow_inf: bool = False) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` or raise a one-line ConfigError.

    Numbers must be finite: ``.nan`` or ``.inf`` would make a budget endless and slip through
    every ``<=`` range check. ``allow_inf`` admits ±inf for fields whose default is infinite
    (there it means "no limit")."""
    origin = typing.get_origin(tp)
    if tp is Any:
        _refuse_wild_numbers(value, where)
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # ``X | None``: X's own message says more than "expected X or null"
            return coerce(value, real[0], where, allow_inf=allow_inf)
        for arg in real:
            try:
                return coerce(value, arg, where, allow_inf=allow_inf)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_union_label(args)}, got {_show(value)}")
    if origin is typing.Literal:
        args = typing.get_args(tp)
        if isinstance(value, (bool, dict, list)) or value not in args:
            raise ConfigError(f"{where}: {_show(value)} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{where}[{i}]", allow_inf=allow_inf)
                         for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{where}[{i}]", allow_inf=allow_inf) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {coerce(k, kt, where): coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            value = dataclasses.asdict(value)
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
    if tp is int:
        return _coerce_int(value, where)
    if tp is float:
        return _coerce_float(value, where, allow_inf)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        if not value.strip():
            raise ConfigError(f"{where}: empty string; give a value (or leave the key out)")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):  # no kind, device or path holds one
            raise ConfigError(f"{where}: {_show(value)} contains a control character (a line break or tab)")
        return value
    return value


def _coerce_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
    if not isinstance(value, int):
        # YAML reads 2_000_000 as int, but 2e6 as a string/float: accept whole floats.
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        value = int(f)
    if not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(f"{where}: {value} is out of range; allowed: integers of magnitude below 2**63")
    return value


def _coerce_float(value: Any, where: str, allow_inf: bool) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {_show(value)}")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {value} is out of range for a number") from None
    if isinstance(value, float):
        f = value
    elif isinstance(value, str):  # PyYAML reads "3e-3" as a string
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {_show(value)}") from None
    else:
        raise ConfigError(f"{where}: expected a number, got {_show(value)}")
    if math.isnan(f) or (math.isinf(f) and not allow_inf):
        raise ConfigError(f"{where}: expected a finite number, got {_show(value)}")
    return f


def _infinite_default(f: dataclasses.Field) -> bool:
    return isinstance(f.default, float) and math.isinf(f.default)


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key and type."""
    if isinstance(data, cls):
        return data
    label = where or "config"
    if data is None:
        # ``train: null`` reads as "defaults" to the loader but almost never to the writer (an
        # experiment variant with ``train: null`` once escaped the equal-compute check).
        raise ConfigError(f"{label}: expected a mapping, got null; leave the key out for the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            kind = f" for kind '{data['kind']}'" if "kind" in data and "kind" in fields else ""
            allowed = ", ".join(sorted(fields))
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{path}: unknown key{kind}; allowed: {allowed}")
        f = fields[key]
        sub = f"{where}.{key}" if where else key
        group = f.metadata.get("registry")
        if group is not None:
            if value is None and f.metadata.get("optional"):
                kwargs[key] = None
            else:
                if isinstance(value, dict) and "kind" not in value and f.default_factory is not dataclasses.MISSING:
                    # A partial part (``--set model.position.base=500``) refines the default kind.
                    value = {**to_dict(f.default_factory()), **value}
                kwargs[key] = REGISTRIES[group].parse(value, sub)
        else:
            kwargs[key] = coerce(value, hints[key], sub, allow_inf=_infinite_default(f))
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (tuples become lists) suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(d: dict, prefix: str = "", *, whole: Callable[[str, Any], bool] | None = None) -> dict[str, Any]:
    """Nested dicts as ``{dotted key: leaf}``; a dict for which ``whole(key, value)`` is true is
    kept as one leaf (an empty dict contributes no key)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not (whole is not None and whole(key, v)):
            out.update(flatten(v, key + ".", whole=whole))
        else:
            out[key] = v
    return out
