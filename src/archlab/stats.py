"""Statistics for ``archlab compare`` and the analysis reports: is a variant better than the
baseline beyond seed noise? (A floor of its own, below everything that tests a difference.)

Everything here is plain Python (``math`` only; scipy is deliberately not a dependency).

* Student-t quantiles come from inverting the t CDF, written with the regularized incomplete
  beta function: for ``t >= 0``, ``P(T > t) = I_x(nu/2, 1/2) / 2`` with ``x = nu / (nu + t^2)``
  (Abramowitz & Stegun 26.7.1; DLMF 8.17). ``I_x`` is evaluated by its continued fraction
  (DLMF 8.17.22) with the modified Lentz algorithm; the quantile is found by bisection, which
  is slow-ish (~50 CDF evaluations) but cannot diverge, and works for non-integer ``nu``
  (Welch).
* Intervals: ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)`` with the sample standard deviation
  ``s`` (divisor ``n - 1``).
* A variant is compared with the baseline on the per-seed differences when both ran the same
  seeds (*paired*: runs with one seed share initialisation seed and data order, so that shared
  noise cancels), otherwise with Welch's interval, ``se^2 = s1^2/n1 + s2^2/n2`` and the
  Welch–Satterthwaite ``df = se^4 / ((s1^2/n1)^2/(n1-1) + (s2^2/n2)^2/(n2-1))`` (Welch 1947).
* p-values: two-sided t test of zero difference, ``p = 2 P(T_df > |mean| / se)``.
* Multiple comparisons: an experiment compares ``k`` variants with one baseline (``k`` counts the
  comparisons that have a p-value; a variant with fewer than two seeds gets none). The
  correction (``stats.correction`` in the experiment file) controls the chance that *any* of
  the ``k`` verdicts is a false "better"/"worse" (the family-wise error rate, FWER) at
  ``alpha = 1 - level``:

  - ``holm`` (default; Holm 1979): sort the p-values ascending, ``p_(1) <= ... <= p_(k)``; the
    adjusted p-values are ``p~_(i) = max_{j<=i} min(1, (k-j+1) p_(j))``. This is the step-down
    procedure: ``p_(i)`` is rejected iff ``p_(j) < alpha/(k-j+1)`` for every ``j <= i`` (strict,
    like the verdict rule below; Holm's paper has ``<=``, which differs only on exact ties).
  - ``bonferroni``: ``p~ = min(1, k p)``.
  - ``none``: ``p~ = p`` (each verdict alone has a false-alarm rate ``alpha``; the FWER can reach
    ``k alpha``).

  The primary metric and each secondary (``also``) metric are separate families.
* Verdict: *better*/*worse* iff ``p~ < alpha``, the direction given by the sign of the mean
  difference (and ``lower_is_better``); otherwise *no detectable difference*.
* Intervals: every comparison carries its raw (uncorrected) interval at ``level`` and an adjusted
  one. For ``bonferroni`` and ``holm`` the adjusted interval has level ``1 - alpha/k``
  (Bonferroni's simultaneous intervals: all ``k`` cover their true differences together with
  probability ``>= level``). Under Holm this is conservative: Holm can reject a comparison whose
  Bonferroni interval still touches zero (the verdict follows ``p~``). For ``none`` the adjusted
  interval is the raw one.
* Power: the minimum detectable difference of the design, ``mde = (t_{1-alpha'/2, df} +
  t_{power, df}) · se`` with ``alpha' = alpha/k`` (``holm``, ``bonferroni``) or ``alpha``
  (``none``), ``power = 0.8``, and the comparison's ``se`` and ``df`` (paired: ``s_d/sqrt(n)``,
  ``n-1``; Welch: its ``se`` and Satterthwaite ``df``). It is the usual approximation of the
  noncentral-t power (the far tail ignored, the sample ``se`` standing in for the unknown one):
  with 10 or more seeds a true difference of that size gets a verdict with probability ~0.8;
  with 3 seeds the probability is lower (simulated with a known spread: ~0.76 for one
  comparison, ~0.68 at ``alpha/13``), i.e. there the difference detectable with 80% power is
  somewhat larger than ``mde``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

from archlab.registry import ConfigError

VERDICTS = ("better", "worse", "no detectable difference", "baseline", "insufficient seeds")
CORRECTIONS = ("holm", "bonferroni", "none")
DEFAULT_CORRECTION = "holm"
DEFAULT_LEVEL = 0.95
POWER = 0.8  # of the minimum detectable difference
_EPS = 1e-15
_TINY = 1e-300


def _betainc_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of ``I_x(a, b)`` without its prefactor (DLMF 8.17.22), modified Lentz.

    ``1 / (1 + d1/(1 + d2/(1 + ...)))`` with ``d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1))``
    and ``d_{2m} = m(b-m)x / ((a+2m-1)(a+2m))``; converges quickly for ``x < (a+1)/(a+b+2)``.
    """
    c, d, f = 1.0, 0.0, 1.0
    # The number of terms needed grows like sqrt(max(a, b)); 20000 covers df up to ~1e8.
    for j in range(1, 20001):
        m = j // 2
        if j % 2:
            dj = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            dj = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + dj * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + dj / c
        c = c if abs(c) > _TINY else _TINY
        f *= c * d
        if abs(c * d - 1.0) < _EPS:
            break
    return 1.0 / f


def betainc(a: float, b: float, x: float, xc: float | None = None) -> float:
    """Regularized incomplete beta ``I_x(a, b) = B(x; a, b) / B(a, b)`` for ``a, b > 0``.

    ``xc = 1 - x`` may be passed when the caller knows it more precisely than ``1 - x`` (for the
    t distribution near ``t = 0``). Uses ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where the continued
    fraction would converge slowly (Numerical Recipes §6.4 describes the same split).
    """
    xc = 1.0 - x if xc is None else xc
    if x <= 0.0:
        return 0.0
    if xc <= 0.0:
        return 1.0
    # log of the prefactor x^a (1-x)^b / B(a, b); lgamma keeps it finite for large a, b.
    log_front = a * math.log(x) + b * math.log(xc) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betainc_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betainc_cf(b, a, xc) / b


def t_sf(t: float, df: float) -> float:
    """Upper tail ``P(T > t)`` of Student's t with ``df > 0`` degrees of freedom (``inf``: normal).

    ``P(T > t) = I_{df/(df+t^2)}(df/2, 1/2) / 2`` for ``t >= 0`` (A&S 26.7.1) and symmetry.
    """
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return tail if t >= 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t; see :func:`t_sf`."""
    return 1.0 - t_sf(t, df) if t >= 0 else t_sf(-t, df)


@lru_cache(maxsize=4096)  # summaries and simulations ask for the same few quantiles repeatedly
def t_quantile(p: float, df: float) -> float:
    """Quantile ``t_{p, df}``: the ``t`` with ``P(T <= t) = p``; ``df = inf`` gives the normal.

    Bisection on the upper tail ``q = min(p, 1 - p)`` (monotone in ``t``), to the last few ulps;
    table values: ``t_{0.975, 1} = 12.706``, ``t_{0.975, 10} = 2.228``, ``z_{0.975} = 1.960``.
    ``df <= 0`` raises (no interval can be formed from one observation).
    """
    if not 0.0 < p < 1.0:
        if p in (0.0, 1.0):
            return math.copysign(math.inf, p - 0.5)
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"t_quantile: df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    q = min(p, 1.0 - p)
    if df > 1e5 and not math.isinf(df):
        # lgamma(df/2) ~ 1e5·ln(1e5) loses ~1e-11 of absolute precision in the beta prefactor, so
        # for large df expand around the normal quantile instead (Cornish–Fisher, A&S 26.7.5);
        # the first omitted term is O(z^9 / df^4) < 1e-17 here.
        z = t_quantile(p, math.inf)
        g1 = (z**3 + z) / 4.0
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
        g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
        return z + g1 / df + g2 / df**2 + g3 / df**3
    hi = 1.0
    while t_sf(hi, df) > q:  # bracket: grow until the tail beyond hi is small enough
        hi *= 2.0
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi) or hi - lo <= 4e-16 * hi:
            break
        if t_sf(mid, df) > q:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t


def _finite(values: Sequence[float]) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError("statistics need finite values (a diverged run has a NaN/inf metric; drop it first)")
    return out


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, std, lo, hi)``: sample mean, sample std (divisor ``n-1``) and Student-t interval.

    ``lo, hi = mean ∓ t_{(1+level)/2, n-1} · std / sqrt(n)``. With one value the spread is
    unknown: ``std`` is NaN and the interval is ``(-inf, inf)`` (it says nothing, and any verdict
    built on it is "insufficient seeds"). No values raise ``ValueError``.
    """
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci: no values")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, -math.inf, math.inf
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def check_stats(correction: Any, level: Any) -> None:
    """``ValueError`` unless ``correction`` is one of :data:`CORRECTIONS` and ``0 < level < 1``."""
    if not isinstance(correction, str) or correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")


def adjust_p_values(p_values: Sequence[float], correction: str) -> list[float]:
    """Family-wise adjusted p-values, in the input order (module docstring for the formulas).

    NaN entries (comparisons without a test) stay NaN and are not counted in ``k``. Ties keep
    their input order, which does not change the adjusted values (``holm`` takes a running max).
    """
    check_stats(correction, DEFAULT_LEVEL)
    ps = [float(p) for p in p_values]
    tested = [i for i, p in enumerate(ps) if not math.isnan(p)]
    k = len(tested)
    out = list(ps)
    if correction == "bonferroni":
        for i in tested:
            out[i] = min(1.0, k * ps[i])
    elif correction == "holm":
        running = 0.0
        for rank, i in enumerate(sorted(tested, key=lambda i: ps[i])):  # rank = j - 1
            running = max(running, min(1.0, (k - rank) * ps[i]))
            out[i] = running
    return out


def adjusted_level(level: float, correction: str, comparisons: int) -> float:
    """Level of the adjusted intervals: ``1 - (1-level)/k`` for holm and bonferroni, else ``level``."""
    return 1.0 - (1.0 - level) / max(1, comparisons) if correction in ("holm", "bonferroni") else level


def min_detectable_difference(se: float, df: float, alpha: float, power: float = POWER) -> float:
    """``(t_{1-alpha/2, df} + t_{power, df}) · se``: the smallest true difference that a two-sided
    level-``alpha`` t test with this ``se`` and ``df`` detects with probability about ``power``.
    NaN when the spread is unknown."""
    if not (math.isfinite(se) and df > 0):
        return math.nan
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * se


def _direction(mean: float, lower_is_better: bool) -> str:
    return "better" if (mean < 0) == lower_is_better else "worse"


def _paired(seeds: Sequence[Any] | None, baseline_seeds: Sequence[Any] | None) -> bool:
    if seeds is None or baseline_seeds is None:
        return False
    seeds, baseline_seeds = list(seeds), list(baseline_seeds)
    return len(set(seeds)) == len(seeds) == len(baseline_seeds) and set(seeds) == set(baseline_seeds)


def _raw_comparison(values: Sequence[float], baseline_values: Sequence[float], seeds: Sequence[Any] | None,
                    baseline_seeds: Sequence[Any] | None) -> dict[str, Any]:
    """Mean difference, ``se``, ``df``, method, ``n`` and raw p-value of ``variant - baseline``."""
    v, b = _finite(values), _finite(baseline_values)
    if not v or not b:
        raise ValueError("compare_to_baseline: both samples need at least one value")
    for name, s, xs in (("seeds", seeds, v), ("baseline_seeds", baseline_seeds, b)):
        if s is not None and len(s) != len(xs):
            raise ValueError(f"compare_to_baseline: {len(s)} {name} for {len(xs)} values")
    b_mean = math.fsum(b) / len(b)
    if _paired(seeds, baseline_seeds):
        by_seed = dict(zip(baseline_seeds, b))  # type: ignore[arg-type]
        diffs = [x - by_seed[s] for s, x in zip(seeds, v)]  # type: ignore[arg-type]
        n = len(diffs)
        mean, std, _, _ = mean_ci(diffs)
        se = std / math.sqrt(n) if n > 1 else math.nan
        out: dict[str, Any] = {"method": "paired", "n": n, "df": float(n - 1) if n > 1 else math.nan}
        enough = n >= 2
    else:
        nv, nb = len(v), len(b)
        mv = math.fsum(v) / nv
        mean = mv - b_mean
        out = {"method": "welch", "n": [nv, nb], "df": math.nan}
        enough = nv >= 2 and nb >= 2
        se = math.nan
        if enough:
            wv = math.fsum((x - mv) ** 2 for x in v) / (nv - 1) / nv  # s_v^2 / n_v
            wb = math.fsum((x - b_mean) ** 2 for x in b) / (nb - 1) / nb
            se = math.sqrt(wv + wb)
            # Both samples constant: Satterthwaite is 0/0; the interval is the point either way.
            out["df"] = (wv + wb) ** 2 / (wv**2 / (nv - 1) + wb**2 / (nb - 1)) if se > 0 else float(nv + nb - 2)
    if not enough:
        p_value = math.nan
    elif se > 0:
        p_value = 2.0 * t_sf(abs(mean) / se, out["df"])
    else:
        p_value = 1.0 if mean == 0 else 0.0
    out.update(mean=mean, se=se, p_value=p_value, enough=enough,
               relative_pct=100.0 * mean / b_mean if b_mean != 0 else math.nan)
    return out


def _interval(raw: dict[str, Any], level: float) -> list[float]:
    if not raw["enough"]:
        return [-math.inf, math.inf]
    half = t_quantile((1.0 + level) / 2.0, raw["df"]) * raw["se"] if raw["se"] > 0 else 0.0
    return [raw["mean"] - half, raw["mean"] + half]


def _finish(raw: dict[str, Any], p_adjusted: float, *, level: float, correction: str, comparisons: int,
            lower_is_better: bool) -> dict[str, Any]:
    """A comparison's intervals, MDE and verdict, given its family-adjusted p-value."""
    alpha = 1.0 - level
    adj_level = adjusted_level(level, correction, comparisons)
    if not raw["enough"]:
        verdict = "insufficient seeds"
    elif p_adjusted < alpha:
        verdict = _direction(raw["mean"], lower_is_better)
    else:
        verdict = "no detectable difference"
    ci_raw = _interval(raw, level)
    ci = _interval(raw, adj_level)
    mde = min_detectable_difference(raw["se"], raw["df"], 1.0 - adj_level) if raw["enough"] else math.nan
    return {"mean": raw["mean"], "ci": ci, "ci_raw": ci_raw, "level": adj_level, "raw_level": level,
            "se": raw["se"], "df": raw["df"], "n": raw["n"], "method": raw["method"],
            "relative_pct": raw["relative_pct"], "p_value": raw["p_value"], "p_adjusted": p_adjusted,
            "correction": correction, "comparisons": comparisons, "mde": mde, "power": POWER, "verdict": verdict}


def compare_to_baseline(
    values: Sequence[float], baseline_values: Sequence[float], *, seeds: Sequence[Any] | None = None,
    baseline_seeds: Sequence[Any] | None = None, level: float = 0.95, lower_is_better: bool = True,
    correction: str = "none", comparisons: int = 1, p_adjusted: float | None = None,
) -> dict[str, Any]:
    """Interval and verdict for ``variant - baseline``, one comparison of a family of ``comparisons``.

    Paired (``method="paired"``) when ``seeds`` and ``baseline_seeds`` are given and are the same
    set without repeats: the interval is :func:`mean_ci` of ``d_s = v_s - b_s`` (df ``n-1``).
    Otherwise Welch (``method="welch"``): ``se^2 = s_v^2/n_v + s_b^2/n_b``, Welch–Satterthwaite
    df (module docstring).

    Returns ``mean``, ``ci`` (the adjusted interval, at ``level`` = ``1 - (1-level)/comparisons``
    for holm and bonferroni), ``ci_raw`` (at ``raw_level``, the ``level`` argument), ``se``,
    ``df``, ``n`` (pairs, or ``[n_v, n_b]``), ``method``, ``relative_pct`` (``100 · mean /
    mean(baseline)``), ``p_value`` (raw two-sided t test of zero difference), ``p_adjusted``,
    ``correction``, ``comparisons``, ``mde`` (minimum detectable difference at ``power``) and
    ``verdict`` — "better", "worse", "no detectable difference", or "insufficient seeds" when
    fewer than two values (pairs) leave the spread unknown; then the intervals are
    ``[-inf, inf]`` and the p-values and ``mde`` NaN.

    ``p_adjusted`` is computed for ``none`` (``p``) and ``bonferroni`` (``min(1, k p)``). Holm's
    depends on the other comparisons' p-values: pass it (:func:`compare_family` does), or the
    call is refused unless ``comparisons == 1`` (where Holm is no correction).
    """
    check_stats(correction, level)
    k = int(comparisons)
    if k < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons!r}")
    raw = _raw_comparison(values, baseline_values, seeds, baseline_seeds)
    if p_adjusted is None:
        if correction == "holm" and k > 1:
            raise ValueError("Holm's adjusted p-value depends on every comparison of the family: "
                             "pass p_adjusted or use compare_family")
        p = raw["p_value"]
        p_adjusted = min(1.0, k * p) if correction == "bonferroni" and not math.isnan(p) else p
    return _finish(raw, float(p_adjusted), level=level, correction=correction, comparisons=k,
                   lower_is_better=lower_is_better)


def compare_family(
    samples: dict[str, tuple[Sequence[float], Sequence[Any] | None]], baseline_values: Sequence[float], *,
    baseline_seeds: Sequence[Any] | None = None, level: float = DEFAULT_LEVEL, lower_is_better: bool = True,
    correction: str = DEFAULT_CORRECTION,
) -> dict[str, dict[str, Any]]:
    """Every variant vs the baseline as one family: ``{name: comparison}`` (see
    :func:`compare_to_baseline` for the entries). ``samples`` maps a variant to ``(values, seeds)``;
    ``k`` is the number of comparisons with a p-value, and the p-values are adjusted together."""
    check_stats(correction, level)
    raws = {name: _raw_comparison(vals, baseline_values, seeds, baseline_seeds)
            for name, (vals, seeds) in samples.items()}
    names = list(raws)
    adjusted = adjust_p_values([raws[n]["p_value"] for n in names], correction)
    k = sum(1 for n in names if raws[n]["enough"])
    return {n: _finish(raws[n], p, level=level, correction=correction, comparisons=max(1, k),
                       lower_is_better=lower_is_better) for n, p in zip(names, adjusted)}


def _clean(x: Any) -> Any:
    """NaN/inf -> None, recursively, so results.json stays strict JSON (``null`` = "unknown")."""
    t = type(x)
    if t is int or t is str or t is bool or x is None:  # the common leaves first: summaries are cleaned often
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _mean_of(runs: list[dict], key: str) -> float | None:
    xs = [float(r[key]) for r in runs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return math.fsum(xs) / len(xs) if xs else None


def variant_order(results: dict) -> list[str]:
    """The experiment's variant order (``experiment.variants``), then any others as runs appear."""
    declared = results.get("experiment", {}).get("variants") or []
    order = list(declared)  # a dict (name -> overrides) or a list of names
    for r in results.get("runs", []):
        if r.get("variant") not in order:
            order.append(r["variant"])
    return order


def stats_settings(results: dict, correction: str | None = None, level: float | None = None) -> tuple[str, float]:
    """The correction and level to use: the arguments, else those ``archlab compare`` recorded in
    ``results["experiment"]["stats"]`` (from the experiment file's ``stats:``), else holm and 0.95.
    A recorded value that is not allowed is a one-line ``ConfigError`` naming it."""
    recorded = results.get("experiment", {}).get("stats") or {}
    if not isinstance(recorded, dict):
        raise ConfigError(f"results experiment.stats: expected a mapping, got {recorded!r}")
    correction = recorded.get("correction", DEFAULT_CORRECTION) if correction is None else correction
    level = recorded.get("level", DEFAULT_LEVEL) if level is None else level
    if not isinstance(correction, str) or correction not in CORRECTIONS:
        raise ConfigError(f"stats.correction: {correction!r}; allowed: {', '.join(CORRECTIONS)}")
    try:
        check_stats(correction, level)
    except ValueError:
        raise ConfigError(f"stats.level: {level!r}; allowed: a number strictly between 0 and 1, e.g. 0.95") from None
    return correction, float(level)


def summarize(results: dict, *, correction: str | None = None, level: float | None = None,
              metric: str | None = None) -> dict[str, dict]:
    """Per-variant statistics for ``results.json``'s ``variants`` section, in variant order.

    Only runs with ``status == "done"`` and a finite metric count (``non_finite`` counts done runs
    whose metric is NaN/inf — a diverged run — which cannot be averaged and are reported
    instead). Each entry: ``n``, ``seeds``, ``metric``, ``mean``, ``std``, ``ci95`` ([lo, hi],
    the variant's own 95% interval), ``diff`` (``mean``, ``ci_raw``, ``ci_adjusted``,
    ``relative_pct``, ``p_value`` (raw), ``p_adjusted``, ``level``, ``adjusted_level``,
    ``correction``, ``comparisons``, ``mde``, ``power``, ``method``, ``df``, ``se``, ``verdict``),
    ``verdict``, ``is_baseline``, ``parameters``, mean ``tokens_per_s``, ``wall_time``,
    ``peak_mem_mb``, ``tokens``, and ``failed`` (runs not done). Unknown values (a one-seed
    interval, a missing baseline) are ``None``. ``metric`` defaults to the experiment's primary
    metric; the secondary ones (``experiment.also``) use the same code, each its own family.
    ``correction`` and ``level`` default to :func:`stats_settings` (what the experiment recorded),
    so a rebuilt report gives the verdicts of the original one.
    """
    correction, level = stats_settings(results, correction, level)
    exp = results.get("experiment", {})
    metric = metric or exp.get("metric", "bpb")
    lower_is_better = bool(exp.get("lower_is_better", True))
    order = variant_order(results)
    baseline = exp.get("baseline") or (order[0] if order else None)
    done: dict[str, list[dict]] = {name: [] for name in order}
    failed = {name: 0 for name in order}
    non_finite = {name: 0 for name in order}
    for r in results.get("runs", []):
        if r.get("status") != "done":
            failed[r["variant"]] += 1
        elif not (isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])):
            non_finite[r["variant"]] += 1
        else:
            done[r["variant"]].append(r)
    base_runs = done.get(baseline, [])
    samples = {name: ([float(r[metric]) for r in done[name]], [r.get("seed") for r in done[name]])
               for name in order if name != baseline and done[name]}
    family = compare_family(samples, [float(r[metric]) for r in base_runs],
                            baseline_seeds=[r.get("seed") for r in base_runs], level=level,
                            lower_is_better=lower_is_better, correction=correction) if base_runs else {}

    out: dict[str, dict] = {}
    for name in order:
        runs = done[name]
        vals = [float(r[metric]) for r in runs]
        entry: dict[str, Any] = {"n": len(runs), "seeds": [r.get("seed") for r in runs], "metric": metric,
                                 "is_baseline": name == baseline, "failed": failed[name],
                                 "non_finite": non_finite[name]}
        if vals:
            mean, std, lo, hi = mean_ci(vals, 0.95)
            entry.update(mean=mean, std=std, ci95=[lo, hi])
        else:
            entry.update(mean=None, std=None, ci95=[None, None])
        if name == baseline:
            diff: dict[str, Any] = {"mean": 0.0, "ci_raw": [0.0, 0.0], "ci_adjusted": [0.0, 0.0],
                                    "relative_pct": 0.0, "verdict": "baseline"}
        elif name in family:
            c = family[name]
            diff = {"mean": c["mean"], "ci_raw": c["ci_raw"], "ci_adjusted": c["ci"],
                    "relative_pct": c["relative_pct"], "p_value": c["p_value"], "p_adjusted": c["p_adjusted"],
                    "level": c["raw_level"], "adjusted_level": c["level"], "correction": correction,
                    "comparisons": c["comparisons"], "mde": c["mde"], "power": c["power"],
                    "method": c["method"], "df": c["df"], "se": c["se"], "verdict": c["verdict"]}
        else:
            diff = {"mean": None, "ci_raw": [None, None], "ci_adjusted": [None, None], "relative_pct": None,
                    "correction": correction, "verdict": "insufficient seeds"}
        params = [r["parameters"] for r in runs if r.get("parameters") is not None]
        entry.update(diff=diff, verdict=diff["verdict"], parameters=params[0] if params else None,
                     tokens_per_s=_mean_of(runs, "tokens_per_s"), wall_time=_mean_of(runs, "wall_time"),
                     peak_mem_mb=_mean_of(runs, "peak_mem_mb"), tokens=_mean_of(runs, "tokens"))
        out[name] = _clean(entry)
    return out
