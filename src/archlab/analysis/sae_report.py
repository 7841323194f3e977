"""``archlab sae report DIR``: how good a trained sparse autoencoder is, and what its latents read.

On the run's validation split (windows drawn by the run's own sampler, a fixed seed, about
``eval_tokens`` tokens) the report measures:

- reconstruction: mse, explained variance, L0, the fraction of latents alive on these tokens
  and the dead fraction the training tracked;
- downstream: the model's next-token loss clean, with the SAE's reconstruction spliced in at
  the site, and with the site zero-ablated, and the fraction of loss recovered
  (L_zero − L_sae) / (L_zero − L_clean);
- for the latents with the most activation mass, the contexts that activate them most, each
  token shaded by the latent's activation on it.

It writes ``report.json`` and a self-contained ``report.html`` (the training curve is embedded)
into the SAE folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from archlab.analysis.sae import fraction_recovered
from archlab.analysis.sae_train import METRICS, ActivationSource, load_sae
from archlab.atomic import write_text_atomic
from archlab.models.capture import capture, splice
from archlab.registry import ConfigError
from archlab.train.run import load_run

EVAL_SEED = 1_000_003  # the report's windows: fixed, and not the SAE's training draws


def _nll(run: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    out = run.model(x, targets=y)
    return float(out.nll)


@torch.no_grad()
def evaluate_sae(folder: str | Path, *, run_path: str | Path | None = None, max_tokens: int | None = None,
                 top_latents: int = 12, contexts: int = 8, progress: bool = False) -> dict[str, Any]:
    """The report's numbers (see the module doc) as a JSON-ready dict."""
    sae, cfg, state = load_sae(folder)
    run_path = run_path or state["run"]
    if not (Path(run_path).exists()):
        raise ConfigError(f"the SAE's run {run_path} is gone; give its new place with --run")
    run = load_run(run_path)
    budget = max_tokens or cfg.eval_tokens
    src = ActivationSource(run, cfg.site, batch=cfg.batch, seq_len=cfg.seq_len, seed=EVAL_SEED, split="validation")
    text = src.objective.inputs == "tokens"
    sums = {"sq_err": 0.0, "tokens": 0, "l0": 0.0, "clean": 0.0, "sae": 0.0, "zero": 0.0, "batches": 0}
    xs_sum = xs_sq = None
    fired = torch.zeros(sae.latents, dtype=torch.bool)
    mass = torch.zeros(sae.latents, dtype=torch.float64)
    count = torch.zeros(sae.latents, dtype=torch.float64)
    top_val = torch.full((contexts, sae.latents), -math.inf)
    top_at = torch.zeros((contexts, sae.latents), dtype=torch.long)
    windows: list[torch.Tensor] = []
    step = 0
    while sums["tokens"] < budget:
        x, y, acts = src.batch(step)
        step += 1
        flat = acts.reshape(-1, sae.d_in)
        x_hat, z = sae(flat)
        n = flat.shape[0]
        d = flat.double()
        xs_sum = d.sum(0) if xs_sum is None else xs_sum + d.sum(0)
        xs_sq = (d * d).sum() if xs_sq is None else xs_sq + (d * d).sum()
        sums["sq_err"] += float((d - x_hat.double()).pow(2).sum())
        sums["l0"] += float((z > 0).sum())
        sums["tokens"] += n
        fired |= (z > 0).any(0)
        mass += z.double().sum(0)
        count += (z > 0).double().sum(0)
        sums["clean"] += _nll(run, x, y)
        with splice(run.model, cfg.site, lambda out: sae(out.float())[0].reshape(out.shape)):
            sums["sae"] += _nll(run, x, y)
        with splice(run.model, cfg.site, torch.zeros_like):
            sums["zero"] += _nll(run, x, y)
        sums["batches"] += 1
        if text and acts.dim() == 3 and acts.shape[:2] == x.shape:
            base = sum(int(w.numel()) for w in windows)
            windows.append(x)
            vals, idx = z.topk(min(contexts, n), dim=0)
            cat_v, cat_i = torch.cat([top_val, vals]), torch.cat([top_at, idx + base])
            keep = cat_v.topk(contexts, dim=0).indices
            top_val, top_at = cat_v.gather(0, keep), cat_i.gather(0, keep)
    N = sums["tokens"]
    total_var = float(xs_sq - (xs_sum * xs_sum).sum() / N)
    b = sums["batches"]
    clean, spliced, zero = sums["clean"] / b, sums["sae"] / b, sums["zero"] / b
    res: dict[str, Any] = {
        "site": cfg.site, "architecture": cfg.architecture, "d_in": sae.d_in, "latents": sae.latents,
        "k": cfg.k if cfg.architecture != "relu" else None, "l1": cfg.l1 if cfg.architecture == "relu" else None,
        "trained_tokens": state.get("step", 0) * state.get("tokens_per_step", 0), "eval_tokens": N,
        "split": "validation", "run": str(run_path),
        "mse": sums["sq_err"] / (N * sae.d_in),
        "explained_variance": 1 - sums["sq_err"] / total_var if total_var > 0 else math.nan,
        "l0": sums["l0"] / N,
        "alive_fraction": float(fired.double().mean()),
        "dead_fraction_training": float(sae.dead(cfg.dead_window).double().mean()),
        "loss_clean": clean, "loss_sae": spliced, "loss_zero": zero,
        "fraction_recovered": fraction_recovered(clean, spliced, zero),
    }
    if windows:
        res["top_latents"] = _top_latents(run, sae, cfg.site, torch.cat(windows), mass, count, N, top_val, top_at,
                                          top_latents)
    return res


def _top_latents(run: Any, sae: Any, site: str, ids: torch.Tensor, mass: torch.Tensor, count: torch.Tensor, N: int,
                 top_val: torch.Tensor, top_at: torch.Tensor, how_many: int) -> list[dict[str, Any]]:
    """For the ``how_many`` latents with the most activation mass: frequency, largest value and
    the contexts (up to 16 tokens before and 4 after the peak) with per-token activations."""
    B, T = ids.shape
    tok = run.tokenizer
    out = []
    for lat in mass.topk(min(how_many, int((mass > 0).sum()))).indices.tolist():
        ctxs = []
        for v, at in zip(top_val[:, lat].tolist(), top_at[:, lat].tolist()):
            if not math.isfinite(v) or v <= 0:
                continue
            w, p = divmod(int(at), T)
            with capture(run.model, [site]) as acts:
                run.model(ids[w:w + 1])
            z = sae.encode(acts[site].reshape(-1, sae.d_in).float())[:, lat]
            lo, hi = max(0, p - 16), min(T, p + 5)
            ctxs.append({"tokens": [tok.decode([int(t)]) for t in ids[w, lo:hi]],
                         "acts": [round(float(a), 4) for a in z[lo:hi]], "peak": p - lo, "value": round(v, 4)})
        out.append({"latent": lat, "frequency": float(count[lat]) / N, "mean_when_active":
                    float(mass[lat] / count[lat]) if count[lat] else 0.0, "contexts": ctxs})
    return out


# --------------------------------------------------------------------- the page

_CSS = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f4f4f4}.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:2px 0;"
        "line-height:1.6}.ctx span{border-radius:2px}.peak{outline:1px solid #c00}h3{margin-bottom:.3em}")

_ROWS = (("mse", "mse (input units)"), ("explained_variance", "explained variance"), ("l0", "L0 (active / token)"),
         ("alive_fraction", "latents alive on these tokens"), ("dead_fraction_training", "dead in training"),
         ("loss_clean", "loss, clean (nats)"), ("loss_sae", "loss, SAE spliced in"),
         ("loss_zero", "loss, site zero-ablated"), ("fraction_recovered", "fraction of loss recovered"))


def _curve_png(folder: Path) -> str | None:
    path = folder / METRICS
    if not path.is_file():
        return None
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not recs:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    tokens = [r["tokens"] for r in recs]
    for ax, key in zip(axes, ("explained_variance", "l0", "dead_fraction")):
        ax.plot(tokens, [r.get(key, math.nan) for r in recs])
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.set_xlabel("training tokens", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _context_html(ctx: dict[str, Any], peak_value: float) -> str:
    spans = []
    for i, (t, a) in enumerate(zip(ctx["tokens"], ctx["acts"])):
        alpha = max(0.0, min(1.0, a / peak_value)) if peak_value > 0 else 0.0
        cls = ' class="peak"' if i == ctx["peak"] else ""
        shown = html.escape(t.replace("\n", "↵").replace("\t", "⇥"))
        spans.append(f'<span{cls} style="background:rgba(255,120,0,{alpha:.2f})" title="{a:.3f}">{shown}</span>')
    return f'<div class="ctx">{"".join(spans)}</div>'


def render_html(res: dict[str, Any], curve_b64: str | None, command: str | None) -> str:
    shape = f"k = {res['k']}" if res.get("k") else f"λ = {res.get('l1')}"
    body = [f"<h1>Sparse autoencoder at <code>{html.escape(res['site'])}</code></h1>",
            f"<p>{html.escape(res['architecture'])} SAE, {res['latents']} latents on a {res['d_in']}-wide site "
            f"({shape}), trained on {res['trained_tokens']:,} tokens of <code>{html.escape(res['run'])}</code>; "
            f"scored on {res['eval_tokens']:,} tokens of its {res['split']} split.</p>"]
    if command:
        body.append(f"<p>Made by <code>{html.escape(command)}</code></p>")
    body.append("<table>" + "".join(f"<tr><th style='text-align:left'>{label}</th><td>{res[key]:.4f}</td></tr>"
                                    for key, label in _ROWS if isinstance(res.get(key), float)) + "</table>")
    if curve_b64:
        body.append(f'<h2>Training</h2><img alt="training curve" src="data:image/png;base64,{curve_b64}">')
    if res.get("top_latents"):
        body.append("<h2>Top latents (most activation mass) and the contexts that activate them most</h2>")
        for lat in res["top_latents"]:
            peak = max((c["value"] for c in lat["contexts"]), default=0.0)
            body.append(f"<h3>latent {lat['latent']}</h3><p>active on {100 * lat['frequency']:.2f}% of tokens, "
                        f"mean {lat['mean_when_active']:.3f} when active, max {peak:.3f}</p>")
            body += [_context_html(c, peak) for c in lat["contexts"]]
    elif res.get("top_latents") is None:
        body.append("<p>No contexts: the run does not read text (a speech run).</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>SAE {html.escape(res['site'])}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_sae_report(folder: str | Path, *, run_path: str | Path | None = None, max_tokens: int | None = None,
                     top_latents: int = 12, contexts: int = 8, command: str | None = None) -> dict[str, Any]:
    folder = Path(folder)
    res = evaluate_sae(folder, run_path=run_path, max_tokens=max_tokens, top_latents=top_latents,
                       contexts=contexts)
    if command:
        res["command"] = command
    write_text_atomic(folder / "report.json", json.dumps(res, indent=2) + "\n")
    write_text_atomic(folder / "report.html", render_html(res, _curve_png(folder), command))
    return res


__all__ = ["evaluate_sae", "render_html", "write_sae_report"]
