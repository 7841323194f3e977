"""Statistics of ``archlab compare``: t quantiles, intervals, pairing, verdicts, coverage."""

from __future__ import annotations

import math
import random

import pytest

from archlab.stats import (VERDICTS, adjust_p_values, betainc, compare_family, compare_to_baseline, mean_ci,
                               min_detectable_difference, summarize, t_cdf, t_quantile)
from archlab.registry import ConfigError

# Two-sided 95% critical values from standard t tables (3 decimals).
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042, 60: 2.000,
               120: 1.980}


@pytest.mark.parametrize("df, t", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_table(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-t, abs=5e-4)  # symmetry


def test_t_quantile_other_levels_and_normal_limit():
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=5e-4)
    assert t_quantile(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert t_quantile(0.9, 1) == pytest.approx(3.078, abs=5e-4)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, 1e5) == pytest.approx(t_quantile(0.975, 1e5 - 1), abs=1e-8)  # expansion switch
    assert t_quantile(0.5, 3) == 0.0


@pytest.mark.parametrize("p", [1e-9, 0.001, 0.1, 0.4, 0.6, 0.975, 0.999999])
def test_t_quantile_closed_forms(p):
    # df=1 is Cauchy: tan(pi (p - 1/2)), written as -cot(pi p) to stay exact in the tails;
    # df=2: (2p - 1) / sqrt(2 p (1 - p)).
    cauchy = -1 / math.tan(math.pi * p) if p < 0.5 else 1 / math.tan(math.pi * (1 - p))
    assert t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-10)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)


@pytest.mark.parametrize("df", [1, 2.5, 7.3, 40, 5000])
def test_t_cdf_inverts_quantile_for_fractional_df(df):
    for p in (0.01, 0.3, 0.8, 0.995):
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, rel=1e-9)


def test_betainc_known_values():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248)  # 1 - sum_{j<2} C(4,j) .4^j .6^(4-j)
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)  # arcsine law, symmetric


def test_t_quantile_rejects_bad_arguments():
    with pytest.raises(ValueError):
        t_quantile(1.5, 3)
    with pytest.raises(ValueError):
        t_quantile(0.975, 0)


def test_mean_ci_basic_and_one_value():
    mean, std, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert (lo, hi) == pytest.approx((2.0 - 4.302653 / math.sqrt(3), 2.0 + 4.302653 / math.sqrt(3)))
    mean, std, lo, hi = mean_ci([5.0])
    assert mean == 5.0 and math.isnan(std) and (lo, hi) == (-math.inf, math.inf)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([1.0, math.nan])


def test_identical_samples_no_detectable_difference():
    same = [2.31, 2.35, 2.29]
    for kw in ({"seeds": [0, 1, 2], "baseline_seeds": [0, 1, 2]}, {}):
        c = compare_to_baseline(same, same, **kw)
        assert c["mean"] == 0.0 and c["ci"][0] <= 0.0 <= c["ci"][1]
        assert c["verdict"] == "no detectable difference"


def test_same_distribution_no_detectable_difference():
    rng = random.Random(1)
    a = [rng.gauss(2.3, 0.05) for _ in range(5)]
    b = [rng.gauss(2.3, 0.05) for _ in range(5)]
    c = compare_to_baseline(a, b)
    assert c["method"] == "welch" and c["ci"][0] < 0 < c["ci"][1]
    assert c["verdict"] == "no detectable difference" and c["p_value"] > 0.05


@pytest.mark.parametrize("lower_is_better", [True, False])
def test_large_difference_detected_with_the_right_sign(lower_is_better):
    rng = random.Random(2)
    low = [1.0 + rng.gauss(0, 0.01) for _ in range(3)]
    high = [2.0 + rng.gauss(0, 0.01) for _ in range(3)]
    seeds = {"seeds": [0, 1, 2], "baseline_seeds": [2, 1, 0]}  # same set, any order: paired
    down = compare_to_baseline(low, high, lower_is_better=lower_is_better, **seeds)
    up = compare_to_baseline(high, low, lower_is_better=lower_is_better, **seeds)
    assert down["method"] == "paired" and down["ci"][1] < 0 < up["ci"][0]
    assert down["mean"] == pytest.approx(-1.0, abs=0.05) and down["relative_pct"] == pytest.approx(-50, abs=3)
    assert (down["verdict"], up["verdict"]) == (("better", "worse") if lower_is_better else ("worse", "better"))
    assert down["p_value"] < 1e-3


def test_pairing_removes_shared_seed_noise():
    # Each seed shifts both runs by the same large offset (shared data order); the variant is
    # 0.02 better on every seed. Welch sees the offsets as noise; the paired interval does not.
    offsets = [0.0, 0.3, -0.2, 0.15]
    base = [2.0 + o + 0.001 * i for i, o in enumerate(offsets)]
    var = [2.0 + o - 0.02 - 0.001 * i for i, o in enumerate(offsets)]
    paired = compare_to_baseline(var, base, seeds=[0, 1, 2, 3], baseline_seeds=[0, 1, 2, 3])
    welch = compare_to_baseline(var, base)
    assert paired["method"] == "paired" and welch["method"] == "welch"
    assert paired["mean"] == pytest.approx(welch["mean"])
    assert paired["ci"][1] - paired["ci"][0] < 0.1 * (welch["ci"][1] - welch["ci"][0])
    assert paired["verdict"] == "better" and welch["verdict"] == "no detectable difference"


def test_different_seed_sets_fall_back_to_welch_and_one_seed_is_insufficient():
    c = compare_to_baseline([1.0, 1.1, 1.2], [1.0, 1.1, 1.2], seeds=[0, 1, 2], baseline_seeds=[0, 1, 3])
    assert c["method"] == "welch" and c["df"] == pytest.approx(4.0)
    c = compare_to_baseline([1.0], [2.0], seeds=[0], baseline_seeds=[0])
    assert c["verdict"] == "insufficient seeds" and c["ci"] == [-math.inf, math.inf] and c["mean"] == -1.0
    assert compare_to_baseline([1.0, 1.1], [2.0])["verdict"] == "insufficient seeds"


def test_welch_satterthwaite_df():
    # s1^2 = 1 (n=3), s2^2 = 4 (n=5): df = (1/3 + 4/5)^2 / ((1/3)^2/2 + (4/5)^2/4).
    c = compare_to_baseline([0.0, 1.0, 2.0], [0.0, 2.0, 4.0, 0.0, 4.0])
    assert c["df"] == pytest.approx((1 / 3 + 4 / 5) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 5) ** 2 / 4))
    assert c["mean"] == pytest.approx(1.0 - 2.0)


def test_bonferroni_widens_the_interval():
    a, b = [1.0, 1.2, 1.1, 1.3], [1.25, 1.3, 1.4, 1.2]
    plain = compare_to_baseline(a, b)
    corrected = compare_to_baseline(a, b, correction="bonferroni", comparisons=4)
    assert corrected["level"] == pytest.approx(1 - 0.05 / 4)
    assert corrected["ci"][0] < plain["ci"][0] and corrected["ci"][1] > plain["ci"][1]
    assert corrected["ci_raw"] == plain["ci"] == plain["ci_raw"] and corrected["raw_level"] == 0.95
    assert corrected["p_value"] == plain["p_value"] and corrected["p_adjusted"] == pytest.approx(4 * plain["p_value"])
    with pytest.raises(ValueError):
        compare_to_baseline(a, b, correction="holm-ish")
    with pytest.raises(ValueError, match="Holm"):  # Holm's p-value needs the other comparisons
        compare_to_baseline(a, b, correction="holm", comparisons=4)
    assert compare_to_baseline(a, b, correction="holm")["p_adjusted"] == plain["p_value"]  # k = 1
    for level in (0.0, 1.0, 95, math.nan, True):
        with pytest.raises(ValueError, match="level"):
            compare_to_baseline(a, b, level=level)


def test_holm_adjusted_p_values_by_hand():
    # Sorted: 0.005, 0.01, 0.03, 0.04 (k = 4): 4·0.005 = 0.02; max(0.02, 3·0.01) = 0.03;
    # max(0.03, 2·0.03) = 0.06; max(0.06, 1·0.04) = 0.06. The NaN (no test) is not counted in k.
    p = [0.01, math.nan, 0.04, 0.03, 0.005]
    holm = adjust_p_values(p, "holm")
    assert math.isnan(holm[1])
    assert [holm[i] for i in (0, 2, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    bonf = adjust_p_values(p, "bonferroni")
    assert [bonf[i] for i in (0, 2, 3, 4)] == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust_p_values(p, "none")[2] == 0.04
    assert adjust_p_values([0.5, 0.6], "holm") == [1.0, 1.0]  # capped at 1, and monotone
    assert adjust_p_values([0.02, 0.02], "holm") == pytest.approx([0.04, 0.04])  # ties


def test_holm_adjusted_p_values_match_the_step_down_rule():
    """``p~ < alpha`` rejects exactly what the step-down rejects: p_(i) with p_(j) < alpha/(k-j+1) for all j <= i."""
    rng = random.Random(7)
    alpha = 0.05
    for _ in range(500):
        k = rng.randint(1, 15)
        p = [rng.random() ** rng.choice([1, 3, 6]) for _ in range(k)]  # many small ones too
        order = sorted(range(k), key=lambda i: p[i])
        step_down = set()
        for j, i in enumerate(order):
            if p[i] >= alpha / (k - j):
                break
            step_down.add(i)
        adjusted = adjust_p_values(p, "holm")
        assert {i for i in range(k) if adjusted[i] < alpha} == step_down
        assert all(a >= q for a, q in zip(adjusted, p))  # never below the raw p-value
        bonf = adjust_p_values(p, "bonferroni")
        assert all(h <= b for h, b in zip(adjusted, bonf))  # Holm rejects everything Bonferroni does


def test_mde_by_hand():
    # Paired diffs 0.01, 0.03, 0.02: n = 3, s = 0.01, se = s/sqrt(3), df = 2, where the t quantile
    # has a closed form, t_p = (2p - 1)/sqrt(2p(1 - p)). Holm over 13 comparisons: alpha' = 0.05/13.
    def t2(p):
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))

    se = 0.01 / math.sqrt(3)
    base = [2.0, 2.1, 2.2]
    samples = {f"v{i}": ([b + d + 0.5 * i for b, d in zip(base, (0.01, 0.03, 0.02))], [0, 1, 2]) for i in range(13)}
    fam = compare_family(samples, base, baseline_seeds=[0, 1, 2], correction="holm")
    assert fam["v0"]["mean"] == pytest.approx(0.02) and fam["v0"]["se"] == pytest.approx(se)
    assert fam["v0"]["comparisons"] == 13 and fam["v0"]["level"] == pytest.approx(1 - 0.05 / 13)
    assert fam["v0"]["mde"] == pytest.approx((t2(1 - 0.05 / 26) + t2(0.8)) * se, rel=1e-9)
    assert fam["v0"]["power"] == 0.8
    alone = compare_to_baseline(samples["v0"][0], base, seeds=[0, 1, 2], baseline_seeds=[0, 1, 2])
    assert alone["mde"] == pytest.approx((t2(0.975) + t2(0.8)) * se, rel=1e-9)
    # Welch: v = [0, 1, 2], b = [1, 2, 3]: se = sqrt(1/3 + 1/3), df = 4; table t_{.975,4} = 2.776, t_{.8,4} = 0.941.
    w = compare_to_baseline([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert w["method"] == "welch" and w["df"] == pytest.approx(4.0)
    assert w["mde"] == pytest.approx((2.776 + 0.941) * math.sqrt(2 / 3), abs=2e-3)
    assert math.isnan(compare_to_baseline([1.0], [2.0])["mde"])


def test_power_at_the_mde_is_about_80_percent():
    # With 10 seeds the approximation is good: a true difference of the MDE (for the true sd) is
    # detected ~80% of the time; half of it far less often.
    rng = random.Random(11)
    n, sd, trials = 10, 0.01, 1500
    seeds = list(range(n))
    mde = min_detectable_difference(sd * math.sqrt(2) / math.sqrt(n), n - 1, 0.05)
    hits = {1.0: 0, 0.5: 0}
    for _ in range(trials):
        base = [rng.gauss(0, sd) for _ in seeds]
        noise = [rng.gauss(0, sd) for _ in seeds]
        for f in hits:
            var = [-f * mde + e for e in noise]
            c = compare_to_baseline(var, base, seeds=seeds, baseline_seeds=seeds)
            hits[f] += c["verdict"] == "better"
    assert 0.75 <= hits[1.0] / trials <= 0.85  # binomial sd at 0.8: 0.010
    assert hits[0.5] / trials < 0.4


@pytest.mark.parametrize("paired", [True, False])
def test_interval_coverage_is_about_95_percent(paired):
    # Many experiments (3 seeds each) with a true difference of 0.1: the interval should cover it ~95%.
    rng = random.Random(1234)
    trials, covered = 1500, 0
    seeds = [0, 1, 2]
    for _ in range(trials):
        shared = [rng.gauss(0, 0.5) for _ in seeds] if paired else [0.0] * 3
        base = [2.0 + s + rng.gauss(0, 0.05) for s in shared]
        var = [2.1 + s + rng.gauss(0, 0.08) for s in shared]
        kw = {"seeds": seeds, "baseline_seeds": seeds} if paired else {}
        lo, hi = compare_to_baseline(var, base, **kw)["ci"]
        covered += lo <= 0.1 <= hi
    assert 0.92 <= covered / trials <= 0.98  # binomial sd at 95%: 0.0056


def _results(runs: list[tuple[str, int, str, float]]) -> dict:
    return {"experiment": {"baseline": "rope", "metric": "bpb", "variants": {"rope": {}, "alibi": {}, "nope": {}}},
            "runs": [{"variant": v, "seed": s, "status": st, "bpb": x, "parameters": 100, "tokens_per_s": 10.0 * (s + 1),
                      "wall_time": 5.0, "peak_mem_mb": 1.0, "tokens": 64} for v, s, st, x in runs]}


def test_summarize_order_filters_and_verdicts():
    runs = [("alibi", 0, "done", 1.50), ("rope", 0, "done", 2.00), ("rope", 1, "done", 2.10),
            ("alibi", 1, "done", 1.61), ("rope", 2, "done", 2.05), ("alibi", 2, "done", 1.54),
            ("alibi", 3, "failed", 0.0), ("nope", 0, "done", 2.5), ("nope", 1, "done", math.nan)]
    s = summarize(_results(runs))
    assert list(s) == ["rope", "alibi", "nope"]  # the experiment's order, not the runs'
    assert s["rope"]["verdict"] == "baseline" and s["rope"]["diff"]["verdict"] == "baseline"
    a = s["alibi"]
    assert a["n"] == 3 and a["failed"] == 1 and a["seeds"] == [0, 1, 2]
    assert a["mean"] == pytest.approx((1.50 + 1.61 + 1.54) / 3) and len(a["ci95"]) == 2
    assert a["diff"]["method"] == "paired" and a["verdict"] == "better"
    assert a["diff"]["mean"] == pytest.approx(a["mean"] - s["rope"]["mean"])
    assert a["diff"]["relative_pct"] == pytest.approx(100 * a["diff"]["mean"] / s["rope"]["mean"])
    assert a["tokens_per_s"] == pytest.approx(20.0) and a["parameters"] == 100 and a["wall_time"] == 5.0
    n = s["nope"]  # one finite run, one diverged: reported, not averaged
    assert n["n"] == 1 and n["non_finite"] == 1 and n["std"] is None and n["ci95"] == [None, None]
    assert n["verdict"] == "insufficient seeds" and n["diff"]["ci_raw"] == n["diff"]["ci_adjusted"] == [None, None]
    assert all(v["verdict"] in VERDICTS for v in s.values())


def test_summarize_without_baseline_runs():
    s = summarize(_results([("alibi", 0, "done", 1.5), ("alibi", 1, "done", 1.6), ("rope", 0, "failed", 0.0)]))
    assert s["rope"]["n"] == 0 and s["rope"]["mean"] is None
    assert s["alibi"]["verdict"] == "insufficient seeds"


def test_summarize_reads_the_recorded_correction_and_level():
    runs = [("rope", s, "done", 2.0 + 0.1 * s) for s in range(3)]
    runs += [("alibi", s, "done", 1.5 + 0.1 * s + 0.001 * s * s) for s in range(3)]  # a clear effect
    runs += [("nope", s, "done", 2.28 + 0.1 * s + (-0.1, 0.0, 0.1)[s]) for s in range(3)]  # raw p ~ 0.04
    res = _results(runs)
    nope_p = summarize(res, correction="none")["nope"]["diff"]["p_value"]
    assert 0.025 < nope_p < 0.05  # the case where Holm and Bonferroni differ (k = 2)
    default = summarize(res)
    assert default["nope"]["diff"]["correction"] == "holm" and default["nope"]["diff"]["level"] == 0.95
    assert default["nope"]["diff"]["p_adjusted"] == pytest.approx(nope_p)  # the largest: (k-2+1) p
    assert default["alibi"]["verdict"] == "better" and default["nope"]["verdict"] == "worse"
    res["experiment"]["stats"] = {"correction": "bonferroni"}
    bonf = summarize(res)
    assert bonf["nope"]["verdict"] == "no detectable difference" and bonf["alibi"]["verdict"] == "better"
    assert bonf["nope"]["diff"]["p_adjusted"] == pytest.approx(2 * nope_p)
    assert bonf["nope"]["diff"]["mde"] > abs(bonf["nope"]["diff"]["mean"])
    lo, hi = bonf["nope"]["diff"]["ci_adjusted"]
    rlo, rhi = bonf["nope"]["diff"]["ci_raw"]
    assert lo < 0 < hi and 0 < rlo < rhi < hi and bonf["nope"]["diff"]["adjusted_level"] == pytest.approx(0.975)
    res["experiment"]["stats"] = {"correction": "none", "level": 0.99}
    assert summarize(res)["nope"]["verdict"] == "no detectable difference"  # p ~ 0.04 > 0.01
    assert summarize(res, correction="none", level=0.95)["nope"]["verdict"] == "worse"  # arguments win
    for bad, key in (({"correction": "fdr"}, "stats.correction"), ({"level": 1.5}, "stats.level"),
                     ({"level": "0.9"}, "stats.level")):
        res["experiment"]["stats"] = bad
        with pytest.raises(ConfigError, match=key) as e:
            summarize(res)
        assert "\n" not in str(e.value)


def _null_experiment(rng: random.Random, variants: int = 13, seeds: int = 3) -> dict:
    """``variants`` + 1 variants that all have the same true bpb: per seed a shared offset (data
    order and initialisation are the same for every variant with that seed) plus run noise."""
    names = ["base"] + [f"v{i}" for i in range(variants)]
    shared = [rng.gauss(0.0, 0.05) for _ in range(seeds)]
    runs = [{"variant": v, "seed": s, "status": "done", "bpb": 1.9 + shared[s] + rng.gauss(0.0, 0.01)}
            for v in names for s in range(seeds)]
    return {"experiment": {"baseline": "base", "metric": "bpb", "variants": names}, "runs": runs}


def test_family_wise_false_verdict_rate_under_no_effect():
    """13 variants vs a baseline at 3 seeds, no true effect anywhere: the chance of at least one
    better/worse verdict is <= 5% with holm or bonferroni; uncorrected it is ~1 - 0.95^13."""
    rng = random.Random(20261202)
    trials = 2000
    any_verdict = {"holm": 0, "bonferroni": 0, "none": 0}
    for _ in range(trials):
        res = _null_experiment(rng)
        found = {}
        for correction in any_verdict:
            res["experiment"]["stats"] = {"correction": correction}  # as archlab compare records it
            found[correction] = {n for n, v in summarize(res).items() if v["verdict"] in ("better", "worse")}
            any_verdict[correction] += bool(found[correction])
        assert found["bonferroni"] <= found["holm"] <= found["none"]
    rates = {c: n / trials for c, n in any_verdict.items()}
    assert rates["holm"] <= 0.06 and rates["bonferroni"] <= 0.06, rates  # binomial sd at 5%: 0.005
    assert rates["none"] > 0.20, rates
