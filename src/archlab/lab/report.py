"""The report of ``archlab compare``: ``report.md``, a self-contained ``report.html`` and plots.

``write_report(results, DIR)`` writes ``DIR/plots/{loss_vs_tokens,loss_vs_time,final_metric,
throughput}.png`` (matplotlib's Agg canvas, imported only here), ``DIR/report.md`` (linking the
PNGs) and ``DIR/report.html`` (the same content with the PNGs inlined as base64 data URIs, so
the one file can be mailed or attached). ``rebuild(DIR)`` recomputes the statistics from
``DIR/results.json`` and rewrites everything (``archlab report DIR``). The statistics are
described in :mod:`archlab.stats` and, briefly, in every report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archlab.atomic import write_text_atomic
from archlab.lab.plots import (
    captions,
    final_intervals,
    fmt,
    fmt_count,
    is_rate,
    number,
    plot_notes,
    variants_of,
    write_plots,
)
from archlab.stats import stats_settings, summarize
from archlab.pages import Block, md_table, render_html, render_md
from archlab.registry import ConfigError



def _fmt_params(x: Any) -> str:
    v = number(x)
    if v is None:
        return "—"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def _ci(ci: Any, sign: bool = False) -> str:
    lo, hi = (ci or [None, None])[:2]
    return "[n/a]" if number(lo) is None or number(hi) is None else f"[{fmt(lo, sign=sign)}, {fmt(hi, sign=sign)}]"


def _pct(level: Any) -> str:
    """0.95 -> '95', 0.996154 -> '99.62' (a level as a percentage, trailing zeros dropped)."""
    v = number(level)
    return "?" if v is None else f"{100 * v:.2f}".rstrip("0").rstrip(".")


def _p(x: Any) -> str:
    v = number(x)
    return "—" if v is None else "<0.001" if v < 0.001 else f"{v:.3f}"


def _family(variants: dict[str, dict]) -> tuple[str, float, float, int]:
    """``(correction, level, adjusted level, k)`` of the comparisons in one table."""
    diffs = [v.get("diff", {}) for v in variants.values() if not v.get("is_baseline")]
    tested = [d for d in diffs if number(d.get("adjusted_level")) is not None]
    corr = next((d["correction"] for d in diffs if d.get("correction")), "holm")
    level = number(tested[0].get("level")) if tested else None
    adj = number(tested[0].get("adjusted_level")) if tested else None
    k = int(tested[0].get("comparisons") or 0) if tested else 0
    return corr, 0.95 if level is None else level, adj if adj is not None else (0.95 if level is None else level), k


def _verdict_cell(v: dict) -> str:
    verdict, mde = str(v.get("verdict", "")), number(v.get("diff", {}).get("mde"))
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
        metric, variants = exp.get("metric", "bpb"), variants_of(results)
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
            delta = fmt(d.get("mean"), sign=True)
            raw_ci, adj_ci = _ci(d.get("ci_raw"), True), _ci(d.get("ci_adjusted"), True)
            raw_p, adj_p = _p(d.get("p_value")), _p(d.get("p_adjusted"))
            rel = "—" if number(d.get("relative_pct")) is None else f"{d['relative_pct']:+.2f}%"
        spread = f"{fmt(v.get('mean'))} ± {fmt(v.get('std'))}"
        rows.append([name, str(v.get("n", 0)), _fmt_params(v.get("parameters")), spread, _ci(own.get(name)),
                     delta, raw_ci, *([adj_ci] if adjusted else []), raw_p, *([adj_p] if adjusted else []),
                     rel, _verdict_cell(v), fmt_count(v.get("tokens_per_s"))])
    return header, rows


def _eval_desc(results: dict) -> str:
    """What the experiment's evaluation scored: ``<split>, N tokens`` (``N examples`` for a task)."""
    exp = results.get("experiment", {})
    split = exp.get("eval_split") or "eval split"
    done = [r for r in results.get("runs", []) if r.get("status") == "done"]
    for key, unit in (("eval_tokens", "tokens"), ("examples", "examples")):
        sizes = sorted({float(r[key]) for r in done if number(r.get(key)) is not None})
        if sizes:
            n = fmt_count(sizes[0]) if len(sizes) == 1 else f"{fmt_count(sizes[0])}–{fmt_count(sizes[-1])}"
            return f"{split}, {n} {unit}"
    return f"{split}, first {fmt_count(exp['eval_max_tokens'])} tokens" if number(exp.get("eval_max_tokens")) else split


def _periodic_metric(results: dict) -> str:
    """``bpb`` (language modelling) or ``error`` (a task): what the trainer's ``final_val_*`` records."""
    runs = results.get("runs", [])
    return next((k for k in ("bpb", "error") if any(number(r.get(f"final_val_{k}")) is not None for r in runs)), "bpb")


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
    rows = [[str(r.get("variant")), str(r.get("seed")), str(r.get("status")), fmt(r.get(metric)),
             *[fmt(r.get(m)) for m in also + loss], fmt(r.get(f"final_val_{periodic}")), fmt_count(r.get("tokens")),
             fmt_count(r.get("steps")), fmt_count(r.get("tokens_per_s")), fmt(r.get("wall_time"), 1),
             fmt(r.get("peak_mem_mb"), 0)]
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


def summary_table_md(results: dict) -> str:
    """The summary table as Markdown (also what ``archlab compare`` prints at the end)."""
    return md_table(*summary_rows(results))


# ----------------------------------------------------------------------------------------- plots

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
    parts = [f"{fmt_count(v)} {units.get(k, k)}" for k, v in (exp.get("budget") or {}).items()]
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
    exp, variants = results.get("experiment", {}), variants_of(results)
    budget = ", ".join(f"{k}: {fmt_count(v)}" for k, v in (exp.get("budget") or {}).items()) or "—"
    machine = ", ".join(f"{k}: {v}" for k, v in (exp.get("machine") or {}).items()) or "—"
    versions = ", ".join(f"{k} {v}" for k, v in (exp.get("versions") or {}).items()) or "—"
    split = exp.get("eval_split", "—") + (f" (first {fmt_count(exp['eval_max_tokens'])} tokens)"
                                          if number(exp.get("eval_max_tokens")) else "")
    provenance = [("command", exp.get("command", "—"), True), ("experiment file", exp.get("file", "—"), True),
                  ("baseline", exp.get("baseline", "—"), False), ("metric", exp.get("metric", "bpb"), False),
                  ("budget", budget, False), ("seeds", ", ".join(map(str, exp.get("seeds", []))) or "—", False),
                  ("eval split", split, False), ("versions", versions, False), ("machine", machine, False),
                  ("date", exp.get("created", "—"), False)]
    if number(exp.get("total_time")) is not None:
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


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``plots/*.png``, ``report.md`` and ``report.html`` into ``out_dir``.

    Uses ``results["variants"]`` when present (else computes it with ``summarize``, without
    modifying ``results``). Returns ``{"md": ..., "html": ..., <plot name>: ...}``. Raises
    :class:`MissingDependencyError` (one line) when matplotlib is not installed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "variants": variants_of(results)}
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
