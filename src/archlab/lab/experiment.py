"""Experiment files: a base config, named variants, one budget, seeds, a baseline.

```yaml
name: quick
description: positional schemes on the embedded corpus
base: ../configs/lm.yaml          # relative to this file
overrides: {model.dim: 128}       # applied to every variant
budget: {tokens: 1_000_000}       # exactly one of tokens / steps / seconds, equal for all
seeds: [0, 1, 2]
baseline: rope
eval: {split: validation, max_tokens: 131072}
stats: {correction: holm, level: 0.95}   # optional; these are the defaults
variants:
  rope: {}
  alibi: {model.position.kind: alibi}
```

Everything is checked when the file is loaded — every variant's config is built and
validated — so a typo in the last variant fails before the first run starts. Duplicate keys (two
variants with one name) are refused by the YAML loader. Variants may
not touch the budget or the batch shape: equal compute is the point of the comparison.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archlab.config import Config, TrainConfig, apply_overrides, load_yaml, parse_config
from archlab.stats import CORRECTIONS, DEFAULT_CORRECTION, DEFAULT_LEVEL
from archlab.registry import INT_LIMIT, ConfigError, flatten, from_dict
from archlab.train.objectives import Objective, objective_for

EXPERIMENT_KEYS = {"name", "description", "base", "overrides", "budget", "seeds", "baseline", "eval", "variants",
                   "metric", "also", "stats"}
STATS_KEYS = ("correction", "level")
BUDGET_KEYS = ("tokens", "steps", "seconds")
# What makes compute equal: no variant may change these.
FIXED_KEYS = ("train.steps", "train.tokens", "train.seconds", "train.batch", "train.seq_len", "train.grad_accum",
              "train.seed", "data.")
NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass
class Experiment:
    name: str
    path: Path
    baseline: str
    seeds: list[int]
    budget: dict[str, float]
    eval_split: str
    eval_max_tokens: int | None
    variants: dict[str, Config]  # name -> validated config (seed set per run)
    overrides: dict[str, dict] = field(default_factory=dict)  # the variant overrides as written
    description: str = ""
    metric: str = "bpb"  # primary metric (lower is better): verdicts are given on it
    also: list[str] = field(default_factory=list)  # secondary metrics, tabulated with the same statistics
    eval_seq_lens: list[int] = field(default_factory=list)  # extra held-out evaluations at these lengths
    # fractions of the budget at which the trainer's periodic evaluation also runs (and step 0):
    # metrics <m>@<100·f>% for the objective's first two periodic metrics (loss, and bpb or an error rate)
    eval_fractions: list[float] = field(default_factory=list)
    correction: str = "holm"  # stats.correction: family-wise correction over the variants (lab/stats.py)
    level: float = 0.95  # stats.level: confidence level; 1 - level is the family-wise error rate

    @property
    def objective(self) -> Objective:
        """What every variant optimises (the baseline's data section decides; variants may not
        change the data)."""
        return objective_for(self.variants[self.baseline])

    def metric_names(self) -> list[str]:
        """Every metric a run of this experiment reports (all lower-is-better), as its objective
        names them (bpb and loss, and ``@n`` for each ``eval.seq_lens``; a task's error rates and
        answer loss, and ``@ood_*`` for each OOD split)."""
        return [*self.objective.metric_names(self), *self.early_metric_names()]

    def early_metric_names(self) -> list[str]:
        return [f"{m}@{fraction_label(f)}" for f in self.eval_fractions for m in self.objective.val_metrics[:2]]

    def fraction_steps(self, cfg: Config) -> dict[str, int]:
        """``eval.fractions`` as steps of ``cfg``'s budget, by label (``1%`` -> step ⌈0.01·steps⌉)."""
        total = cfg.train.total_steps()
        return {fraction_label(f): max(1, math.ceil(f * total)) for f in self.eval_fractions}

    def config_for(self, variant: str, seed: int) -> Config:
        over: dict[str, Any] = {"train.seed": seed}
        if self.eval_fractions:  # the periodic evaluation also at step 0 and at each fraction of the budget
            cfg = self.variants[variant]
            over["train.eval_at"] = sorted({*cfg.train.eval_at, 0, *self.fraction_steps(cfg).values()})
        raw = apply_overrides(self.variants[variant].to_dict(), over)
        return parse_config(raw)


def fraction_label(f: float) -> str:
    return f"{100 * f:g}%"


def _override_keys(d: dict) -> dict[str, Any]:
    """A variant's overrides by dotted key; a part spec (a dict with ``kind``) and the per-layer
    table stay whole."""
    return flatten(d, whole=lambda key, v: "kind" in v or key.startswith("model.layers"))


def _touches_fixed(key: str) -> bool:
    """Whether overriding ``key`` can change a FIXED_KEYS value: the key itself, a key inside it,
    or a section above it (``train: null`` or ``data: {...}`` replaces them all)."""
    for f in FIXED_KEYS:
        stem = f.rstrip(".")
        if key == stem or key.startswith(stem + ".") or stem.startswith(key + "."):
            return True
    return False


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _given(raw: dict, key: str, default: Any) -> Any:
    """``raw[key]``, or ``default`` when absent or null -- not when merely falsy (``eval: 0`` is
    a mistake to refuse, not an empty mapping)."""
    value = raw.get(key)
    return default if value is None else value


def _text(raw: dict, key: str, default: str, path: Path, empty_ok: bool = True) -> str:
    value = _given(raw, key, default)
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        raise ConfigError(f"{path}: {key}: expected text, got {value!r} (quote it if it is a number)")
    return value


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every variant's config is built and validated, so
    nothing trains before every mistake in the file has been refused."""
    path = Path(path)
    raw = load_yaml(path, "experiment file")
    unknown = sorted(map(str, set(raw) - EXPERIMENT_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(EXPERIMENT_KEYS))}")

    base: dict = {}
    if raw.get("base") is not None:
        if not isinstance(raw["base"], str) or not raw["base"].strip():
            raise ConfigError(f"{path}: base: expected the path of a config file, got {raw['base']!r}")
        base = load_yaml((path.parent / raw["base"]).resolve(), f"{path}: base config")
    exp_overrides = _given(raw, "overrides", {})
    if not isinstance(exp_overrides, dict):
        raise ConfigError(f"{path}: overrides: expected a mapping of dotted keys, e.g. {{model.dim: 128}}")
    try:
        merged = apply_overrides(base, exp_overrides)
        from_dict(Config, merged, "")  # keys and types only: the variants are validated in full below
    except ConfigError as e:
        try:
            from_dict(Config, base, "")
            blame = "overrides"
        except ConfigError:
            blame = "base"
        raise ConfigError(f"{path}: {blame}: {e}") from None
    base = merged

    budget = raw.get("budget")
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_KEYS:
        raise ConfigError(f"{path}: budget: give exactly one of {', '.join(BUDGET_KEYS)}, e.g. budget: {{tokens: 1000000}}")
    (bkey, bval), = budget.items()
    if bval is None:
        raise ConfigError(f"{path}: budget.{bkey}: give a positive value, e.g. budget: {{{bkey}: 1000}}")
    try:
        parsed = getattr(from_dict(TrainConfig, {bkey: bval}, "budget"), bkey)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if parsed <= 0:
        raise ConfigError(f"{path}: budget.{bkey}: must be positive, got {bval!r}")
    base = apply_overrides(base, {"train.steps": None, "train.tokens": None, "train.seconds": None,
                                  f"train.{bkey}": bval})

    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(_is_count(s) and 0 <= s < INT_LIMIT for s in seeds):
        raise ConfigError(f"{path}: seeds: expected a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds: duplicate seeds in {seeds}")

    variants_raw = raw.get("variants")
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise ConfigError(f"{path}: variants: expected a mapping of name -> overrides")
    named = {str(k): v for k, v in variants_raw.items()}
    if len(named) != len(variants_raw):
        raise ConfigError(f"{path}: variants: two variants share a name once written as text")
    variants_raw = named
    baseline = raw.get("baseline", next(iter(variants_raw)))
    if not isinstance(baseline, (str, int)) or isinstance(baseline, bool) or str(baseline) not in variants_raw:
        raise ConfigError(f"{path}: baseline '{baseline}' is not a variant; variants: {', '.join(variants_raw)}")
    baseline = str(baseline)

    configs: dict[str, Config] = {}
    overrides: dict[str, dict] = {}
    for name, over in variants_raw.items():
        name = str(name)
        if not NAME.match(name):
            raise ConfigError(f"{path}: variant name '{name}' may only use letters, digits and _ . + -")
        over = {} if over is None else over
        if not isinstance(over, dict):
            raise ConfigError(f"{path}: variants.{name}: expected a mapping of overrides")
        for key in _override_keys(over):
            if _touches_fixed(key):
                raise ConfigError(
                    f"{path}: variants.{name}: '{key}' would change the budget, batch shape, seed or data; "
                    "these are set once for the whole experiment (budget:, seeds:, overrides:)"
                )
        try:
            configs[name] = parse_config(apply_overrides(base, over))
        except ConfigError as e:
            raise ConfigError(f"{path}: variants.{name}: {e}") from None
        overrides[name] = over

    ev = _given(raw, "eval", {})
    if not isinstance(ev, dict) or set(ev) - {"split", "max_tokens", "seq_lens", "fractions"}:
        got = f"keys {', '.join(map(str, ev))}" if isinstance(ev, dict) else repr(ev)
        raise ConfigError(f"{path}: eval: expected a mapping with keys split, max_tokens, seq_lens, fractions; "
                          f"got {got}")
    fractions = _given(ev, "fractions", [])
    if not isinstance(fractions, list) or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in fractions):
        raise ConfigError(f"{path}: eval.fractions: expected a list of fractions of the budget in (0, 1), "
                          f"e.g. [0.01, 0.1]; got {fractions!r}")
    if fractions and bkey == "seconds":
        raise ConfigError(f"{path}: eval.fractions: needs a budget in steps or tokens (a wall-clock budget has no "
                          "step to evaluate at in advance)")
    split = ev.get("split", "validation")
    if not isinstance(split, str) or split not in ("validation", "val", "test"):
        raise ConfigError(f"{path}: eval.split: {split!r}; allowed: validation, test")
    max_tokens = ev.get("max_tokens", 131072)
    if max_tokens is not None and not (_is_count(max_tokens) and 0 < max_tokens < INT_LIMIT):
        raise ConfigError(f"{path}: eval.max_tokens: expected a positive integer (or null: the whole split), "
                          f"got {max_tokens!r}")
    seq_lens = _given(ev, "seq_lens", [])
    if not isinstance(seq_lens, list) or not all(_is_count(n) and 0 < n < INT_LIMIT for n in seq_lens):
        raise ConfigError(f"{path}: eval.seq_lens: expected a list of positive integers, got {seq_lens!r}")
    for name, cfg in configs.items():
        too_long = [n for n in seq_lens if n > cfg.model.max_seq_len]
        if too_long:
            raise ConfigError(f"{path}: eval.seq_lens: {too_long[0]} exceeds variant {name}'s model.max_seq_len "
                              f"{cfg.model.max_seq_len}; raise model.max_seq_len in overrides")
    exp = Experiment(
        name=_text(raw, "name", path.stem, path, empty_ok=False), path=path, baseline=baseline, seeds=seeds,
        budget={bkey: getattr(configs[baseline].train, bkey)}, eval_split="validation" if split == "val" else split,
        eval_max_tokens=max_tokens, variants=configs, overrides=overrides,
        description=_text(raw, "description", "", path), eval_seq_lens=list(seq_lens),
        eval_fractions=[float(f) for f in fractions],
    )
    exp.objective.check_experiment(exp, ev, path)
    known = exp.metric_names()
    exp.metric = str(raw.get("metric", known[0]))
    also = _given(raw, "also", [])
    if not isinstance(also, list) or not all(isinstance(m, str) for m in also):
        raise ConfigError(f"{path}: also: expected a list of metric names, e.g. [bpb@512]")
    exp.also = [str(m) for m in also]
    exp.correction, exp.level = _stats(raw, path)
    for key, m in [("metric", exp.metric), *(("also", m) for m in exp.also)]:
        if m not in known:
            raise ConfigError(f"{path}: {key}: unknown metric '{m}'; allowed: {', '.join(known)}")
    return exp


def _stats(raw: dict, path: Path) -> tuple[str, float]:
    """``stats: {correction: holm | bonferroni | none, level: 0.95}``, both optional (null: the default)."""
    st = _given(raw, "stats", {})
    if not isinstance(st, dict):
        raise ConfigError(f"{path}: stats: expected a mapping such as {{correction: holm, level: 0.95}}, got {st!r}")
    unknown = sorted(map(str, set(st) - set(STATS_KEYS)))
    if unknown:
        raise ConfigError(f"{path}: stats: unknown key '{unknown[0]}'; allowed: {', '.join(STATS_KEYS)}")
    correction = _given(st, "correction", DEFAULT_CORRECTION)
    if not isinstance(correction, str) or correction not in CORRECTIONS:
        raise ConfigError(f"{path}: stats.correction: {correction!r}; allowed: {', '.join(CORRECTIONS)}")
    level = _given(st, "level", DEFAULT_LEVEL)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ConfigError(f"{path}: stats.level: {level!r}; allowed: a number strictly between 0 and 1, e.g. 0.95")
    return correction, float(level)
