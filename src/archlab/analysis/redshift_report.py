"""The report of ``archlab redshift``: plots and the page (blocks for :mod:`archlab.pages`)
from a result dict and its settings (:class:`archlab.analysis.redshift.RedshiftSweep`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from archlab.analysis.complexity import MEASURES


def _table_mean(rows: list[dict], measure: str, **where: Any) -> float:
    vals = [r[measure] for r in rows if all(r[k] == v for k, v in where.items())]
    return float(np.mean(vals)) if vals else math.nan


def write_plots(res: dict, s: Any, out: Path) -> dict[str, Path]:
    """``out/plots/*.png``: mean-frequency heatmaps per structure, the measures against depth,
    the parts; {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    rows = res.get("mlp", [])
    plots: dict[str, Path] = {}
    (out / "plots").mkdir(parents=True, exist_ok=True)
    if rows:
        for structure in s.structures:
            fig, axes = plt.subplots(1, len(s.activations), figsize=(2.1 * len(s.activations) + 1, 2.6),
                                     squeeze=False)
            for ax, act in zip(axes[0], s.activations):
                m = np.array([[_table_mean(rows, "frequency", structure=structure, activation=act, depth=d, scale=a)
                               for a in s.scales] for d in s.depths])
                im = ax.imshow(np.clip(m, 0.25, None), origin="lower", aspect="auto", cmap="viridis",
                               norm=LogNorm(vmin=0.25, vmax=s.grid / 2))  # log: ReLU's 1–5 and tanh's 20 both show
                ax.set_title(act, fontsize=9)
                ax.set_xticks(range(len(s.scales)), [f"{a:g}" for a in s.scales], fontsize=6, rotation=90)
                ax.set_yticks(range(len(s.depths)), [str(d) for d in s.depths], fontsize=7)
                ax.set_xlabel("weight scale A", fontsize=7)
            axes[0][0].set_ylabel("depth", fontsize=8)
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="mean frequency (cycles, log)")
            name = f"frequency_{structure}"
            fig.savefig(out / "plots" / f"{name}.png", dpi=90, bbox_inches="tight")
            plt.close(fig)
            plots[name] = out / "plots" / f"{name}.png"
        fig, axes = plt.subplots(1, 3, figsize=(12, 3))
        scale = min(s.scales, key=lambda a: abs(math.log(a / 10.0)))
        for ax, measure in zip(axes, MEASURES):
            for act in s.activations:
                ax.plot(s.depths, [_table_mean(rows, measure, structure=s.structures[0], activation=act, depth=d,
                                               scale=scale) for d in s.depths], marker="o", label=act)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("depth")
            ax.set_title(f"{measure} ({s.structures[0]}, A = {scale:g})", fontsize=9)
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / "measures_vs_depth.png", dpi=90)
        plt.close(fig)
        plots["measures_vs_depth"] = out / "plots" / "measures_vs_depth.png"
    prow = res.get("parts", [])
    if prow:
        kinds = list(dict.fromkeys((r["group"], r["kind"]) for r in prow))
        fig, ax = plt.subplots(figsize=(max(6, 0.38 * len(kinds)), 3.2))
        for d in s.part_depths:
            ax.plot(range(len(kinds)), [_table_mean(prow, "frequency", group=g, kind=k, depth=d) for g, k in kinds],
                    marker="o", linestyle="", label=f"depth {d}")
        ax.set_xticks(range(len(kinds)), [f"{g}:{k}" for g, k in kinds], rotation=70, fontsize=7, ha="right")
        ax.set_ylabel("mean frequency")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "plots" / "parts_frequency.png", dpi=90)
        plt.close(fig)
        plots["parts_frequency"] = out / "plots" / "parts_frequency.png"
    return plots


def _p(p: float) -> str:
    return "–" if not isinstance(p, (int, float)) or not math.isfinite(p) else f"{p:.2g}"


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.{digits}f}"


def report_blocks(res: dict, s: Any, plots: dict[str, Path]) -> list[tuple]:
    """The page (archlab.pages blocks) of a redshift result ``res`` with settings ``s``."""
    blocks: list[tuple] = [("h1", "Neural Redshift: the complexity of random networks"),
                           ("p", "Functions computed by randomly initialised networks on a "
                                 f"{s.grid} × {s.grid} grid of [-1, 1]², scored by the magnitude-weighted mean "
                                 "frequency (cosine transform, cycles across the square), the LZ complexity of the "
                                 "median-binarised output (1 ≈ random bits) and the coefficient-weighted order of a "
                                 f"Legendre fit (degree ≤ {s.degree} per variable); {s.seeds} seeds per cell. "
                                 "Teney et al., CVPR 2024 (arXiv 2403.02241); definitions in docs/analysis.md.")]
    kv = [("command", res["command"], True)] if res.get("command") else []
    kv.append(("seconds", f"{res.get('seconds', math.nan):.0f}", False))
    if res.get("rebuilt_by"):
        kv.append(("report rebuilt from results.json by", res["rebuilt_by"], True))
    blocks.append(("kv", kv))
    if res.get("references"):
        blocks.append(("p", "Reference functions on the same grid (what the numbers below read against): "
                            "mean frequency / LZ / Legendre order."))
        blocks.append(("table", ["function", "frequency", "lz", "order"],
                       [[r["function"], _fmt(r["frequency"], 2), _fmt(r["lz"], 3), _fmt(r["order"], 2)]
                        for r in res["references"]]))
        blocks.append(("p", f"The grid has {s.grid} points per side, so frequencies near {s.grid // 2} cycles "
                            "(Nyquist) and LZ near 1 mean the function is as rough as the grid can show: "
                            "the measures saturate there, and differences between saturated cells are small."))
    for measure, found in res.get("findings", {}).items():
        blocks.append(("h2", f"The paper's findings ({measure})"))
        blocks.append(("p", "Each claim is 'A is more complex than B' on per-seed means over the cells named; "
                            "one-sided Welch t, Holm-adjusted over the claims of this table at 5%. "
                            "'not detected': not significant (with the claimed sign, or the opposite one)."))
        blocks.append(("table", ["claim", "A", "B", "A − B", "p (Holm)", "verdict"],
                       [[f["claim"], _fmt(f["a_mean"]), _fmt(f["b_mean"]), _fmt(f["difference"]), _p(f["p_holm"]),
                         f["verdict"]] for f in found]))
    rows = res.get("mlp", [])
    if rows:
        blocks.append(("h2", "MLP sweep: mean frequency by activation, depth and weight scale"))
        for name, path in plots.items():
            if name.startswith("frequency_"):
                blocks.append(("img", name, f"mean frequency, structure {name[len('frequency_'):]}: rows depth, "
                                            "columns weight scale A (mean over seeds)"))
        if "measures_vs_depth" in plots:
            blocks.append(("img", "measures_vs_depth", "the three measures against depth at A ≈ 10"))
        deep = max(s.depths)
        for structure in s.structures:
            blocks.append(("p", f"*{structure}*, depth {deep}: mean frequency / LZ / order by weight scale"))
            blocks.append(("table", ["activation"] + [f"A={a:g}" for a in s.scales],
                           [[act] + [" / ".join(_fmt(_table_mean(rows, m, structure=structure, activation=act,
                                                                  depth=deep, scale=a), 2) for m in MEASURES)
                                     for a in s.scales] for act in s.activations]))
    prow = res.get("parts", [])
    if prow:
        blocks.append(("h2", "archlab's parts at initialisation (token sequences)"))
        blocks.append(("p", f"The default LM (dim {s.part_dim}, {s.part_heads} heads) with one part swapped in; "
                            f"the 2-D point moves a fixed random sequence of {s.part_tokens} embedding vectors "
                            "(e_t = w_t + x₁ u_t + x₂ v_t) that replaces the token embedding, and the function is a "
                            "fixed read-out of the last position. Parts whose initial state equals the default's "
                            "(LAuReL's and Mix-LN's placements at init, local attention with a window longer than "
                            "the sequence) give the default's numbers exactly."))
        if "parts_frequency" in plots:
            blocks.append(("img", "parts_frequency", "mean frequency of each part at each depth"))
        kinds = list(dict.fromkeys((r["group"], r["kind"]) for r in prow))
        header = ["part"] + [f"depth {d}" for d in s.part_depths]
        blocks.append(("table", header, [[f"{g}: {k}"] + [" / ".join(_fmt(_table_mean(prow, m, group=g, kind=k, depth=d), 2)
                                                                      for m in MEASURES) for d in s.part_depths]
                                         for g, k in kinds]))
        blocks.append(("p", "Cells: mean frequency / LZ / Legendre order, mean over seeds."))
        for measure, found in res.get("part_findings", {}).items():
            yes = [f for f in found if f["verdict"] == "yes"]
            blocks.append(("p", f"*Does depth raise the {measure} of a part?* (max vs min depth, one-sided Welch "
                                f"over seeds, Holm over the {len(found)} parts at 5%): " +
                                ("; ".join(f"{f['claim'].split(' grows')[0]} (+{f['difference']:.3f}, p "
                                           f"{_p(f['p_holm'])})" for f in yes) if yes else "none") + "."))
    if res.get("refused"):
        blocks.append(("p", "Parts not measured (they do not fit the default LM): " +
                            "; ".join(f"{r['group']}: {r['kind']} ({r['reason']})" for r in res["refused"])))
    return blocks


__all__ = ["report_blocks", "write_plots"]
