"""Experiment files: every bad value is refused at load, before anything trains.

Generated like tests/test_fuzz_config.py: each experiment key (and each element of its lists)
gets every value class; a case passes when ``load_experiment`` either raises a one-line
ConfigError naming the key, or -- for the values listed in :data:`VALID` -- loads. Plus the
holes a fuzzer found by hand: a variant that writes ``train: null`` (or ``data: null``) once
escaped the equal-compute check and trained 1,300x the baseline's tokens.
"""

from __future__ import annotations

import math

import pytest
import yaml

from archlab.lab.experiment import load_experiment
from archlab.registry import ConfigError

BASE = {"model": {"dim": 32, "depth": 1, "heads": 4, "max_seq_len": 64},
        "train": {"batch": 4, "seq_len": 16, "warmup": 1, "eval_every": 2, "eval_tokens": 128, "log_every": 1}}
EXPERIMENT = {"name": "t", "base": "base.yaml", "budget": {"steps": 4}, "seeds": [0, 1], "baseline": "a",
              "eval": {"split": "validation", "max_tokens": 256}, "variants": {"a": {}, "b": {"model.position.kind": "alibi"}}}

VALUES = {"wrong_type": "abc", "bool": True, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -1,
          "zero": 0, "huge": 10**30, "empty": "", "list": [1], "dict": {"x": 1}, "null": None}

# key (dotted inside the experiment; "seeds[]" is an element of the list) -> value classes that load
VALID = {
    "name": {"wrong_type", "null"},  # null: the file's stem
    "description": {"wrong_type", "empty", "null"},
    "base": {"null"},  # no base config: the defaults, plus the experiment's budget
    "overrides": {"null"}, "also": {"null"}, "eval": {"null"},
    "eval.max_tokens": {"null"},  # the whole split
    "eval.seq_lens": {"list", "null"},  # [1]: also evaluate with 1-token windows
    "seeds": {"list"}, "seeds[]": {"zero"},
    "variants.a": {"null"},  # a variant with no overrides: the base itself
    "stats": {"null"}, "stats.correction": {"null"}, "stats.level": {"null"},  # null: holm, 0.95
}
KEYS = ["name", "description", "base", "overrides", "budget", "budget.steps", "seeds", "seeds[]", "baseline",
        "eval", "eval.split", "eval.max_tokens", "eval.seq_lens", "eval.seq_lens[]", "metric", "also", "also[]",
        "variants", "variants.a", "variants.b.model", "stats", "stats.correction", "stats.level"]


def with_value(key: str, value) -> dict:
    exp = yaml.safe_load(yaml.safe_dump(EXPERIMENT))  # a deep copy
    if key.startswith("variants.b."):  # the variant is that one section only
        exp["variants"]["b"] = {}
    parts = key.split(".")
    at = exp
    for p in parts[:-1]:
        at = at.setdefault(p, {})
    last = parts[-1]
    if last.endswith("[]"):
        at[last[:-2]] = [value]
    else:
        at[last] = value
    return exp


def write(tmp_path, exp: dict):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(exp))  # NaN and inf are written as YAML's .nan / .inf
    return p


def refusal(tmp_path, exp: dict) -> str | None:
    try:
        load_experiment(write(tmp_path, exp))
    except ConfigError as e:
        assert "\n" not in str(e), repr(str(e))
        return str(e)
    return None


CASES = [(k, vc) for k in KEYS for vc in VALUES]


@pytest.mark.parametrize("key, value_class", CASES, ids=[f"{k}={vc}" for k, vc in CASES])
def test_experiment_fuzz(tmp_path, key, value_class):
    msg = refusal(tmp_path, with_value(key, VALUES[value_class]))
    if value_class in VALID.get(key, ()):
        assert msg is None, f"a valid value was refused: {msg}"
        return
    assert msg is not None, "nonsense accepted"
    # the message names the key; a variant's config errors read "variants.b: model: ..."
    named = key.split("[")[0].replace("variants.b.", "variants.b: ")
    assert named in msg, msg


def test_good_experiment_loads(tmp_path):
    exp = load_experiment(write(tmp_path, EXPERIMENT))
    assert exp.budget == {"steps": 4} and exp.seeds == [0, 1] and exp.eval_max_tokens == 256
    assert set(exp.variants) == {"a", "b"} and exp.variants["b"].train.steps == 4


@pytest.mark.parametrize("section", ["train", "data", "model"])
def test_a_variant_cannot_null_a_section(tmp_path, section):
    """``train: null`` used to reset the variant's train section to the defaults, budget and batch
    shape included, escaping the equal-compute check."""
    exp = with_value(f"variants.b.{section}", None)
    msg = refusal(tmp_path, exp)
    assert msg is not None and f"variants.b" in msg and section in msg, msg


@pytest.mark.parametrize("over, needle", [
    ({"train": {"tokens": 5000}}, "train.tokens"),
    ({"train": {"seed": 3}}, "train.seed"),
    ({"data": {"corpus": "stdlib"}}, "data.corpus"),
    ({"train.steps": None}, "train.steps"),
    ({"train": "x"}, "train"),
])
def test_a_variant_cannot_touch_the_budget_shape_or_data(tmp_path, over, needle):
    exp = with_value("variants.b", over)
    msg = refusal(tmp_path, exp)
    assert msg is not None and "would change the budget" in msg and needle in msg, msg


@pytest.mark.parametrize("seeds, needle", [
    ([], "non-empty"), ([0, 0], "duplicate"), ([True, 1], "non-negative integers"), ([-1], "non-negative"),
    ([0.5], "integers"), ("0,1", "list"),
])
def test_seeds_are_checked_at_load(tmp_path, seeds, needle):
    msg = refusal(tmp_path, with_value("seeds", seeds))
    assert msg is not None and msg.split(": ", 1)[1].startswith("seeds") and needle in msg, msg


def test_every_variant_is_validated_at_load(tmp_path):
    """The last variant's mistake is refused before the first variant would train."""
    exp = with_value("variants.z", {"model.position": {"kind": "rope", "base": math.nan}})
    msg = refusal(tmp_path, exp)
    assert msg is not None and "variants.z: model.position.base" in msg, msg


def test_budget_is_the_parsed_value(tmp_path):
    exp = with_value("budget", {"tokens": "2e3"})
    assert load_experiment(write(tmp_path, exp)).budget == {"tokens": 2000}
    for bad in ({"tokens": None}, {"seconds": math.inf}, {"steps": 0}, {"steps": 1, "tokens": 2}):
        assert refusal(tmp_path, with_value("budget", bad)) is not None, bad


def test_the_repository_experiments_load():
    """Every committed experiment (the demo's quick.yaml included) passes the stricter checks."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for p in sorted((root / "experiments").glob("*.yaml")):
        if "task" in p.read_text():
            continue  # task experiments build their data at load; tests/test_tasks.py covers them
        exp = load_experiment(p)
        assert exp.variants and all(c.train.total_steps() or c.train.seconds for c in exp.variants.values())


def test_stats_defaults_and_choices(tmp_path):
    exp = load_experiment(write(tmp_path, EXPERIMENT))
    assert (exp.correction, exp.level) == ("holm", 0.95)  # family-wise control by default
    for correction in ("holm", "bonferroni", "none"):
        exp = load_experiment(write(tmp_path, with_value("stats", {"correction": correction, "level": 0.9})))
        assert (exp.correction, exp.level) == (correction, 0.9)
    assert load_experiment(write(tmp_path, with_value("stats", {"level": 0.99}))).correction == "holm"


@pytest.mark.parametrize("stats, needle", [
    ({"correction": "fdr"}, "stats.correction: 'fdr'; allowed: holm, bonferroni, none"),
    ({"correction": "Holm"}, "stats.correction"),
    ({"level": 1.0}, "stats.level: 1.0; allowed: a number strictly between 0 and 1"),
    ({"level": 0}, "stats.level"), ({"level": 95}, "stats.level"), ({"level": "0.95"}, "stats.level"),
    ({"alpha": 0.05}, "stats: unknown key 'alpha'; allowed: correction, level"),
    ([0.95], "stats: expected a mapping"),
])
def test_bad_stats_are_refused_at_load(tmp_path, stats, needle):
    msg = refusal(tmp_path, with_value("stats", stats))
    assert msg is not None and needle in msg, msg
