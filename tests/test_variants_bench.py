"""``archlab bench variants``: variant specs, the all-together run and the pairwise mode, on
tiny shapes (bookkeeping only; no speed is asserted)."""

from __future__ import annotations

import json

import pytest

from archlab.registry import ConfigError


def test_variant_spec_parsing():
    from archlab.bench.variants import parse_variant

    assert parse_variant("g=model.position.kind=givens_rope,model.position.base_mults=[1, 10]") == (
        "g", {"model.position.kind": "givens_rope", "model.position.base_mults": [1, 10]})
    with pytest.raises(ConfigError, match="NAME=KEY=VALUE"):
        parse_variant("no-equals")


def test_variants_bench_runs_and_writes_ratios(tmp_path, capsys):
    from archlab.cli import main

    out = tmp_path / "v.json"
    rc = main(["bench", "variants", "configs/lm_ref.yaml", "--shape", "file", "--set", "model.dim=16",
               "--set", "model.depth=1", "--set", "train.seq_len=8", "--set", "train.batch=2",
               "--variant", "givens=model.position.kind=givens_rope,model.position.rounds=2",
               "--variant", "rel=model.position.kind=relative", "--rounds", "2", "--warmup", "1",
               "--clock", "cpu", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["baseline"] == "base" and res["clock"] == "cpu"
    assert list(res["step_time_ratios"]) == ["base", "givens", "rel"]
    assert res["step_time_ratios"]["base"]["ratio"] == 1.0
    assert all(r["ratio"] > 0 for r in res["step_time_ratios"].values())
    assert res["contenders"]["givens"]["info"]["model"]["position"]["kind"] == "givens_rope"
    assert "step time relative to 'base'" in capsys.readouterr().out
    from archlab.bench.variants import resolve_variants

    with pytest.raises(ConfigError, match="work per step"):
        resolve_variants("configs/lm_ref.yaml", ["x=train.batch=2"])


def test_variants_bench_pairwise_times_each_variant_alone(tmp_path):
    """--pairwise: every variant runs in its own alternation with a fresh baseline."""
    from archlab.cli import main

    out = tmp_path / "v.json"
    rc = main(["bench", "variants", "configs/lm_ref.yaml", "--shape", "file", "--set", "model.dim=16",
               "--set", "model.depth=1", "--set", "train.seq_len=8", "--set", "train.batch=2",
               "--variant", "givens=model.position.kind=givens_rope", "--variant", "rel=model.position.kind=relative",
               "--rounds", "2", "--warmup", "1", "--clock", "cpu", "--pairwise", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "pairwise" and list(res["step_time_ratios"]) == ["base", "givens", "rel"]
    assert {n: sorted(p["contenders"]) for n, p in res["pairs"].items()} == {
        "givens": ["base", "givens"], "rel": ["base", "rel"]}
    assert res["step_time_ratios"]["rel"] == res["pairs"]["rel"]["step_time_ratios"]["rel"]
