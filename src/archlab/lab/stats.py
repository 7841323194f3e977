"""Statistics for ``archlab compare``: is a variant better than the baseline beyond seed noise?

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
* Verdict: *better* iff the whole interval of ``variant - baseline`` lies on the improving side
  of zero, *worse* iff it lies wholly on the other side, else *no detectable difference*.
* Multiple comparisons: by default (``correction="none"``) every interval is a per-comparison
  95% interval, so with ``k`` variants the chance that at least one of the verdicts is a false
  "better"/"worse" can reach ``k × 5%``. ``correction="bonferroni"`` widens each interval to
  level ``1 - (1 - level)/k``, which bounds that family-wise chance by ``1 - level``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

VERDICTS = ("better", "worse", "no detectable difference", "baseline", "insufficient seeds")
CORRECTIONS = ("none", "bonferroni")
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


def _verdict(lo: float, hi: float, lower_is_better: bool) -> str:
    # Strict inequalities: an interval that touches zero (e.g. [0, 0] for identical runs) is no evidence.
    if hi < 0.0:
        return "better" if lower_is_better else "worse"
    if lo > 0.0:
        return "worse" if lower_is_better else "better"
    return "no detectable difference"


def _paired(seeds: Sequence[Any] | None, baseline_seeds: Sequence[Any] | None) -> bool:
    if seeds is None or baseline_seeds is None:
        return False
    seeds, baseline_seeds = list(seeds), list(baseline_seeds)
    return len(set(seeds)) == len(seeds) == len(baseline_seeds) and set(seeds) == set(baseline_seeds)


def compare_to_baseline(
    values: Sequence[float], baseline_values: Sequence[float], *, seeds: Sequence[Any] | None = None,
    baseline_seeds: Sequence[Any] | None = None, level: float = 0.95, lower_is_better: bool = True,
    correction: str = "none", comparisons: int = 1,
) -> dict[str, Any]:
    """Interval and verdict for ``variant - baseline``.

    Paired (``method="paired"``) when ``seeds`` and ``baseline_seeds`` are given and are the same
    set without repeats: the interval is :func:`mean_ci` of ``d_s = v_s - b_s`` (df ``n-1``).
    Otherwise Welch (``method="welch"``): ``se^2 = s_v^2/n_v + s_b^2/n_b``, Welch–Satterthwaite
    df (module docstring). ``correction="bonferroni"`` uses level ``1 - (1-level)/comparisons``.

    Returns ``mean``, ``ci`` ([lo, hi]), ``level`` (the one used), ``se``, ``df``, ``n`` (pairs,
    or ``[n_v, n_b]``), ``method``, ``relative_pct`` (``100 · mean / mean(baseline)``),
    ``p_value`` (two-sided t test of zero difference), ``correction`` and ``verdict`` — one of
    "better", "worse", "no detectable difference", or "insufficient seeds" when fewer than two
    values (pairs) leave the spread unknown; then ``ci`` is ``[-inf, inf]`` and ``p_value`` NaN.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    v, b = _finite(values), _finite(baseline_values)
    if not v or not b:
        raise ValueError("compare_to_baseline: both samples need at least one value")
    for name, s, xs in (("seeds", seeds, v), ("baseline_seeds", baseline_seeds, b)):
        if s is not None and len(s) != len(xs):
            raise ValueError(f"compare_to_baseline: {len(s)} {name} for {len(xs)} values")
    eff_level = 1.0 - (1.0 - level) / max(1, comparisons) if correction == "bonferroni" else level
    b_mean = math.fsum(b) / len(b)
    out: dict[str, Any] = {"level": eff_level, "correction": correction}

    if _paired(seeds, baseline_seeds):
        by_seed = dict(zip(baseline_seeds, b))  # type: ignore[arg-type]
        diffs = [x - by_seed[s] for s, x in zip(seeds, v)]  # type: ignore[arg-type]
        n = len(diffs)
        mean, std, lo, hi = mean_ci(diffs, eff_level)
        se = std / math.sqrt(n) if n > 1 else math.nan
        df: float = n - 1
        out.update(method="paired", n=n)
        enough = n >= 2
    else:
        nv, nb = len(v), len(b)
        mv = math.fsum(v) / nv
        mean = mv - b_mean
        out.update(method="welch", n=[nv, nb])
        enough = nv >= 2 and nb >= 2
        se, df, lo, hi = math.nan, math.nan, -math.inf, math.inf
        if enough:
            wv = math.fsum((x - mv) ** 2 for x in v) / (nv - 1) / nv  # s_v^2 / n_v
            wb = math.fsum((x - b_mean) ** 2 for x in b) / (nb - 1) / nb
            se = math.sqrt(wv + wb)
            # Both samples constant: Satterthwaite is 0/0; the interval is the point either way.
            df = (wv + wb) ** 2 / (wv**2 / (nv - 1) + wb**2 / (nb - 1)) if se > 0 else float(nv + nb - 2)
            half = t_quantile((1.0 + eff_level) / 2.0, df) * se
            lo, hi = mean - half, mean + half

    if not enough:
        p_value, verdict = math.nan, "insufficient seeds"
    else:
        if se > 0:
            p_value = 2.0 * t_sf(abs(mean) / se, df)
        else:
            p_value = 1.0 if mean == 0 else 0.0
        verdict = _verdict(lo, hi, lower_is_better)
    out.update(mean=mean, ci=[lo, hi], se=se, df=df, p_value=p_value, verdict=verdict,
               relative_pct=100.0 * mean / b_mean if b_mean != 0 else math.nan)
    return out


def _clean(x: Any) -> Any:
    """NaN/inf -> None, recursively, so results.json stays strict JSON (``null`` = "unknown")."""
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


def summarize(results: dict, *, correction: str = "none", metric: str | None = None) -> dict[str, dict]:
    """Per-variant statistics for ``results.json``'s ``variants`` section, in variant order.

    Only runs with ``status == "done"`` and a finite metric count (``non_finite`` counts done runs
    whose metric is NaN/inf — a diverged run — which cannot be averaged and are reported
    instead). Each entry: ``n``, ``seeds``, ``metric``, ``mean``, ``std``, ``ci95`` ([lo, hi]),
    ``diff`` (``mean``, ``ci95``, ``relative_pct``, ``verdict``, ``method``, ``df``, ``p_value``,
    ``level``, ``correction``), ``verdict``, ``is_baseline``, ``parameters``, mean
    ``tokens_per_s``, ``wall_time``, ``peak_mem_mb``, ``tokens``, and ``failed`` (runs not done).
    Unknown values (a one-seed interval, a missing baseline) are ``None``. ``metric`` defaults
    to the experiment's primary metric; the secondary ones (``experiment.also``) use the same code.
    """
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
    comparisons = sum(1 for name in order if name != baseline)
    base_runs = done.get(baseline, [])

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
            diff: dict[str, Any] = {"mean": 0.0, "ci95": [0.0, 0.0], "relative_pct": 0.0, "verdict": "baseline"}
        elif vals and base_runs:
            c = compare_to_baseline(vals, [float(r[metric]) for r in base_runs],
                                    seeds=[r.get("seed") for r in runs],
                                    baseline_seeds=[r.get("seed") for r in base_runs],
                                    lower_is_better=lower_is_better, correction=correction,
                                    comparisons=comparisons)
            diff = {"mean": c["mean"], "ci95": c["ci"], "relative_pct": c["relative_pct"],
                    "verdict": c["verdict"], "method": c["method"], "df": c["df"], "p_value": c["p_value"],
                    "level": c["level"], "correction": correction}
        else:
            diff = {"mean": None, "ci95": [None, None], "relative_pct": None, "verdict": "insufficient seeds"}
        params = [r["parameters"] for r in runs if r.get("parameters") is not None]
        entry.update(diff=diff, verdict=diff["verdict"], parameters=params[0] if params else None,
                     tokens_per_s=_mean_of(runs, "tokens_per_s"), wall_time=_mean_of(runs, "wall_time"),
                     peak_mem_mb=_mean_of(runs, "peak_mem_mb"), tokens=_mean_of(runs, "tokens"))
        out[name] = _clean(entry)
    return out
