"""Report of ``archlab compare``: files, valid PNGs, self-contained HTML, rebuild round trip."""

from __future__ import annotations

import copy
import json
import math
import random
import re

import pytest

from archlab.lab.report import rebuild, summary_table_md, write_report

from archlab.lab.plots import PLOTS, mean_curve
from archlab.stats import summarize

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMAND = "archlab compare experiments/synthetic.yaml --out runs/synthetic"


def synthetic_results(offsets: dict[str, float] | None = None, seeds=(0, 1, 2)) -> dict:
    """A results.json-shaped dict: variants × seeds, each with a decaying validation curve.

    Seeds get a shared per-seed offset (as runs with one data order do) and slightly different
    x points (tokens, elapsed), as real runs have.
    """
    offsets = offsets or {"rope": 0.0, "alibi": -0.3, "nope": 0.01}
    rng = random.Random(0)
    runs = []
    for variant, off in offsets.items():
        for seed in seeds:
            seed_off = 0.02 * seed
            curve = []
            for i, step in enumerate(range(50, 301, 50)):
                tokens = step * 4096 + rng.randrange(0, 512)
                loss = 1.5 + 2.0 * math.exp(-step / 80) + off + seed_off
                curve.append({"step": step, "tokens": tokens, "elapsed": step * 0.8 + rng.random(),
                              "val_loss": loss, "val_bpb": loss / math.log(2)})
            final = curve[-1]["val_bpb"] + rng.gauss(0, 0.002)
            runs.append({"variant": variant, "seed": seed, "dir": f"{variant}/seed{seed}", "status": "done",
                         "parameters": 3_229_952 + (128 * 512 if variant == "nope" else 0), "tokens": 1_228_800,
                         "steps": 300, "bpb": final, "loss": final * math.log(2), "final_val_bpb": final,
                         "best_val_loss": curve[-1]["val_loss"], "tokens_per_s": 5100.0 + 100 * seed + len(variant),
                         "wall_time": 240.0 + seed, "peak_mem_mb": 610.0, "curve": curve})
    return {
        "experiment": {"name": "synthetic", "file": "experiments/synthetic.yaml", "baseline": "rope",
                       "metric": "bpb", "budget": {"tokens": 1_228_800}, "seeds": list(seeds),
                       "eval_split": "validation", "command": COMMAND,
                       "versions": {"archlab": "0.1.0", "torch": "2.13.0", "python": "3.11.7"},
                       "machine": {"cpu": "test cpu", "threads": 2, "device": "cpu"},
                       "created": "2026-11-23T19:00:00Z", "description": "a synthetic | experiment",
                       "variants": {name: {} for name in offsets}},
        "runs": runs,
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = synthetic_results()
    results["variants"] = summarize(results)
    return results, out, write_report(results, out)


def test_every_file_exists_and_pngs_are_valid(written):
    _, out, paths = written
    assert paths["md"] == out / "report.md" and paths["html"] == out / "report.html"
    for name in PLOTS:
        png = out / "plots" / f"{name}.png"
        assert paths[name] == png
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000  # a real figure, not an empty canvas
    assert all(p.exists() for p in paths.values())


def test_html_is_self_contained_and_names_every_plot(written):
    _, out, _ = written
    page = (out / "report.html").read_text()
    uris = re.findall(r'src="(data:image/png;base64,[A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(PLOTS)
    for name in PLOTS:
        assert f"plots/{name}.png" in page
    assert 'src="plots/' not in page  # nothing loaded from disk
    assert "<table>" in page and "better" in page and "archlab compare experiments/synthetic.yaml" in page


def test_markdown_has_summary_table_command_and_plots(written):
    results, out, _ = written
    md = (out / "report.md").read_text()
    assert summary_table_md(results) in md
    assert COMMAND in md and "torch 2.13.0" in md and "2026-11-23T19:00:00Z" in md
    assert "a synthetic \\| experiment" not in md and "a synthetic | experiment" in md  # prose is not a table
    for name in PLOTS:
        assert f"(plots/{name}.png)" in md
    assert md.count("| rope | 0 |") == 1  # per-run table: variant, seed
    assert "paired Student-t" in md


def test_summary_table_rows_and_verdicts(written):
    results, _, _ = written
    lines = summary_table_md(results).splitlines()
    assert len(lines) == 2 + 3 and lines[0].startswith("| variant | n | params | bpb mean ± std")
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in lines[2:]}
    assert "baseline" in rows["rope"] and "| better |" in rows["alibi"]
    assert "3.23M" in rows["rope"] and "5,205" in rows["alibi"]
    header = lines[0].split(" | ")
    assert header[5:12] == ["Δ vs rope", "raw 95% CI", "holm 97.5% CI", "raw p", "holm p", "Δ %", "verdict"]
    assert re.search(r"\| -0\.4\d+ \| \[-0\.4\d+, -0\.4\d+\] \| \[-0\.4\d+, -0\.4\d+\] \| <0\.001 \| <0\.001 \| "
                     r"-1\d\.\d\d% \|", rows["alibi"])


def _row(results, name):
    lines = summary_table_md(results).splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {ln.split(" | ")[0].strip("| "): [c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]}
    return dict(zip(header, rows[name]))


def test_verdict_table_follows_the_recorded_correction():
    # nope is +0.013 with raw p ~ 0.05: Holm (k = 2, the larger p-value times 1) may call it worse
    # while its Bonferroni interval touches zero; Bonferroni itself does not, and shows the MDE.
    results = synthetic_results()
    v = summarize(results)["nope"]["diff"]
    row = _row(results, "nope")
    assert row["raw p"] == f"{v['p_value']:.3f}" and row["holm p"] == f"{v['p_adjusted']:.3f}"
    assert v["p_adjusted"] == pytest.approx(v["p_value"])  # the largest of two: (k-2+1)·p
    results["experiment"]["stats"] = {"correction": "bonferroni", "level": 0.95}
    v = summarize(results)["nope"]["diff"]
    row = _row(results, "nope")
    assert v["verdict"] == "no detectable difference" and v["p_adjusted"] == pytest.approx(2 * v["p_value"])
    assert row["verdict"] == f"no detectable difference (could detect ≥ {v['mde']:.3g})"
    assert v["mde"] > abs(v["mean"])
    assert row["bonferroni 97.5% CI"] == f"[{v['ci_adjusted'][0]:+.4f}, {v['ci_adjusted'][1]:+.4f}]"
    assert row["raw 95% CI"] == f"[{v['ci_raw'][0]:+.4f}, {v['ci_raw'][1]:+.4f}]"
    results["experiment"]["stats"] = {"correction": "none", "level": 0.9}
    row = _row(results, "nope")
    assert "raw 90% CI" in row and "none p" not in row and not any("none" in h for h in row)


@pytest.mark.parametrize("stats, needles", [
    (None, ["Holm's step-down correction (the default)", "k = 2 comparison(s)", "at most 5%",
            "simultaneous 97.5% interval", "conservative for Holm", "nominal 80% power"]),
    ({"correction": "bonferroni", "level": 0.9}, ["Bonferroni's correction", "at most 10%", "simultaneous 95% interval",
                                                  "`stats.correction: bonferroni`"]),
    ({"correction": "none"}, ["No multiple-comparison correction (`stats.correction: none`)", "can reach 10%"]),
])
def test_statistics_text_names_the_correction_and_level(tmp_path, stats, needles):
    results = synthetic_results()
    if stats:
        results["experiment"]["stats"] = stats
    md = write_report(results, tmp_path)["md"].read_text()
    text = md.split("## Statistics", 1)[1]
    for needle in needles:
        assert needle in text, needle
    assert ("conservative for Holm" in text) == (stats is None)


def test_summary_table_without_variants_section():
    # The runner prints the table; it must work before (or without) summarize having run.
    assert summary_table_md(synthetic_results()) == summary_table_md({**synthetic_results(),
                                                                      "variants": summarize(synthetic_results())})


def test_rebuild_round_trip(tmp_path):
    results = synthetic_results()
    results["runs"].append({"variant": "nope", "seed": 3, "status": "failed", "bpb": None, "curve": []})
    (tmp_path / "results.json").write_text(json.dumps(results))
    paths = rebuild(tmp_path)
    assert paths["results"] == tmp_path / "results.json"
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"] == results["runs"] and again["experiment"] == results["experiment"]
    assert again["variants"] == json.loads(json.dumps(summarize(results)))
    assert list(again["variants"]) == ["rope", "alibi", "nope"]
    assert again["variants"]["nope"]["failed"] == 1 and again["variants"]["nope"]["n"] == 3
    assert not list(tmp_path.glob(".*.tmp"))
    first = {k: p.read_bytes() for k, p in paths.items()}
    assert {k: p.read_bytes() for k, p in rebuild(tmp_path).items()} == first  # deterministic
    assert "1 run(s) not finished" in (tmp_path / "report.md").read_text()


def test_rebuild_uses_the_recorded_correction(tmp_path):
    results = synthetic_results()
    results["experiment"]["stats"] = {"correction": "bonferroni", "level": 0.95}  # as archlab compare records it
    (tmp_path / "results.json").write_text(json.dumps(results))
    rebuild(tmp_path)
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["experiment"]["stats"] == {"correction": "bonferroni", "level": 0.95}
    assert again["variants"]["nope"]["diff"]["correction"] == "bonferroni"
    assert again["variants"]["nope"]["verdict"] == "no detectable difference"
    assert summarize(synthetic_results())["nope"]["verdict"] == "worse"  # the holm default differs here
    assert "Bonferroni's correction" in (tmp_path / "report.md").read_text()


def test_rebuild_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        rebuild(tmp_path)


def test_one_seed_and_missing_curves_still_report(tmp_path):
    results = synthetic_results(seeds=(0,))
    for r in results["runs"]:
        if r["variant"] == "nope":
            r["curve"] = []
    paths = write_report(copy.deepcopy(results), tmp_path)
    md = paths["md"].read_text()
    assert "insufficient seeds" in md and "[n/a]" in md
    assert all(paths[n].read_bytes()[:8] == PNG_MAGIC for n in PLOTS)


def test_mean_curve_interpolates_onto_the_common_range():
    a = [{"tokens": 0, "val_loss": 4.0}, {"tokens": 100, "val_loss": 2.0}]
    b = [{"tokens": 10, "val_loss": 3.0}, {"tokens": 110, "val_loss": 1.0}]
    x, m, lo, hi = mean_curve([a, b], "tokens", "val_loss")
    assert list(x) == [10, 100]  # union of x inside [max start, min end]
    assert m[0] == pytest.approx((3.8 + 3.0) / 2) and m[1] == pytest.approx((2.0 + 1.2) / 2)
    assert lo[1] == pytest.approx(1.2) and hi[1] == pytest.approx(2.0)
    assert mean_curve([[], []], "tokens", "val_loss") is None


def test_partial_folder_says_which_runs_are_missing(tmp_path, capsys):
    from archlab.cli import main
    from archlab.lab.report import missing_runs

    results = synthetic_results()
    assert missing_runs(results) == []
    results["runs"] = [r for r in results["runs"] if not (r["variant"] == "nope" and r["seed"] == 2)]
    results["runs"][0]["status"] = "failed"
    assert missing_runs(results) == ["rope seed0", "nope seed2"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "partial: 2 of 9 planned runs have no result (rope seed0, nope seed2)" in out
    assert "Partial: 2 of 9 planned runs" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------ plots that show every variant


def _many(n=15, disjoint_time=True):
    """``n`` variants (v00 the baseline); with ``disjoint_time`` seed k's wall clock starts after
    seed k-1 ended (as on a machine loaded by other work), so no two seeds share a time range."""
    results = synthetic_results({f"v{i:02d}": 0.01 * i for i in range(n)})
    results["experiment"]["baseline"] = "v00"
    if disjoint_time:
        for r in results["runs"]:
            for p in r["curve"]:
                p["elapsed"] += 1000.0 * r["seed"]
    return results


def _labelled(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def test_every_variant_is_drawn_when_seeds_time_ranges_do_not_overlap():
    from archlab.lab.plots import make_figure, mean_curve

    results = _many()
    names = list(results["experiment"]["variants"])
    runs = [r for r in results["runs"] if r["variant"] == "v03"]
    assert mean_curve([r["curve"] for r in runs], "elapsed", "val_bpb") is None  # no common range
    ax = make_figure(results, "loss_vs_time").axes[0]
    labelled = _labelled(ax)
    assert sorted(labelled) == sorted(["v00 (baseline, per seed)", *[f"{n} (per seed)" for n in names[1:]]])
    for name in names:  # each seed's whole curve, in the variant's colour
        color = labelled["v00 (baseline, per seed)" if name == "v00" else f"{name} (per seed)"].get_color()
        seeds = [ln for ln in ax.get_lines() if ln.get_color() == color]
        assert len(seeds) == 3 and all(len(ln.get_xdata()) == 6 for ln in seeds)
    ax = make_figure(results, "loss_vs_tokens").axes[0]  # tokens do overlap: a mean line each
    assert sorted(_labelled(ax)) == sorted(["v00 (baseline)", *names[1:]])
    ax = make_figure(results, "final_metric").axes[0]
    assert sorted(_labelled(ax)) == sorted(names) and len(ax.get_yticklabels()) == 15
    assert make_figure(results, "final_metric").get_figheight() > 5  # rows, not overprinted labels
    ax = make_figure(results, "throughput").axes[0]
    assert sorted(p.get_label() for p in ax.patches) == sorted(names)


def test_colours_are_distinct_beyond_ten_variants():
    from matplotlib.colors import to_hex

    from archlab.lab.plots import make_figure, variant_colors

    for n in (4, 15, 25):
        colors = variant_colors(_many(n))
        assert len(colors) == n and colors["v00"] == "#000000"
        assert len(set(colors.values())) == n  # all distinct, none black but the baseline
    results = _many(15)
    lines = _labelled(make_figure(results, "loss_vs_tokens").axes[0]).values()
    drawn = [to_hex(ln.get_color()) for ln in lines]
    assert len(drawn) == 15 and len(set(drawn)) == 15
    bars = [to_hex(p.get_facecolor()[:3]) for p in make_figure(results, "throughput").axes[0].patches]
    assert len(set(bars)) == 15


def test_a_variant_without_curve_points_is_named_under_the_plot(tmp_path):
    from archlab.lab.plots import make_figure

    results = _many(5)
    for r in results["runs"]:
        if r["variant"] == "v02":
            r["curve"] = []
    labels = _labelled(make_figure(results, "loss_vs_time").axes[0])
    assert not any(k.startswith("v02") for k in labels) and len(labels) == 4
    md = write_report(results, tmp_path)["md"].read_text()
    assert md.count("Not drawn (no finished run with curve points of val_bpb and") == 2  # under both curve plots
    assert "Drawn per seed, without a mean (the seeds' wall-clock ranges do not overlap): v00, v01, v03, v04." in md
    assert "token ranges do not overlap" not in md


def test_y_limits_show_a_short_curve_whole():
    from archlab.lab.plots import curve_data, curve_ylim, make_figure

    results = synthetic_results()
    for r in results["runs"]:  # two evaluations per seed: a steep drop
        r["curve"] = r["curve"][:2] if r["variant"] != "alibi" else r["curve"]
    lo, hi = make_figure(results, "loss_vs_tokens").axes[0].get_ylim()
    for r in results["runs"]:
        for p in r["curve"]:
            if r["variant"] != "alibi":
                assert lo < p["val_bpb"] < hi  # the short curves: every point
            elif p["step"] > 50:
                assert lo < p["val_bpb"] < hi  # the long one: all but its steep start
    long = curve_ylim([curve_data(synthetic_results(), "tokens")["alibi"]])
    first = [r["curve"][0]["val_bpb"] for r in synthetic_results()["runs"] if r["variant"] == "alibi"]
    assert long[1] < min(first)  # a 6-point curve's start is left out, so the rest is not squashed


def _task_results(errors):
    results = synthetic_results({"rope": 0.0, "cope": 0.1})
    results["experiment"].update(metric="error", eval_split="test")
    for r, e in zip(results["runs"], errors):
        r.update(error=e, examples=1000, final_val_error=e + 0.01)
        del r["bpb"], r["final_val_bpb"]
    return results


@pytest.mark.parametrize("errors", [(0.0, 0.002, 0.04, 0.0, 0.0, 0.09), (1.0, 0.97, 0.999, 0.5, 0.52, 0.49)])
def test_error_rate_intervals_stay_in_0_1(tmp_path, errors):
    from archlab.lab.plots import final_intervals, make_figure

    results = _task_results(errors)
    variants = summarize(results)
    plain = [v["ci95"] for v in variants.values()]
    assert any(lo < 0 or hi > 1 for lo, hi in plain)  # the plain t interval leaves [0, 1] here
    intervals = final_intervals(results, variants)
    for name, (lo, hi) in intervals.items():
        assert 0.0 <= lo <= hi <= 1.0
        assert lo <= variants[name]["mean"] <= hi  # and still covers the seeds' mean here
    ax = make_figure(results, "final_metric").axes[0]
    bars = [ln for ln in ax.get_lines() if ln.get_marker() == "|"]  # the interval bars
    assert len(bars) == 2 and all(0.0 <= x <= 1.0 for ln in bars for x in ln.get_xdata())
    md = write_report(results, tmp_path)["md"].read_text()
    assert "logit scale" in md and "stays within [0, 1]" in md


def test_rate_interval_by_hand_and_which_metrics_are_rates():
    from archlab.lab.plots import final_intervals, is_rate, rate_interval

    assert [is_rate(m) for m in ("error", "token_error", "error@ood_long", "token_error@ood_vars")] == [True] * 4
    assert [is_rate(m) for m in ("bpb", "loss", "bpb@512", "loss@ood_long")] == [False] * 4
    z = [math.log((0.1 * 200 + 0.5) / (200 - 0.1 * 200 + 0.5)), math.log((0.3 * 200 + 0.5) / (200 - 0.3 * 200 + 0.5))]
    half = 12.7062047 * abs(z[0] - z[1]) / math.sqrt(2) / math.sqrt(2)  # t_{0.975, 1} · s / sqrt(n)
    lo, hi = rate_interval([0.1, 0.3], examples=200)
    assert lo == pytest.approx(1 / (1 + math.exp(-(sum(z) / 2 - half))), rel=1e-6)
    assert hi == pytest.approx(1 / (1 + math.exp(-(sum(z) / 2 + half))), rel=1e-6)
    assert rate_interval([0.2]) is None
    # seeds that all agree (every seed wrong everywhere, or right everywhere): the interval still
    # holds the observed rate, and is the Wilson interval of the 5 × 1000 pooled examples
    lo, hi = rate_interval([1.0] * 5, examples=1000)
    assert hi == 1.0 and lo == pytest.approx(1 - 1.96 ** 2 / (5000 + 1.96 ** 2), rel=1e-4)
    lo, hi = rate_interval([0.0] * 5, examples=1000)
    assert lo == 0.0 and hi == pytest.approx(1.96 ** 2 / (5000 + 1.96 ** 2), rel=1e-4)
    lo, hi = rate_interval([0.0, 0.0, 0.0, 0.0, 0.05], examples=1000)
    assert lo <= 0.01 <= hi  # the mean rate (0.01) inside
    results = synthetic_results()  # bpb: the plot draws the table's interval
    variants = summarize(results)
    assert final_intervals(results, variants)["alibi"] == tuple(variants["alibi"]["ci95"])


def test_runs_table_names_its_two_bpb_columns(tmp_path):
    from archlab.lab.report import run_rows

    results = synthetic_results()
    for r in results["runs"]:
        r.update(eval_tokens=131072, final_val_bpb=r["bpb"] + 0.05)
    header, rows = run_rows(results)
    assert header[3] == "bpb (eval: validation, 131,072 tokens)" and header[4] == "loss (eval)"
    assert header[5] == "last periodic val bpb (validation, train.eval_tokens)"
    assert "final val bpb" not in header and "tokens/s (indicative)" in header
    first = results["runs"][0]
    assert rows[0][3] == f"{first['bpb']:,.4f}" and rows[0][5] == f"{first['final_val_bpb']:,.4f}"
    md = write_report(results, tmp_path)["md"].read_text()
    runs = md.split("## Runs", 1)[1]
    assert "*last periodic val bpb* is the trainer's last periodic evaluation" in runs
    assert "the statistics use these" in runs
    header, _ = run_rows(_task_results([0.1] * 6))
    assert header[3] == "error (eval: test, 1,000 examples)"
    assert header[5] == "last periodic val error (validation, train.eval_tokens)"


def test_throughput_is_indicative_and_a_seed_spread_is_flagged(tmp_path):
    results = synthetic_results()
    md = write_report(results, tmp_path / "quiet")["md"].read_text()
    assert "Throughput differs" not in md  # seeds within 1.04× of each other
    assert "tokens/s (indicative)" in summary_table_md(results).splitlines()[0]
    assert "Training throughput per variant, indicative only" in md
    for r in results["runs"]:
        if r["variant"] == "alibi":
            r["tokens_per_s"] = 1000.0 * (1 + 2 * r["seed"])  # 1000, 3000, 5000: a loaded machine
    md = write_report(results, tmp_path / "loaded")["md"].read_text()
    assert "Throughput differs by more than 1.5× between seeds of one variant: alibi 5.00× (1,000–5,000)" in md
    assert "rope" not in md.split("Throughput differs", 1)[1].split("\n", 1)[0].split("tokens/s")[0]


def test_first_line_states_the_budget_seeds_and_correction(tmp_path):
    from archlab.lab.report import budget_phrase, render_md, report_blocks

    results = {"experiment": {"name": "x", "metric": "bpb", "baseline": "a", "budget": {"tokens": 700000},
                              "seeds": [0, 1, 2, 3, 4], "stats": {"correction": "holm", "level": 0.95}},
               "runs": [{"variant": v, "seed": s, "status": "done", "bpb": 2.0 + 0.01 * s + (v == "b") * 0.1}
                        for v in "ab" for s in range(5)]}
    assert budget_phrase(results) == "700,000 tokens per run, 5 seeds, Holm correction"
    first = render_md(report_blocks(results, [])).splitlines()[0]
    assert first == "# x: bpb vs a at equal budget (700,000 tokens per run, 5 seeds, Holm correction)"
    results["experiment"].update(budget={"steps": 500}, seeds=[0], stats={"correction": "none", "level": 0.95})
    assert budget_phrase(results) == "500 steps per run, 1 seed, no correction"


def test_summary_interval_of_an_error_rate_stays_in_0_1():
    from archlab.lab.report import summary_rows

    results = {"experiment": {"name": "t", "metric": "error", "baseline": "a", "seeds": [0, 1, 2]},
               "runs": [{"variant": v, "seed": s, "status": "done", "error": e, "examples": 1000}
                        for v, errs in (("a", (0.0, 0.0, 0.3)), ("b", (0.5, 0.6, 0.55))) for s, e in enumerate(errs)]}
    header, rows = summary_rows(results)
    col = header.index("95% logit-t CI")
    lo, hi = (float(x) for x in rows[0][col].strip("[]").split(","))
    assert 0.0 <= lo < 0.1 < hi <= 1.0 and "-" not in rows[0][col]  # plain t of (0, 0, 0.3): [-0.33, 0.53]
