"""The report of ``archlab compare``: ``report.md``, a self-contained ``report.html`` and plots.

``write_report(results, DIR)`` writes ``DIR/plots/{loss_vs_tokens,loss_vs_time,final_metric,
throughput}.png`` (matplotlib's Agg canvas, imported only here), ``DIR/report.md`` (linking the
PNGs) and ``DIR/report.html`` (the same content with the PNGs inlined as base64 data URIs, so
the one file can be mailed or attached). ``rebuild(DIR)`` recomputes the statistics from
``DIR/results.json`` and rewrites everything (``archlab report DIR``). The statistics are
described in :mod:`archlab.lab.stats` and, briefly, in every report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from archlab.atomic import write_text_atomic
from archlab.lab.stats import mean_ci, stats_settings, summarize, variant_order
from archlab.registry import ConfigError

PLOTS = ("loss_vs_tokens", "loss_vs_time", "final_metric", "throughput")
Block = tuple  # ("h1"|"h2"|"p", text) · ("kv", [(key, value, is_code)]) · ("table", header, rows) · ("img", name, caption)


class MissingDependencyError(ConfigError, ImportError):
    """matplotlib is missing: one line for the CLI (a ConfigError) and still an ImportError."""


def _matplotlib() -> tuple[Any, Any]:
    try:  # the Figure API with an explicit Agg canvas: no pyplot global state, no GUI backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("the report's plots need matplotlib: pip install 'archlab[report]'") from None
    return Figure, FigureCanvasAgg


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _fmt(x: Any, digits: int = 4, sign: bool = False) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:+,.{digits}f}" if sign else f"{v:,.{digits}f}"


def _fmt_params(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "—"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def _fmt0(x: Any) -> str:
    return _fmt(x, 0)


def _ci(ci: Any, sign: bool = False) -> str:
    lo, hi = (ci or [None, None])[:2]
    return "[n/a]" if _num(lo) is None or _num(hi) is None else f"[{_fmt(lo, sign=sign)}, {_fmt(hi, sign=sign)}]"


def _variants(results: dict) -> dict[str, dict]:
    return results.get("variants") or summarize(results)


def _pct(level: Any) -> str:
    """0.95 -> '95', 0.996154 -> '99.62' (a level as a percentage, trailing zeros dropped)."""
    v = _num(level)
    return "?" if v is None else f"{100 * v:.2f}".rstrip("0").rstrip(".")


def _p(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else "<0.001" if v < 0.001 else f"{v:.3f}"


def _family(variants: dict[str, dict]) -> tuple[str, float, float, int]:
    """``(correction, level, adjusted level, k)`` of the comparisons in one table."""
    diffs = [v.get("diff", {}) for v in variants.values() if not v.get("is_baseline")]
    tested = [d for d in diffs if _num(d.get("adjusted_level")) is not None]
    corr = next((d["correction"] for d in diffs if d.get("correction")), "holm")
    level = _num(tested[0].get("level")) if tested else None
    adj = _num(tested[0].get("adjusted_level")) if tested else None
    k = int(tested[0].get("comparisons") or 0) if tested else 0
    return corr, 0.95 if level is None else level, adj if adj is not None else (0.95 if level is None else level), k


def _verdict_cell(v: dict) -> str:
    verdict, mde = str(v.get("verdict", "")), _num(v.get("diff", {}).get("mde"))
    if verdict == "no detectable difference" and mde is not None:
        return f"{verdict} (could detect ≥ {mde:.3g})"
    return verdict


def summary_rows(results: dict, metric: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table (one row per variant, in variant order), for the
    primary metric or one of the experiment's secondary (``also``) metrics. Δ is shown with its
    raw interval and p-value and, unless the correction is ``none``, the adjusted ones."""
    exp = results.get("experiment", {})
    base = exp.get("baseline", "baseline")
    if metric is None or metric == exp.get("metric", "bpb"):
        metric, variants = exp.get("metric", "bpb"), _variants(results)
    else:
        variants = (results.get("also") or {}).get(metric) or summarize(results, metric=metric)
    corr, level, adj, _ = _family(variants)
    adjusted = corr != "none"
    own = final_intervals(results, variants, metric)  # a rate's interval stays within [0, 1]
    header = ["variant", "n", "params", f"{metric} mean ± std", "95% logit-t CI" if is_rate(metric) else "95% CI",
              f"Δ vs {base}", f"raw {_pct(level)}% CI",
              *([f"{corr} {_pct(adj)}% CI"] if adjusted else []), "raw p", *([f"{corr} p"] if adjusted else []),
              "Δ %", "verdict", "tokens/s (indicative)"]
    rows = []
    for name, v in variants.items():
        d = v.get("diff", {})
        if v.get("is_baseline"):
            delta, rel, raw_ci, adj_ci, raw_p, adj_p = "—", "—", "—", "—", "—", "—"
        else:
            delta = _fmt(d.get("mean"), sign=True)
            raw_ci, adj_ci = _ci(d.get("ci_raw"), True), _ci(d.get("ci_adjusted"), True)
            raw_p, adj_p = _p(d.get("p_value")), _p(d.get("p_adjusted"))
            rel = "—" if _num(d.get("relative_pct")) is None else f"{d['relative_pct']:+.2f}%"
        spread = f"{_fmt(v.get('mean'))} ± {_fmt(v.get('std'))}"
        rows.append([name, str(v.get("n", 0)), _fmt_params(v.get("parameters")), spread, _ci(own.get(name)),
                     delta, raw_ci, *([adj_ci] if adjusted else []), raw_p, *([adj_p] if adjusted else []),
                     rel, _verdict_cell(v), _fmt0(v.get("tokens_per_s"))])
    return header, rows


def _eval_desc(results: dict) -> str:
    """What the experiment's evaluation scored: ``<split>, N tokens`` (``N examples`` for a task)."""
    exp = results.get("experiment", {})
    split = exp.get("eval_split") or "eval split"
    done = [r for r in results.get("runs", []) if r.get("status") == "done"]
    for key, unit in (("eval_tokens", "tokens"), ("examples", "examples")):
        sizes = sorted({float(r[key]) for r in done if _num(r.get(key)) is not None})
        if sizes:
            n = _fmt0(sizes[0]) if len(sizes) == 1 else f"{_fmt0(sizes[0])}–{_fmt0(sizes[-1])}"
            return f"{split}, {n} {unit}"
    return f"{split}, first {_fmt0(exp['eval_max_tokens'])} tokens" if _num(exp.get("eval_max_tokens")) else split


def _periodic_metric(results: dict) -> str:
    """``bpb`` (language modelling) or ``error`` (a task): what the trainer's ``final_val_*`` records."""
    runs = results.get("runs", [])
    return next((k for k in ("bpb", "error") if any(_num(r.get(f"final_val_{k}")) is not None for r in runs)), "bpb")


def run_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-run table, in the order the runs were made. The metric columns
    are the experiment's evaluation (``result[metric]``, on ``eval.split``); the *last periodic
    val* column is the trainer's last periodic evaluation (``final_val_*``: validation split,
    ``train.eval_tokens``), another sample; see :func:`runs_note`."""
    exp = results.get("experiment", {})
    metric, also = exp.get("metric", "bpb"), list(exp.get("also", []))
    loss = [] if metric == "loss" or "loss" in also else ["loss"]
    periodic = _periodic_metric(results)
    header = ["variant", "seed", "status", f"{metric} (eval: {_eval_desc(results)})", *also,
              *[f"{m} (eval)" for m in loss], f"last periodic val {periodic} (validation, train.eval_tokens)",
              "tokens", "steps", "tokens/s (indicative)", "wall time (s)", "peak mem (MB)"]
    rows = [[str(r.get("variant")), str(r.get("seed")), str(r.get("status")), _fmt(r.get(metric)),
             *[_fmt(r.get(m)) for m in also + loss], _fmt(r.get(f"final_val_{periodic}")), _fmt0(r.get("tokens")),
             _fmt0(r.get("steps")), _fmt0(r.get("tokens_per_s")), _fmt(r.get("wall_time"), 1),
             _fmt(r.get("peak_mem_mb"), 0)]
            for r in results.get("runs", [])]
    return header, rows


def runs_note(results: dict) -> str:
    """What the runs table's columns measure (the two held-out numbers come from different evaluations)."""
    exp = results.get("experiment", {})
    metric, periodic = exp.get("metric", "bpb"), _periodic_metric(results)
    return (f"*{metric} (eval: {_eval_desc(results)})* and the other metric columns are the experiment's "
            "evaluation of each final model (on `eval.split`, the same targets for every run; a `@` suffix names "
            f"another split or window length); the statistics use these. *last periodic val {periodic}* is the "
            "trainer's last periodic evaluation (validation split, "
            "first `train.eval_tokens` targets: the curves' last point), another sample of held-out data, so it "
            "differs from the evaluation column. tokens/s counts training steps only and is indicative: it "
            "depends on what else the machine ran at the time.")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---" if i == 0 or h in ("status", "verdict") else "---:" for i, h in enumerate(header)]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table_md(results: dict) -> str:
    """The summary table as Markdown (also what ``archlab compare`` prints at the end)."""
    return _md_table(*summary_rows(results))


# ----------------------------------------------------------------------------------------- plots

RATE_METRICS = ("error", "token_error")  # rates in [0, 1] (also as error@<split>); bpb and loss: unbounded above 0
SPREAD_LIMIT = 1.5  # tokens/s max/min between the seeds of one variant beyond which the report flags the spread


def is_rate(metric: str) -> bool:
    """``error``, ``token_error`` and their ``@<split>`` forms: bounded metrics, in [0, 1]."""
    return str(metric).split("@", 1)[0] in RATE_METRICS


def _baseline_name(results: dict) -> str | None:  # as summarize picks it
    order = variant_order(results)
    return results.get("experiment", {}).get("baseline") or (order[0] if order else None)


def variant_colors(results: dict) -> dict[str, str]:
    """One distinct colour per variant, the same in every plot; the baseline black.

    Up to 9 other variants: tab10 without its grey (too near the baseline); up to 18: tab20
    without its two greys, the dark shades first; more: the perceptual ``turbo`` colormap
    sampled evenly (its darkest ends left out)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    order, base = variant_order(results), _baseline_name(results)
    others = [n for n in order if n != base]
    if len(others) <= 9:
        tab10 = colormaps["tab10"].colors
        palette = [to_hex(tab10[i]) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    elif len(others) <= 18:
        tab20 = colormaps["tab20"].colors
        palette = [to_hex(tab20[i]) for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
    else:
        turbo = colormaps["turbo"]
        palette = [to_hex(turbo(float(x))) for x in np.linspace(0.05, 0.95, len(others))]
    colors = dict(zip(others, palette))
    return {n: "#000000" if n == base else colors[n] for n in order}


def _curve_key(results: dict) -> str:
    """``val_<metric>`` when every curve point has it (bpb compares across tokenizers), else val_loss."""
    metric = results.get("experiment", {}).get("metric", "bpb")
    points = [p for r in results.get("runs", []) for p in r.get("curve") or []]
    return f"val_{metric}" if points and all(_num(p.get(f"val_{metric}")) is not None for p in points) else "val_loss"


def _seed_arrays(curves: list[list[dict]], x_key: str, y_key: str) -> list[np.ndarray]:
    """Each curve's finite ``(x, y)`` points sorted by x, as an (n, 2) array; empty curves dropped."""
    xy = []
    for c in curves:
        pts = sorted((float(p[x_key]), float(p[y_key])) for p in c
                     if _num(p.get(x_key)) is not None and _num(p.get(y_key)) is not None)
        if pts:
            xy.append(np.array(pts))
    return xy


def _common_band(xy: list[np.ndarray]) -> tuple[np.ndarray, ...] | None:
    start, stop = max(a[0, 0] for a in xy), min(a[-1, 0] for a in xy)
    if start > stop:
        return None
    grid = np.unique(np.concatenate([a[:, 0] for a in xy]))
    grid = grid[(grid >= start) & (grid <= stop)]
    ys = np.stack([np.interp(grid, a[:, 0], a[:, 1]) for a in xy])
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def mean_curve(curves: list[list[dict]], x_key: str, y_key: str) -> tuple[np.ndarray, ...] | None:
    """Mean and min–max band of several seeds' curves: ``(x, mean, lo, hi)`` or None.

    Seeds are evaluated at the same steps but not at the same tokens/seconds exactly, so every
    curve is linearly interpolated onto the union of x points inside the range all curves cover
    (no extrapolation: beyond it some seeds have no data and a "mean" would be a different mix).
    None when there are no points or the seeds' ranges do not overlap (see :func:`curve_layers`).
    """
    xy = _seed_arrays(curves, x_key, y_key)
    return _common_band(xy) if xy else None


def curve_layers(curves: list[list[dict]], x_key: str, y_key: str) -> dict | None:
    """What the curve plots draw for one variant: ``{"mean": (x, mean, lo, hi) | None, "seeds": [(x, y)],
    "evaluations": most points of one seed}``.

    ``mean`` is :func:`mean_curve`, over the range all seeds cover. Every seed's stretch outside
    that range (before it, after it; joined to the seed's own value at its edge) is in ``seeds``,
    drawn as that seed's own thin line, so no point is dropped. When the seeds share no range at
    all (wall-clock ranges of runs slowed down by other load can miss each other) ``mean`` is
    None and ``seeds`` holds every seed's whole curve. None: no curve point at all.
    """
    xy = _seed_arrays(curves, x_key, y_key)
    if not xy:
        return None
    band = _common_band(xy)
    if band is None:
        return {"mean": None, "seeds": [(a[:, 0], a[:, 1]) for a in xy], "evaluations": max(map(len, xy))}
    start, stop = float(band[0][0]), float(band[0][-1])
    pieces = []
    for a in xy:
        x, y = a[:, 0], a[:, 1]
        before, after = x < start, x > stop
        if before.any():
            pieces.append((np.append(x[before], start), np.append(y[before], np.interp(start, x, y))))
        if after.any():
            pieces.append((np.insert(x[after], 0, stop), np.insert(y[after], 0, np.interp(stop, x, y))))
    return {"mean": band, "seeds": pieces, "evaluations": max(map(len, xy))}


def _by_variant(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name in variant_order(results)}
    for r in results.get("runs", []):
        if r.get("status") == "done":
            out[r["variant"]].append(r)
    return out


def curve_data(results: dict, x_key: str, y_key: str | None = None) -> dict[str, dict | None]:
    """:func:`curve_layers` of every variant (variant order), over its finished runs."""
    y_key = y_key or _curve_key(results)
    return {name: curve_layers([r.get("curve") or [] for r in runs], x_key, y_key)
            for name, runs in _by_variant(results).items()}


def curve_ylim(layers: list[dict]) -> tuple[float, float] | None:
    """Y-limits of a curve plot that show every drawn curve.

    Rule: the bottom is the lowest value drawn (band or seed line) of any curve. The top is the
    highest value drawn of any curve once its steep start is left out: the part in the first 20%
    of its own x-range, and only for a curve of 5 or more evaluations per seed. A short curve
    (2–4 evaluations, where that start is a third of the line or more) counts whole, so no curve
    is mostly above the plot; only the first ~20% of a longer one can leave it (the early loss of
    a long run would squash the differences that matter). Padding: 8% of the range below, 16% above.
    """
    lows, tops = [], []
    for lay in layers:
        parts = list(lay["seeds"])
        if lay["mean"] is not None:
            x, _, lo, hi = lay["mean"]
            parts += [(x, lo), (x, hi)]
        xs, ys = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        cut = xs.min() + 0.2 * (xs.max() - xs.min())
        lows.append(float(ys.min()))
        tops.append(float(ys[xs >= cut].max() if lay["evaluations"] >= 5 else ys.max()))
    if not lows:
        return None
    bottom, top = min(lows), max(tops)
    pad = 0.08 * (top - bottom) if top > bottom else 0.05 * abs(top) or 0.05
    return bottom - pad, top + 2 * pad


def _plot_curves(ax: Any, results: dict, x_key: str, y_key: str, colors: dict[str, str]) -> dict[str, str]:
    """Every variant with curve points, one legend entry each; returns ``{variant: "mean" |
    "mean+seeds" | "seeds"}`` (what was drawn; variants without points are absent)."""
    base = _baseline_name(results)
    drawn, layers = {}, []
    for name, lay in curve_data(results, x_key, y_key).items():
        if lay is None:
            continue
        color, label = colors[name], f"{name} (baseline)" if name == base else name
        if lay["mean"] is not None:
            x, m, lo, hi = lay["mean"]
            ax.plot(x, m, color=color, lw=2 if name == base else 1.5, marker="." if len(x) < 3 else None, label=label)
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            label = None
        else:
            label = f"{name} (baseline, per seed)" if name == base else f"{name} (per seed)"
        for sx, sy in lay["seeds"]:
            ax.plot(sx, sy, color=color, lw=0.9, ls="--", alpha=0.8, marker="." if len(sx) < 3 else None,
                    label=label or "_nolegend_")
            label = None
        drawn[name] = "seeds" if lay["mean"] is None else "mean+seeds" if lay["seeds"] else "mean"
        layers.append(lay)
    ylim = curve_ylim(layers)
    if ylim is None:
        ax.text(0.5, 0.5, "no validation curve recorded", ha="center", va="center", transform=ax.transAxes)
        return drawn
    ax.set_ylim(*ylim)
    if len(drawn) > 6:  # beside the axes, where it hides no curve
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=2 if len(drawn) > 24 else 1)
    else:
        ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return drawn


def _expit(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def rate_interval(values: list[float], level: float = 0.95,
                  examples: float | None = None) -> tuple[float, float] | None:
    """An interval for the mean error rate over seeds that stays inside [0, 1]: a Student-t
    interval (n − 1 df) of the per-seed rates on the logit scale, mapped back with the logistic
    function. Each rate p enters as the empirical logit log((pN + ½)/(N − pN + ½)), N the examples
    scored (1000 when unknown), so 0 and 1 stay finite. None with fewer than two values."""
    vals = [min(1.0, max(0.0, float(v))) for v in values if _num(v) is not None]
    if len(vals) < 2:
        return None
    n = float(examples) if _num(examples) is not None and examples > 0 else 1000.0
    z = [math.log((p * n + 0.5) / (n - p * n + 0.5)) for p in vals]
    _, _, lo, hi = mean_ci(z, level)
    return _expit(lo), _expit(hi)


def final_intervals(results: dict, variants: dict[str, dict] | None = None,
                    metric: str | None = None) -> dict[str, tuple[float, float] | None]:
    """Each variant's 95% interval as the summary table and the final-metric plot show it: its
    Student-t interval (``ci95``), or for an error rate (:func:`is_rate`) :func:`rate_interval` of
    its seeds. ``metric`` defaults to the experiment's primary metric."""
    metric = metric or results.get("experiment", {}).get("metric", "bpb")
    variants = variants if variants is not None else _variants(results)
    runs, out = _by_variant(results), {}
    count = "examples" + (metric[metric.index("@"):] if "@" in metric else "")
    for name, v in variants.items():
        if is_rate(metric):
            done = [r for r in runs.get(name, []) if _num(r.get(metric)) is not None]
            sizes = [float(r[count]) for r in done if _num(r.get(count)) is not None]
            out[name] = rate_interval([r[metric] for r in done], examples=min(sizes) if sizes else None)
        else:
            lo, hi = (v.get("ci95") or [None, None])[:2]
            out[name] = (float(lo), float(hi)) if _num(lo) is not None and _num(hi) is not None else None
    return out


def _row_axis(ax: Any, labels: list[str]) -> None:  # one row per variant, the first on top
    if labels:
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)


def _plot_final(ax: Any, results: dict, variants: dict[str, dict], colors: dict[str, str]) -> None:
    metric = results.get("experiment", {}).get("metric", "bpb")
    runs, intervals = _by_variant(results), final_intervals(results, variants)
    labels = []
    for i, (name, v) in enumerate(variants.items()):
        color, base = colors.get(name, "#000000"), bool(v.get("is_baseline"))
        vals = [float(r[metric]) for r in runs.get(name, []) if _num(r.get(metric)) is not None]
        jitter = np.linspace(-0.1, 0.1, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        ax.scatter(vals, i + 0.25 + jitter, s=12, color=color, alpha=0.5, lw=0)  # the individual seeds
        if intervals.get(name) is not None:
            ax.plot(intervals[name], [i, i], color=color, lw=1.5, marker="|", ms=9, label="_nolegend_")
        mean = _num(v.get("mean"))
        if mean is not None:
            ax.plot([mean], [i], "D" if base else "o", color=color, ms=7 if base else 5, label=name)
            if base:
                ax.axvline(mean, color=color, ls="--", lw=0.8, alpha=0.6)
        labels.append(f"{name} (baseline)" if base else f"{name}: {v.get('verdict', '')}")
    _row_axis(ax, labels)
    ax.set_xlabel(f"{metric} (lower is better)")
    ax.grid(axis="x", alpha=0.3)


def throughput_spread(results: dict, limit: float = SPREAD_LIMIT) -> dict[str, tuple[float, float, float]]:
    """``{variant: (max/min, min, max)}`` of training tokens/s over the variant's finished runs,
    for the variants whose seeds differ by more than ``limit``× (a machine loaded by other work)."""
    out = {}
    for name, runs in _by_variant(results).items():
        tps = [float(r["tokens_per_s"]) for r in runs if (_num(r.get("tokens_per_s")) or 0) > 0]
        if len(tps) > 1 and max(tps) / min(tps) > limit:
            out[name] = (max(tps) / min(tps), min(tps), max(tps))
    return out


def _plot_throughput(ax: Any, results: dict, variants: dict[str, dict], colors: dict[str, str]) -> None:
    runs, spread = _by_variant(results), throughput_spread(results)
    labels = []
    for i, (name, v) in enumerate(variants.items()):
        bar = ax.barh(i, v.get("tokens_per_s") or 0.0, color=colors.get(name, "#000000"),
                      alpha=0.7 if v.get("is_baseline") else 0.5)
        bar.patches[0].set_label(name)
        vals = [float(r["tokens_per_s"]) for r in runs.get(name, []) if _num(r.get("tokens_per_s")) is not None]
        ax.scatter(vals, [i] * len(vals), s=14, color="#333333", edgecolors="white", linewidths=0.6, zorder=3)
        labels.append(f"{name} (seeds {spread[name][0]:.2f}× apart)" if name in spread else name)
    _row_axis(ax, labels)
    ax.set_xlabel("training tokens/s (indicative; higher is faster)")
    ax.grid(axis="x", alpha=0.3)


def make_figure(results: dict, name: str) -> Any:
    """The matplotlib Figure (Agg canvas) of one plot in :data:`PLOTS`; ``results`` needs ``variants``
    or gets them from ``summarize``. Rows and legend grow with the number of variants."""
    Figure, Canvas = _matplotlib()
    from matplotlib.ticker import EngFormatter

    variants, y_key, colors = _variants(results), _curve_key(results), variant_colors(results)
    ylabel, n = f"validation {y_key.removeprefix('val_')}", len(variants)
    if name in ("loss_vs_tokens", "loss_vs_time"):
        size = (7.0 + (2.2 if n > 6 else 0.0), max(4.2, 1.5 + 0.17 * n))
    else:
        size = (7.5, max(3.2, 1.2 + 0.36 * n))
    fig = Figure(figsize=size, dpi=110, layout="constrained")
    Canvas(fig)
    ax = fig.add_subplot()
    if name == "loss_vs_tokens":
        _plot_curves(ax, results, "tokens", y_key, colors)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set(xlabel="training tokens", ylabel=ylabel, title=f"{ylabel} vs tokens (mean over seeds, band: min–max)")
    elif name == "loss_vs_time":
        _plot_curves(ax, results, "elapsed", y_key, colors)
        ax.set(xlabel="wall-clock seconds (indicative)", ylabel=ylabel,
               title=f"{ylabel} vs time (mean over seeds, band: min–max)")
    elif name == "final_metric":
        _plot_final(ax, results, variants, colors)
        kind = "logit-t" if is_rate(results.get("experiment", {}).get("metric", "bpb")) else "t"
        ax.set_title(f"final held-out metric: mean, 95% {kind} interval (dots: seeds)")
    elif name == "throughput":
        _plot_throughput(ax, results, variants, colors)
        ax.set_title("throughput, indicative: mean over seeds (dots: seeds)")
    else:
        raise ValueError(f"unknown plot {name!r}; one of {', '.join(PLOTS)}")
    return fig


def write_plots(results: dict, plots_dir: str | Path) -> dict[str, Path]:
    """The four PNGs; returns ``{name: path}`` in :data:`PLOTS` order."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    results = {**results, "variants": _variants(results)}
    paths = {}
    for name in PLOTS:
        paths[name] = plots_dir / f"{name}.png"
        make_figure(results, name).savefig(paths[name], metadata={"Software": None})  # same input, same bytes
    return paths


# ---------------------------------------------------------------------------------------- report

def captions(results: dict) -> dict[str, str]:
    """The caption of every plot (what is drawn and how far to trust it)."""
    metric = results.get("experiment", {}).get("metric", "bpb")
    curve = ("Validation curve (the trainer's periodic evaluations: validation split, first `train.eval_tokens` "
             "targets) against {x}. Solid: mean over seeds with a min–max band, over the range all seeds cover; "
             "dashed: a seed's own curve outside that range (or every seed, labelled “per seed”, when the seeds "
             "share no range). Y-limits show every curve; only a long curve's steep start may leave the top.")
    interval = ("a 95% Student-t interval on the logit scale of the per-seed rates, mapped back, so it stays "
                "within [0, 1] (the summary table's *logit-t* interval): an interval for the seeds' typical rate"
                if is_rate(metric) else "the 95% Student-t interval of the mean over seeds")
    return {
        "loss_vs_tokens": curve.format(x="training tokens (the equal budget)"),
        "loss_vs_time": curve.format(x="wall-clock seconds, evaluation included (what the compute actually cost "
                                       "on this machine as loaded at the time: indicative)"),
        "final_metric": f"Final held-out {metric} per variant (the experiment's evaluation): marker the mean, bar "
                        f"{interval}; dots: seeds; the baseline is black, its mean dashed.",
        "throughput": "Training throughput per variant, indicative only: wall-clock tokens/s of runs that share "
                      "the machine with whatever else ran then, not a benchmark (`archlab bench train` times "
                      "contenders interleaved).",
    }


def plot_notes(results: dict) -> dict[str, str]:
    """A note under a plot when something is not drawn as the caption says: variants without curve
    points, variants drawn per seed, a throughput spread between seeds beyond :data:`SPREAD_LIMIT`."""
    notes, y_key = {}, _curve_key(results)
    for name, x_key, what in (("loss_vs_tokens", "tokens", "token"), ("loss_vs_time", "elapsed", "wall-clock")):
        data = curve_data(results, x_key, y_key)
        missing = [v for v, lay in data.items() if lay is None]
        per_seed = [v for v, lay in data.items() if lay is not None and lay["mean"] is None]
        text = []
        if missing:
            text.append(f"Not drawn (no finished run with curve points of {y_key} and {x_key}): {', '.join(missing)}.")
        if per_seed:
            text.append(f"Drawn per seed, without a mean (the seeds' {what} ranges do not overlap): "
                        f"{', '.join(per_seed)}.")
        if text:
            notes[name] = " ".join(text)
    spread = throughput_spread(results)
    if spread:
        worst = ", ".join(f"{v} {r:.2f}× ({_fmt0(lo)}–{_fmt0(hi)})" for v, (r, lo, hi) in spread.items())
        notes["throughput"] = (f"Throughput differs by more than {SPREAD_LIMIT:g}× between seeds of one variant: "
                               f"{worst} tokens/s. The machine was probably loaded by other work during some runs; "
                               "tokens/s and the wall-clock curve are not comparable between variants here.")
    return notes


def _correction_note(variants: dict[str, dict]) -> str:
    corr, level, adj, k = _family(variants)
    alpha = 1.0 - level
    a = f"{_pct(alpha)}%"
    if corr == "none":
        return (f"No multiple-comparison correction (`stats.correction: none`): each verdict alone has a {a} "
                f"false-alarm rate, so over {k} comparison(s) the chance of at least one false *better*/*worse* "
                f"can reach {_pct(min(1.0, k * alpha))}%. The intervals are per-comparison {_pct(level)}% intervals. ")
    how = ("Holm's step-down correction (the default): with the k raw p-values sorted, p_(1) ≤ … ≤ p_(k), the "
           "adjusted p-value is p̃_(i) = max over j ≤ i of min(1, (k−j+1)·p_(j))"
           if corr == "holm" else "Bonferroni's correction: the adjusted p-value is p̃ = min(1, k·p)")
    note = (f"Multiple comparisons: {how}, over the k = {k} comparison(s) with the baseline (level {_pct(level)}%, "
            f"`stats.correction: {corr}`). This keeps the chance that any verdict in the table is a false "
            f"*better*/*worse* at most {a}. The table shows each Δ's raw {_pct(level)}% interval and raw p-value "
            f"next to the adjusted p-value and the Bonferroni simultaneous {_pct(adj)}% interval "
            f"(level 1 − {a}/k)")
    if corr == "holm":
        note += (", which is conservative for Holm: a verdict can stand while that interval still touches zero "
                 "(the verdict follows the adjusted p-value)")
    return note + ". "


def _stats_note(results: dict, variants: dict[str, dict]) -> str:
    exp = results.get("experiment", {})
    metric = exp.get("metric", "bpb")
    corr, level, _, _ = _family(variants)
    welch = [n for n, v in variants.items() if v.get("diff", {}).get("method") == "welch"]
    dropped = sum(v.get("failed", 0) + v.get("non_finite", 0) for v in variants.values())
    alpha = "α' = α/k" if corr != "none" else "α' = α"
    return (
        f"Each variant's {metric} (held-out, lower is better) is summarised over seeds by its mean, sample "
        "standard deviation and a Student-t 95% interval"
        + (" on the logit scale of the per-seed rates, mapped back into [0, 1]" if is_rate(metric) else "")
        + ". Δ is variant − baseline. Runs with the same seed "
        "share initialisation seed and data order, so when a variant ran the baseline's seeds Δ is taken per "
        "seed and its interval is a paired Student-t interval (n−1 degrees of freedom); otherwise it is "
        "Welch's interval with Welch–Satterthwaite degrees of freedom"
        + (f" (used here for: {', '.join(welch)})" if welch else " (not needed here)") + ". "
        f"Verdict: *better*/*worse* when the {'adjusted ' if corr != 'none' else ''}two-sided p-value of Δ is "
        f"below α = 1 − level = "
        f"{_pct(1.0 - level)}%, the sign of Δ giving the direction; else *no detectable difference* — which is "
        "not evidence of equality: with few seeds only large effects are detectable. "
        + _correction_note(variants)
        + (("Secondary metrics (`also`) are corrected as separate families, each in its own table. ")
           if exp.get("also") else "")
        + "Next to *no detectable difference* the table gives the design's minimum detectable difference, "
        f"*could detect ≥ m* with m = (t_{{1−α'/2, df}} + t_{{0.8, df}})·se and {alpha}: the smallest true |Δ| "
        "this test detects with nominal 80% power (an approximation: with 3 seeds the actual power at that "
        "size is lower, about 70–76%). "
        + (f"{dropped} run(s) not finished or with a non-finite metric are excluded (see the runs table)."
           if dropped else "All runs finished and count.")
    )


def budget_phrase(results: dict) -> str:
    """The design in a few words for the report's first line: budget per run, seeds, correction."""
    exp = results.get("experiment", {})
    units = {"tokens": "tokens", "steps": "steps", "seconds": "s of training"}
    parts = [f"{_fmt0(v)} {units.get(k, k)}" for k, v in (exp.get("budget") or {}).items()]
    per_run = (" and ".join(parts) + " per run") if parts else "budget not recorded"
    seeds = len(exp.get("seeds") or [])
    corr = stats_settings(results)[0]
    return f"{per_run}, {seeds} seed{'s' if seeds != 1 else ''}, {'no' if corr == 'none' else corr.capitalize()} correction"


def missing_runs(results: dict) -> list[str]:
    """``variant seedK`` of every planned run (variants × seeds) with no finished result."""
    exp = results.get("experiment", {})
    done = {(r.get("variant"), r.get("seed")) for r in results.get("runs", []) if r.get("status") == "done"}
    return [f"{v} seed{s}" for v in (exp.get("variants") or {}) for s in exp.get("seeds", []) if (v, s) not in done]


def report_blocks(results: dict, plot_names: list[str]) -> list[Block]:
    """The report as format-neutral blocks, rendered to Markdown and HTML below."""
    exp, variants = results.get("experiment", {}), _variants(results)
    budget = ", ".join(f"{k}: {_fmt0(v)}" for k, v in (exp.get("budget") or {}).items()) or "—"
    machine = ", ".join(f"{k}: {v}" for k, v in (exp.get("machine") or {}).items()) or "—"
    versions = ", ".join(f"{k} {v}" for k, v in (exp.get("versions") or {}).items()) or "—"
    split = exp.get("eval_split", "—") + (f" (first {_fmt0(exp['eval_max_tokens'])} tokens)"
                                          if _num(exp.get("eval_max_tokens")) else "")
    provenance = [("command", exp.get("command", "—"), True), ("experiment file", exp.get("file", "—"), True),
                  ("baseline", exp.get("baseline", "—"), False), ("metric", exp.get("metric", "bpb"), False),
                  ("budget", budget, False), ("seeds", ", ".join(map(str, exp.get("seeds", []))) or "—", False),
                  ("eval split", split, False), ("versions", versions, False), ("machine", machine, False),
                  ("date", exp.get("created", "—"), False)]
    if _num(exp.get("total_time")) is not None:
        provenance.append(("total time", f"{exp['total_time']:.0f} s", False))
    caps, notes = captions(results), plot_notes(results)
    blocks: list[Block] = [("h1", f"{exp.get('name', 'experiment')}: {exp.get('metric', 'bpb')} vs "
                                  f"{exp.get('baseline', 'baseline')} at equal budget ({budget_phrase(results)})")]
    if exp.get("description"):
        blocks.append(("p", str(exp["description"]).strip()))
    missing = missing_runs(results)
    if missing:
        planned = len(exp.get("variants") or {}) * len(exp.get("seeds", []))
        blocks.append(("p", f"Partial: {len(missing)} of {planned} planned runs have no result "
                            f"({', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}); the statistics use the rest."))
    blocks += [("h2", "How this was produced"), ("kv", provenance),
               ("h2", "Summary"), ("table", *summary_rows(results)),
               *[b for m in exp.get("also", []) for b in (("h2", f"Also measured: {m}"),
                                                          ("table", *summary_rows(results, m)))],
               ("h2", "Plots"), *[b for n in plot_names for b in (("img", n, caps[n]),
                                                            *([("p", notes[n])] if n in notes else []))],
               ("h2", "Runs"), ("table", *run_rows(results)), ("p", runs_note(results)),
               ("h2", "Statistics"), ("p", _stats_note(results, variants))]
    return blocks


def render_md(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] in ("h1", "h2"):
            parts.append(("# " if b[0] == "h1" else "## ") + b[1])
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "kv":
            parts.append("\n".join(f"- **{k}**: " + (f"`{v}`" if code else str(v)) for k, v, code in b[1]))
        elif b[0] == "table":
            parts.append(_md_table(b[1], b[2]))
        elif b[0] == "img":
            parts.append(f"![{b[2]}](plots/{b[1]}.png)\n\n*{b[2]}* (`plots/{b[1]}.png`)")
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:0.9em;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}img{max-width:100%}"
        "code{background:#f4f4f4;padding:1px 4px}")


def render_html(blocks: list[Block], plot_paths: dict[str, Path]) -> str:
    """One self-contained page: PNGs inlined as data URIs; each figure names its file in alt and caption."""
    e = html.escape
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2", "p"):  # *x* is the only inline markup the blocks use
            body.append(f"<{b[0]}>" + re.sub(r"\*([^*\n]+)\*", r"<em>\1</em>", e(b[1])) + f"</{b[0]}>")
        elif b[0] == "kv":
            items = "".join(f"<li><b>{e(k)}</b>: " + (f"<code>{e(str(v))}</code>" if code else e(str(v))) + "</li>"
                            for k, v, code in b[1])
            body.append(f"<ul>{items}</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(plot_paths[b[1]].read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="plots/{b[1]}.png">'
                        f"<figcaption>{e(b[2])} (<code>plots/{b[1]}.png</code>)</figcaption></figure>")
    title = e(blocks[0][1]) if blocks and blocks[0][0] == "h1" else "archlab report"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")




def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``plots/*.png``, ``report.md`` and ``report.html`` into ``out_dir``.

    Uses ``results["variants"]`` when present (else computes it with ``summarize``, without
    modifying ``results``). Returns ``{"md": ..., "html": ..., <plot name>: ...}``. Raises
    :class:`MissingDependencyError` (one line) when matplotlib is not installed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "variants": _variants(results)}
    plots = write_plots(results, out / "plots")
    blocks = report_blocks(results, list(plots))
    paths = {"md": out / "report.md", "html": out / "report.html"}
    write_text_atomic(paths["md"], render_md(blocks))
    write_text_atomic(paths["html"], render_html(blocks, plots))
    return {**paths, **plots}


def load_results(out_dir: str | Path) -> dict:
    """``DIR/results.json`` as written by ``archlab compare``; a missing, empty, truncated or
    foreign file is one line naming it (a crash mid-write of an older version, a wrong folder)."""
    out = Path(out_dir)
    path = out / "results.json"
    if not path.is_file() and (out / "checkpoint.safetensors").is_file():
        raise ConfigError(f"{out}: a training run folder, not an experiment folder; `archlab report` takes the "
                          "--out folder of `archlab compare` (for a run: `archlab eval`)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run `archlab compare EXPERIMENT --out {out}` first)")
    redo = f"re-run `archlab compare EXPERIMENT --out {out}` (finished runs are kept)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text, so not a results file; {redo}") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty; {redo}")
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: truncated or not valid JSON (line {e.lineno}, column {e.colno}); {redo}") from None
    if not isinstance(results, dict) or not isinstance(results.get("runs"), list) \
            or not isinstance(results.get("experiment"), dict):
        raise ConfigError(f"{path}: not an archlab results file (needs 'experiment' and 'runs'); {redo}")
    return results


def rebuild(out_dir: str | Path) -> dict[str, Path]:
    """``archlab report DIR``: recompute ``variants`` from ``DIR/results.json``, rewrite it and the report.

    results.json is replaced atomically (temporary file + ``os.replace``), so an interrupted
    rebuild leaves the old file intact. Returns the paths written, ``results`` included.
    """
    out = Path(out_dir)
    results = load_results(out)
    path = out / "results.json"
    results["variants"] = summarize(results)
    results["also"] = {m: summarize(results, metric=m) for m in results.get("experiment", {}).get("also", [])}
    # allow_nan: a diverged run's NaN metric stays as the runner wrote it (summaries hold None).
    write_text_atomic(path, json.dumps(results, indent=2, default=float))
    return {"results": path, **write_report(results, out)}
