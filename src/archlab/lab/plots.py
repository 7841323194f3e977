"""The plots of a compare report: loss against tokens and against time, the final metric per
variant with its interval, throughput. matplotlib's Figure API with an explicit Agg canvas
(imported only here, no pyplot state); every variant gets its own colour and appears in every
plot, or is named in a note under it (:func:`plot_notes`). Error rates get an interval within
[0, 1] (:func:`rate_interval`, logit-t)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from archlab.stats import mean_ci, summarize, variant_order
from archlab.registry import ConfigError

PLOTS = ("loss_vs_tokens", "loss_vs_time", "final_metric", "throughput")


def number(x: Any) -> float | None:
    """``x`` as a float when it is a finite number (not a bool), else None."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def fmt(x: Any, digits: int = 4, sign: bool = False) -> str:
    """A table cell: the number with thousands separators, or — when there is none."""
    v = number(x)
    return "—" if v is None else f"{v:+,.{digits}f}" if sign else f"{v:,.{digits}f}"


def fmt_count(x: Any) -> str:
    return fmt(x, 0)


def variants_of(results: dict) -> dict[str, dict]:
    """The per-variant statistics of a results document (computed when it has none)."""
    return results.get("variants") or summarize(results)



class MissingDependencyError(ConfigError, ImportError):
    """matplotlib is missing: one line for the CLI (a ConfigError) and still an ImportError."""


def _matplotlib() -> tuple[Any, Any]:
    try:  # the Figure API with an explicit Agg canvas: no pyplot global state, no GUI backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("the report's plots need matplotlib: pip install 'archlab[report]'") from None
    return Figure, FigureCanvasAgg


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
    return f"val_{metric}" if points and all(number(p.get(f"val_{metric}")) is not None for p in points) else "val_loss"


def _seed_arrays(curves: list[list[dict]], x_key: str, y_key: str) -> list[np.ndarray]:
    """Each curve's finite ``(x, y)`` points sorted by x, as an (n, 2) array; empty curves dropped."""
    xy = []
    for c in curves:
        pts = sorted((float(p[x_key]), float(p[y_key])) for p in c
                     if number(p.get(x_key)) is not None and number(p.get(y_key)) is not None)
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
    scored (1000 when unknown), so 0 and 1 stay finite; the interval always holds the mean rate.
    Seeds that all agree get the Wilson interval of the pooled count. None with fewer than two values."""
    vals = [min(1.0, max(0.0, float(v))) for v in values if number(v) is not None]
    if len(vals) < 2:
        return None
    n = float(examples) if number(examples) is not None and examples > 0 else 1000.0
    if max(vals) == min(vals):
        # No spread between seeds (typically every seed at 0 or at 1): the t-interval collapses
        # onto the shifted logit and would exclude the observed rate itself, so the only
        # uncertainty left, that of the pooled count, is given by the Wilson score interval.
        return _wilson(vals[0], n * len(vals), level)
    z = [math.log((p * n + 0.5) / (n - p * n + 0.5)) for p in vals]
    _, _, lo, hi = mean_ci(z, level)
    mean = sum(vals) / len(vals)
    return min(_expit(lo), mean), max(_expit(hi), mean)


def _wilson(p: float, n: float, level: float) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed over ``n`` trials."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def final_intervals(results: dict, variants: dict[str, dict] | None = None,
                    metric: str | None = None) -> dict[str, tuple[float, float] | None]:
    """Each variant's 95% interval as the summary table and the final-metric plot show it: its
    Student-t interval (``ci95``), or for an error rate (:func:`is_rate`) :func:`rate_interval` of
    its seeds. ``metric`` defaults to the experiment's primary metric."""
    metric = metric or results.get("experiment", {}).get("metric", "bpb")
    variants = variants if variants is not None else variants_of(results)
    runs, out = _by_variant(results), {}
    count = "examples" + (metric[metric.index("@"):] if "@" in metric else "")
    for name, v in variants.items():
        if is_rate(metric):
            done = [r for r in runs.get(name, []) if number(r.get(metric)) is not None]
            sizes = [float(r[count]) for r in done if number(r.get(count)) is not None]
            out[name] = rate_interval([r[metric] for r in done], examples=min(sizes) if sizes else None)
        else:
            lo, hi = (v.get("ci95") or [None, None])[:2]
            out[name] = (float(lo), float(hi)) if number(lo) is not None and number(hi) is not None else None
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
        vals = [float(r[metric]) for r in runs.get(name, []) if number(r.get(metric)) is not None]
        jitter = np.linspace(-0.1, 0.1, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        ax.scatter(vals, i + 0.25 + jitter, s=12, color=color, alpha=0.5, lw=0)  # the individual seeds
        if intervals.get(name) is not None:
            ax.plot(intervals[name], [i, i], color=color, lw=1.5, marker="|", ms=9, label="_nolegend_")
        mean = number(v.get("mean"))
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
        tps = [float(r["tokens_per_s"]) for r in runs if (number(r.get("tokens_per_s")) or 0) > 0]
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
        vals = [float(r["tokens_per_s"]) for r in runs.get(name, []) if number(r.get("tokens_per_s")) is not None]
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

    variants, y_key, colors = variants_of(results), _curve_key(results), variant_colors(results)
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
    results = {**results, "variants": variants_of(results)}
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
        worst = ", ".join(f"{v} {r:.2f}× ({fmt_count(lo)}–{fmt_count(hi)})" for v, (r, lo, hi) in spread.items())
        notes["throughput"] = (f"Throughput differs by more than {SPREAD_LIMIT:g}× between seeds of one variant: "
                               f"{worst} tokens/s. The machine was probably loaded by other work during some runs; "
                               "tokens/s and the wall-clock curve are not comparable between variants here.")
    return notes
