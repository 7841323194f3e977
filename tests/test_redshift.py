"""Neural Redshift: the complexity measures on functions with known answers, the random
networks, the findings' statistics, the sweeps and the CLI's refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from archlab.analysis.complexity import (
    binarise,
    grid,
    legendre_order,
    lz76,
    lz_complexity,
    lz_normalised,
    mean_frequency,
)
from archlab.analysis.redshift import (
    RandomMLP,
    RedshiftSweep,
    findings,
    mlp_function,
    parse_sweep,
    part_function,
)
from archlab.cli import main

@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the tests draw their inputs from the global generator


N = 64
X, Y = grid(N)


# --------------------------------------------------------------------- the measures


def test_grid_is_cell_centres():
    x, y = grid(4)
    assert np.allclose(x[0], [-0.75, -0.25, 0.25, 0.75]) and np.allclose(y[:, 0], [-0.75, -0.25, 0.25, 0.75])


@pytest.mark.parametrize("nu", [0.5, 1, 3, 7.5])
def test_a_cosine_of_nu_cycles_has_mean_frequency_nu(nu):
    assert math.isclose(mean_frequency(np.cos(2 * np.pi * nu * (X + 1) / 2)), nu, rel_tol=1e-9)
    assert math.isclose(mean_frequency(np.cos(2 * np.pi * nu * (Y + 1) / 2)), nu, rel_tol=1e-9)


def test_frequency_of_a_product_wave_is_its_radius_and_order_grows():
    f = np.cos(2 * np.pi * 3 * (X + 1) / 2) * np.cos(2 * np.pi * 4 * (Y + 1) / 2)
    assert math.isclose(mean_frequency(f), 5.0, rel_tol=1e-9)
    ramp, wiggle = mean_frequency(X), mean_frequency(np.sin(20 * X))
    assert ramp < 2 < wiggle


def test_constants_score_zero_or_minimal():
    c = np.full((N, N), 3.7)
    assert mean_frequency(c) == 0.0 and legendre_order(c) == 0.0
    assert lz_complexity(c) == lz_normalised(np.zeros(N * N, dtype=np.int8))
    assert lz_complexity(c) < 0.01


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_a_legendre_polynomial_scores_its_order(n):
    p = np.polynomial.legendre.Legendre.basis(n)
    assert math.isclose(legendre_order(p(X)), n, rel_tol=1e-9)
    assert math.isclose(legendre_order(p(X) * p(Y), degree=10), 2 * n, rel_tol=1e-9)
    assert math.isclose(legendre_order(p(Y) + 4.0), n, rel_tol=1e-9)  # the constant term is not counted


def test_legendre_order_is_a_mixture_weighted_by_coefficients():
    p1, p3 = (np.polynomial.legendre.Legendre.basis(k)(X) for k in (1, 3))
    assert math.isclose(legendre_order(2 * p1 + p3), (2 * 1 + 1 * 3) / 3, rel_tol=1e-9)


def test_measures_ignore_scale_and_offset():
    r = np.random.default_rng(0).normal(size=(N, N))
    f = np.sin(3 * X) * np.cos(2 * Y) + 0.1 * r
    for fn in (mean_frequency, lz_complexity, legendre_order):
        assert math.isclose(fn(5 * f + 3), fn(f), rel_tol=1e-9), fn.__name__


def test_lz76_known_counts():
    assert lz76("0001101001000101") == 6  # Kaspar & Schuster's example
    assert lz76("0" * 50) == 2 and lz76("01" * 50) == 3
    assert lz76("") == 0 and lz76("1") == 1


def test_lz_random_bits_are_near_one_and_periodic_near_zero():
    rng = np.random.default_rng(1)
    rand = lz_normalised(rng.integers(0, 2, 8192))
    assert 0.9 < rand < 1.15
    assert lz_normalised(np.tile([0, 1, 1, 0, 1], 1600)) < 0.02
    stripes = (np.sin(2 * np.pi * 2 * (X + 1) / 2) > 0).astype(float)
    noise = rng.normal(size=(N, N))
    assert lz_complexity(stripes) < 0.05 < 0.9 < lz_complexity(noise)


def test_binarise_at_the_median():
    b = binarise(np.arange(10.0))
    assert b.sum() == 5 and b[-1] == 1 and b[0] == 0


def test_measures_refuse_bad_shapes():
    with pytest.raises(ValueError, match="square grid"):
        mean_frequency(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="degree"):
        legendre_order(np.zeros((4, 4)), degree=10)


# --------------------------------------------------------------------- the networks


def test_random_mlp_draws_uniform_weights_of_the_given_scale():
    g = torch.Generator().manual_seed(0)
    net = RandomMLP(activation="tanh", width=64, depth=3, scale=2.5, structure="plain", generator=g)
    w = torch.cat([p.reshape(-1) for p in net.parameters()])
    assert float(w.abs().max()) <= 2.5 and float(w.abs().max()) > 2.4
    assert math.isclose(float(w.std()), 2.5 / math.sqrt(3), rel_tol=0.05)
    assert len(net.hidden) == 2


def test_structures_and_activations_change_the_function():
    kw = dict(width=16, depth=3, scale=3.0, seed=0, n=16)
    base = mlp_function(activation="tanh", structure="plain", **kw)
    for structure in ("residual", "layernorm", "residual_layernorm"):
        assert not np.allclose(base, mlp_function(activation="tanh", structure=structure, **kw)), structure
    assert not np.allclose(base, mlp_function(activation="sine", structure="plain", **kw))
    assert np.array_equal(base, mlp_function(activation="tanh", structure="plain", **kw))  # deterministic


def test_residual_structure_is_identity_plus_branch():
    g = torch.Generator().manual_seed(0)
    net = RandomMLP(activation="relu", width=8, depth=2, scale=1.0, structure="residual", generator=g).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    h = torch.relu(net.first(x))
    want = net.out(h + torch.relu(net.hidden[0](h))).squeeze(-1)
    assert torch.allclose(net(x), want)


def test_part_function_depends_on_the_part():
    s = parse_sweep(["parts"], ["grid=16", "seeds=1"])
    a = part_function({"model.position.kind": "rope"}, depth=1, seed=0, s=s)
    b = part_function({"model.position.kind": "sinusoidal"}, depth=1, seed=0, s=s)
    assert a.shape == (16, 16) and np.isfinite(a).all()
    assert not np.allclose(a, b)
    assert np.array_equal(a, part_function({"model.position.kind": "rope"}, depth=1, seed=0, s=s))


# --------------------------------------------------------------------- the findings


def _rows(complex_act: str, simple_act: str, gap: float, seeds: int = 4) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for structure in ("plain", "residual", "layernorm"):
        for act in ("relu", "tanh", "sine"):
            for depth in (1, 4):
                for scale in (0.3, 10.0):
                    for seed in range(seeds):
                        hi = act == complex_act and structure == "plain" and depth == 4 and scale == 10.0
                        rows.append({"structure": structure, "activation": act, "depth": depth, "scale": scale,
                                     "seed": seed, "frequency": 1.0 + (gap if hi else 0.0) + 0.01 * rng.normal()})
    return rows


def test_findings_reproduce_when_the_data_say_so_and_not_otherwise():
    s = dataclasses.replace(RedshiftSweep(), activations=["relu", "tanh", "sine"], depths=[1, 4], scales=[0.3, 10.0],
                            structures=["plain", "residual", "layernorm"], seeds=4)
    found = {f["claim"]: f for f in findings(_rows("tanh", "relu", 2.0), s)}
    tanh_vs_relu = found["deep tanh networks are more complex than deep ReLU networks (depth 4, A ≥ 3)"]
    assert tanh_vs_relu["verdict"] == "reproduces" and tanh_vs_relu["p_holm"] < 0.05
    assert found["residual connections make deep tanh networks simpler (depth 4, A ≥ 3)"]["verdict"] == "reproduces"
    assert found["deep sine networks are more complex than deep ReLU networks (depth 4, A ≥ 3)"]["verdict"] \
        .startswith("not detected")
    flipped = {f["claim"]: f for f in findings(_rows("relu", "tanh", 2.0), s)}
    assert flipped["deep tanh networks are more complex than deep ReLU networks (depth 4, A ≥ 3)"]["verdict"] \
        == "not detected (opposite sign)"
    ps = [f["p_one_sided"] for f in found.values()]
    assert all(f["p_holm"] >= f["p_one_sided"] for f in found.values()) and min(ps) < 0.05


# --------------------------------------------------------------------- settings and the CLI


def _fuzz():
    cases = []
    for f in dataclasses.fields(RedshiftSweep):
        cases.append((f.name, "abc" if f.type in ("int", "list[int]", "list[float]") else 3))
    cases += [("sweeps", ["mlp", "trees"]), ("activations", ["relu", "swoosh"]), ("structures", []),
              ("part_groups", ["ffn", "hats"]), ("grid", 4), ("degree", 64), ("depths", [0]), ("scales", [-1.0]),
              ("seeds", 0), ("part_dim", 30), ("bogus", 1), ("scales", [".inf"])]
    return cases


@pytest.mark.parametrize("key,value", _fuzz(), ids=str)
def test_cli_refuses_every_bad_setting_in_one_line(key, value, tmp_path, capsys):
    rc = main(["redshift", "--out", str(tmp_path / "r"), "--set", f"{key}={json.dumps(value)}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("archlab: error:"), err
    assert f"redshift.{key}" in err or key == "bogus" and "unknown key" in err, err
    assert not (tmp_path / "r").exists()


def test_a_tiny_sweep_writes_its_report(tmp_path, capsys):
    rc = main(["redshift", "--out", str(tmp_path / "r"), "--no-progress", "--set", "seeds=2", "--set", "grid=16",
               "--set", "degree=4", "--set", "depths=[1,3]", "--set", "scales=[0.3,10]", "--set",
               "activations=[relu,tanh,sine]", "--set", "part_groups=[position]", "--set", "part_depths=[1]",
               "--set", "part_dim=32"])
    assert rc == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert len(res["mlp"]) == 4 * 3 * 2 * 2 * 2
    assert {r["kind"] for r in res["parts"]} >= {"rope", "alibi", "sinusoidal"}
    assert res["findings"]["frequency"] and {"lz", "order"} <= set(res["findings"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "The paper's findings (frequency)" in md and "plots/frequency_plain.png" in md
    assert (tmp_path / "r" / "plots" / "parts_frequency.png").is_file()
    assert "data:image/png;base64," in (tmp_path / "r" / "report.html").read_text()
    out = capsys.readouterr().out
    assert "deep tanh networks are more complex than deep ReLU networks" in out


def test_rebuild_recomputes_the_report_from_results(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["redshift", "--out", str(out), "--no-progress", "--set", "seeds=2", "--set", "grid=16",
                 "--set", "degree=4", "--set", "sweeps=[parts]", "--set", "part_groups=[mixer]",
                 "--set", "part_depths=[1,2]", "--set", "part_dim=32"]) == 0
    (out / "report.md").unlink()
    assert main(["redshift", "--out", str(out), "--rebuild"]) == 0
    md = (out / "report.md").read_text()
    assert "report rebuilt from results.json by" in md and "Does depth raise the order of a part?" in md
    res = json.loads((out / "results.json").read_text())
    assert {r["function"] for r in res["references"]} >= {"constant", "white noise"}
    noise = next(r for r in res["references"] if r["function"] == "white noise")
    const = next(r for r in res["references"] if r["function"] == "constant")
    assert noise["lz"] > 0.9 > 0.1 > const["lz"] and noise["frequency"] > const["frequency"] == 0
    assert len(res["part_findings"]["frequency"]) == len({r["kind"] for r in res["parts"]})
    capsys.readouterr()
    assert main(["redshift", "--out", str(tmp_path / "none"), "--rebuild"]) == 2
    assert "results.json not found" in capsys.readouterr().err
    assert main(["redshift", "--out", str(out), "--rebuild", "--set", "seeds=3"]) == 2


def test_difference_claims_compare_effects():
    from archlab.analysis.redshift import run_claims

    rows = [{"seed": s, "g": g, "d": d, "frequency": (3.0 if g == "a" and d == 2 else 1.0) + 0.01 * s * (d == 2)}
            for s in range(4) for g in ("a", "b") for d in (1, 2)]
    claim = {"claim": "a's depth effect exceeds b's", "a": (dict(g="a", d=2), dict(g="a", d=1)),
             "b": (dict(g="b", d=2), dict(g="b", d=1))}
    (r,) = run_claims(rows, [claim], "frequency")
    assert math.isclose(r["difference"], 2.0) and r["verdict"] == "reproduces"
