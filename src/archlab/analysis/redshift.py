"""``archlab redshift``: how complex are the functions that randomly initialised networks
compute? (Neural Redshift, Teney et al., CVPR 2024, arXiv 2403.02241.)

Two sweeps, each network evaluated on an n × n grid of [-1, 1]² and scored by the three
measures of :mod:`archlab.analysis.complexity` (mean frequency, LZ complexity, Legendre order):

- ``mlp`` — the paper's setting: an MLP 2 → width → … → 1 with ``depth`` hidden layers, all
  weights and biases drawn from U(−A, A) for a weight scale A, swept over activations, A,
  depth and four structures: ``plain`` h ← σ(W h + b); ``residual`` h ← h + σ(W h + b);
  ``layernorm`` h ← σ(LN(W h + b)); ``residual_layernorm`` h ← h + σ(W LN(h) + b) (the first
  layer maps 2 → width without a skip).
- ``parts`` — archlab's own parts at their initialisation (``model.init``), on token
  sequences: the point (x₁, x₂) becomes a sequence of T vectors e_t = w_t + x₁ u_t + x₂ v_t
  (w, u, v fixed random N(0, 1): a token sequence's embedding and two directions that move
  it; without w a pre-norm would see only the angle of (x₁, x₂), singular at 0), which replaces the LM's token embedding (:func:`~archlab.models.capture.splice`)
  and passes through the model's positional scheme and blocks; the function's value is a fixed
  random read-out of the last position's final stream. Each registered positional scheme,
  token mixer, norm, norm placement (residual policy) and feed-forward is swapped into the
  default LM, one at a time, at several depths.

Every cell runs ``seeds`` networks. The report tests the paper's qualitative findings as
one-sided claims on per-seed means (Welch t, Holm-adjusted over the claims at 5%) and says for
each whether it reproduces.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archlab.analysis.complexity import MEASURES, grid, legendre_order, lz_complexity, mean_frequency
from archlab.atomic import write_text_atomic
from archlab.config import apply_overrides
from archlab.analysis.redshift_report import report_blocks, write_plots
from archlab.pages import render_html, render_md
from archlab.registry import REGISTRIES, ConfigError, from_dict, to_dict
from archlab.stats import adjust_p_values, compare_to_baseline

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "sine": torch.sin, "gaussian": lambda x: torch.exp(-x * x),
}
STRUCTURES = ("plain", "residual", "layernorm", "residual_layernorm")
PART_GROUPS = {  # group -> (the override key, the kinds to try: None = every registered kind)
    "position": "model.position.kind", "mixer": "model.layers.default.mixer.kind",
    "norm": "model.layers.default.norm.kind", "placement": "model.layers.default.norm.placement.kind",
    "ffn": "model.layers.default.ffn.kind",
}
_REGISTRY_OF = {"position": "position", "mixer": "mixer", "norm": "norm", "placement": "residual", "ffn": "ffn"}


@dataclass
class RedshiftSweep:
    """The settings of ``archlab redshift`` (``--set KEY=VALUE``)."""

    sweeps: list[str] = field(default_factory=lambda: ["mlp", "parts"])
    seeds: int = 5
    grid: int = 64                       # points per side of the input grid
    degree: int = 10                     # Legendre degree per variable
    activations: list[str] = field(default_factory=lambda: list(ACTIVATIONS))
    scales: list[float] = field(default_factory=lambda: [0.1, 0.316, 1.0, 3.16, 10.0, 31.6, 100.0])
    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    structures: list[str] = field(default_factory=lambda: list(STRUCTURES))
    width: int = 64
    part_groups: list[str] = field(default_factory=lambda: list(PART_GROUPS))
    part_depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    part_dim: int = 64
    part_heads: int = 4
    part_tokens: int = 16


def _check_members(where: str, values: list, allowed: Any) -> None:
    if not values:
        raise ConfigError(f"{where}: must not be empty")
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{where}: '{v}' is not one of {', '.join(map(str, allowed))}")


def parse_sweep(sweeps: list[str] | None, overrides: list[str] | None = None) -> RedshiftSweep:
    """``--sweep`` choices and ``--set`` items -> settings, each mistake one line (before any compute)."""
    raw = {"sweeps": list(dict.fromkeys(sweeps))} if sweeps else {}
    s = from_dict(RedshiftSweep, apply_overrides(raw, overrides), "redshift")
    _check_members("redshift.sweeps", s.sweeps, ("mlp", "parts"))
    _check_members("redshift.activations", s.activations, list(ACTIVATIONS))
    _check_members("redshift.structures", s.structures, STRUCTURES)
    _check_members("redshift.part_groups", s.part_groups, list(PART_GROUPS))
    for name in ("seeds", "width", "part_dim", "part_heads", "part_tokens"):
        if getattr(s, name) < 1:
            raise ConfigError(f"redshift.{name}: must be ≥ 1, got {getattr(s, name)}")
    if s.grid < 8 or s.grid > 512:
        raise ConfigError(f"redshift.grid: {s.grid} points per side; allowed 8..512")
    if not 1 <= s.degree < s.grid:
        raise ConfigError(f"redshift.degree: {s.degree}; allowed 1..{s.grid - 1} (below redshift.grid)")
    for name in ("depths", "part_depths"):
        vals = getattr(s, name)
        if not vals or any(d < 1 for d in vals):
            raise ConfigError(f"redshift.{name}: a non-empty list of depths ≥ 1, got {vals}")
    if not s.scales or any(not (a > 0 and math.isfinite(a)) for a in s.scales):
        raise ConfigError(f"redshift.scales: a non-empty list of weight scales > 0, got {s.scales}")
    if s.part_dim % s.part_heads:
        raise ConfigError(f"redshift.part_dim: {s.part_dim} is not a multiple of part_heads {s.part_heads}")
    return s


# --------------------------------------------------------------------- the MLP sweep


class RandomMLP(nn.Module):
    """The paper's random network (see the module doc); weights and biases ~ U(−A, A)."""

    def __init__(self, *, activation: str, width: int, depth: int, scale: float, structure: str,
                 generator: torch.Generator):
        super().__init__()
        self.act, self.structure = ACTIVATIONS[activation], structure
        self.first = nn.Linear(2, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in range(depth))
        self.out = nn.Linear(width, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_((torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.structure in ("layernorm", "residual_layernorm")
        h = self.first(x)
        h = self.act(self.norms[0](h) if ln else h)
        for i, lin in enumerate(self.hidden, start=1):
            if self.structure == "plain":
                h = self.act(lin(h))
            elif self.structure == "residual":
                h = h + self.act(lin(h))
            elif self.structure == "layernorm":
                h = self.act(self.norms[i](lin(h)))
            else:
                h = h + self.act(lin(self.norms[i](h)))
        return self.out(h).squeeze(-1)


def _points(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x, y = grid(n)
    return torch.tensor(np.stack([x.reshape(-1), y.reshape(-1)], -1), dtype=dtype)


def _measures(f: np.ndarray, degree: int) -> dict[str, float]:
    return {"frequency": mean_frequency(f), "lz": lz_complexity(f), "order": legendre_order(f, degree)}


@torch.no_grad()
def mlp_function(*, activation: str, width: int, depth: int, scale: float, structure: str, seed: int,
                 n: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    net = RandomMLP(activation=activation, width=width, depth=depth, scale=scale, structure=structure,
                    generator=g).double()
    return net(_points(n)).reshape(n, n).numpy()


def run_mlp(s: RedshiftSweep, tick: Callable[[], None]) -> list[dict[str, Any]]:
    rows = []
    for structure in s.structures:
        for act in s.activations:
            for depth in s.depths:
                for scale in s.scales:
                    for seed in range(s.seeds):
                        f = mlp_function(activation=act, width=s.width, depth=depth, scale=scale,
                                         structure=structure, seed=seed, n=s.grid)
                        rows.append({"structure": structure, "activation": act, "depth": depth, "scale": scale,
                                     "seed": seed, **_measures(f, s.degree)})
                        tick()
    return rows


# --------------------------------------------------------------------- archlab's parts


def part_variants(s: RedshiftSweep) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, kind, overrides) for every registered kind of each chosen group."""
    out = []
    for group in s.part_groups:
        for kind in REGISTRIES[_REGISTRY_OF[group]].kinds():
            out.append((group, kind, {PART_GROUPS[group]: kind}))
    return out


@torch.no_grad()
def part_function(overrides: dict[str, Any], *, depth: int, seed: int, s: RedshiftSweep) -> np.ndarray:
    """The grid function of a default LM with ``overrides`` at its initialisation (module doc)."""
    from archlab.config import load_config
    from archlab.models import build_model
    from archlab.models.capture import capture, splice

    sets = {"model.dim": s.part_dim, "model.depth": depth, "model.heads": s.part_heads,
            "model.max_seq_len": max(64, s.part_tokens), "train.seq_len": s.part_tokens, "train.seed": seed,
            **overrides}
    cfg = load_config(None, sets, require_budget=False)
    torch.manual_seed(seed)
    model = build_model(cfg.model).eval()
    g = torch.Generator().manual_seed(10_000 + seed)
    T, D = s.part_tokens, s.part_dim
    w, u, v = (torch.randn(T, D, generator=g) for _ in range(3))
    read = torch.randn(D, generator=g)
    read /= read.norm()
    pts = _points(s.grid, torch.float32)
    seq = w + pts[:, 0, None, None] * u + pts[:, 1, None, None] * v  # (n², T, D)
    ids = torch.zeros(pts.shape[0], T, dtype=torch.long)
    out = []
    for lo in range(0, ids.shape[0], 1024):
        chunk = seq[lo:lo + 1024]
        with splice(model, "embed", lambda e, c=chunk: c.to(e.dtype)), capture(model, ["final"]) as acts:
            model(ids[lo:lo + 1024])
        out.append(acts["final"][:, -1].double() @ read.double())
    return torch.cat(out).reshape(s.grid, s.grid).numpy()


def run_parts(s: RedshiftSweep, tick: Callable[[], None]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    rows, refused = [], []
    for group, kind, sets in part_variants(s):
        for depth in s.part_depths:
            try:
                fs = [part_function(sets, depth=depth, seed=seed, s=s) for seed in range(s.seeds)]
            except ConfigError as e:  # a kind that does not fit the default LM (it says why)
                if not any(r["group"] == group and r["kind"] == kind for r in refused):
                    refused.append({"group": group, "kind": kind, "reason": str(e)})
                for _ in range(s.seeds):
                    tick()
                continue
            for seed, f in enumerate(fs):
                rows.append({"group": group, "kind": kind, "depth": depth, "seed": seed, **_measures(f, s.degree)})
                tick()
    return rows, refused


# --------------------------------------------------------------------- the paper's findings


def _per_seed(rows: list[dict], measure: str, **where: Any) -> list[float]:
    """The mean of ``measure`` over the rows matching ``where`` (a value may be a predicate), per seed."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        if all((w(r[k]) if callable(w) else r[k] == w) for k, w in where.items()):
            by_seed.setdefault(r["seed"], []).append(r[measure])
    return [float(np.mean(v)) for _, v in sorted(by_seed.items())]


def _values(rows: list[dict], measure: str, spec: dict | tuple[dict, dict]) -> list[float]:
    """Per-seed means of the cells ``spec`` names, or (a pair of specs) the per-seed difference
    of the first's mean minus the second's."""
    if isinstance(spec, tuple):
        hi, lo = _per_seed(rows, measure, **spec[0]), _per_seed(rows, measure, **spec[1])
        return [a - b for a, b in zip(hi, lo)]
    return _per_seed(rows, measure, **spec)


def run_claims(rows: list[dict], claims: list[dict], measure: str) -> list[dict[str, Any]]:
    """Each claim ``{"claim", "a", "b"}`` tested as "a > b" on per-seed values: one-sided Welch
    t, Holm-adjusted across ``claims`` at 5%."""
    out = []
    for c in claims:
        va, vb = _values(rows, measure, c["a"]), _values(rows, measure, c["b"])
        cmp = compare_to_baseline(va, vb) if len(va) >= 2 and len(vb) >= 2 else None
        p_two = cmp["p_value"] if cmp else math.nan
        diff = float(np.mean(va) - np.mean(vb)) if va and vb else math.nan
        # one-sided: the claimed direction (a > b) halves the two-sided p; the other direction is 1 − p/2
        p = p_two / 2 if diff > 0 else (1 - p_two / 2 if math.isfinite(p_two) else math.nan)
        out.append({"claim": c["claim"], "measure": measure, "a_mean": float(np.mean(va)) if va else math.nan,
                    "b_mean": float(np.mean(vb)) if vb else math.nan, "difference": diff, "seeds": len(va),
                    "p_one_sided": p})
    for r, adj in zip(out, adjust_p_values([r["p_one_sided"] for r in out], "holm")):
        r["p_holm"] = adj
        r["verdict"] = ("reproduces" if adj < 0.05 else
                        "not detected" if r["difference"] > 0 or not math.isfinite(adj) else
                        "not detected (opposite sign)")
    return out


def part_findings(rows: list[dict], s: RedshiftSweep, measure: str = "frequency") -> list[dict[str, Any]]:
    """For each part: is it more complex at the largest depth than at the smallest?"""
    deep, shallow = max(s.part_depths), min(s.part_depths)
    if deep == shallow:
        return []
    kinds = list(dict.fromkeys((r["group"], r["kind"]) for r in rows))
    claims = [{"claim": f"{g}: {k} grows more complex with depth ({deep} vs {shallow})",
               "a": dict(group=g, kind=k, depth=deep), "b": dict(group=g, kind=k, depth=shallow)} for g, k in kinds]
    out = run_claims(rows, claims, measure)
    for r in out:
        r["verdict"] = {"reproduces": "yes"}.get(r["verdict"], "not detected")
    return out


def findings(rows: list[dict], s: RedshiftSweep, measure: str = "frequency") -> list[dict[str, Any]]:
    """The paper's qualitative claims, each as "A is more complex than B" on per-seed means,
    tested one-sided (Welch t), Holm-adjusted across the claims at 5%."""
    deep, shallow = max(s.depths), min(s.depths)
    big = [a for a in s.scales if a >= 3.0] or [max(s.scales)]
    small = [a for a in s.scales if a <= 0.5] or [min(s.scales)]
    is_big, is_small = (lambda a: a in big), (lambda a: a in small)
    claims = []

    def claim(text: str, a: dict | tuple, b: dict | tuple) -> None:
        claims.append({"claim": text, "a": a, "b": b})

    acts = set(s.activations)
    strucs = set(s.structures)
    if "plain" in strucs:
        for act in ("tanh", "sine", "gaussian"):
            if act in acts and "relu" in acts:
                claim(f"deep {act} networks are more complex than deep ReLU networks (depth {deep}, A ≥ 3)",
                      dict(structure="plain", activation=act, depth=deep, scale=is_big),
                      dict(structure="plain", activation="relu", depth=deep, scale=is_big))
        for act in ("tanh", "sine"):
            if act in acts and deep != shallow:
                claim(f"{act} networks grow more complex with depth (depth {deep} vs {shallow}, A ≥ 3)",
                      dict(structure="plain", activation=act, depth=deep, scale=is_big),
                      dict(structure="plain", activation=act, depth=shallow, scale=is_big))
            if act in acts and deep != shallow and "relu" in acts:
                claim(f"depth raises the complexity of {act} networks more than of ReLU networks "
                      f"(depth {deep} − depth {shallow}, A ≥ 3)",
                      (dict(structure="plain", activation=act, depth=deep, scale=is_big),
                       dict(structure="plain", activation=act, depth=shallow, scale=is_big)),
                      (dict(structure="plain", activation="relu", depth=deep, scale=is_big),
                       dict(structure="plain", activation="relu", depth=shallow, scale=is_big)))
            if act in acts and big != small:
                claim(f"{act} networks grow more complex with weight scale (A ≥ 3 vs A ≤ 0.5, depth {deep})",
                      dict(structure="plain", activation=act, depth=deep, scale=is_big),
                      dict(structure="plain", activation=act, depth=deep, scale=is_small))
    for act in ("tanh", "sine"):
        if act not in acts or "plain" not in strucs:
            continue
        if "residual" in strucs:
            claim(f"residual connections make deep {act} networks simpler (depth {deep}, A ≥ 3)",
                  dict(structure="plain", activation=act, depth=deep, scale=is_big),
                  dict(structure="residual", activation=act, depth=deep, scale=is_big))
        if "layernorm" in strucs:
            claim(f"layer norm makes deep {act} networks simpler at large weight scale (depth {deep}, A ≥ 3)",
                  dict(structure="plain", activation=act, depth=deep, scale=is_big),
                  dict(structure="layernorm", activation=act, depth=deep, scale=is_big))
    return run_claims(rows, claims, measure)


def run_redshift(s: RedshiftSweep, out: str | Path, *, command: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    if "mlp" in s.sweeps:
        total += len(s.structures) * len(s.activations) * len(s.depths) * len(s.scales) * s.seeds
    if "parts" in s.sweeps:
        total += len(part_variants(s)) * len(s.part_depths) * s.seeds
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="net", dynamic_ncols=True)
    tick = bar.update if bar is not None else (lambda n=1: None)
    start = time.perf_counter()
    res: dict[str, Any] = {"settings": to_dict(s), "command": command}
    try:
        torch.set_grad_enabled(False)
        if "mlp" in s.sweeps:
            res["mlp"] = run_mlp(s, tick)
        if "parts" in s.sweeps:
            res["parts"], res["refused"] = run_parts(s, tick)
    finally:
        torch.set_grad_enabled(True)
        if bar is not None:
            bar.close()
    res["seconds"] = time.perf_counter() - start
    return write_redshift(res, out)


def _analyse(res: dict[str, Any]) -> None:
    """The findings' tests, from the rows (so a report can be rebuilt from results.json)."""
    s = from_dict(RedshiftSweep, res["settings"], "redshift")
    if res.get("mlp"):
        res["findings"] = {m: findings(res["mlp"], s, m) for m in MEASURES}
    if res.get("parts"):
        res["part_findings"] = {m: part_findings(res["parts"], s, m) for m in MEASURES}
    res["references"] = reference_scores(s)


def write_redshift(res: dict[str, Any], out: Path) -> dict[str, Any]:
    _analyse(res)
    write_text_atomic(out / "results.json", json.dumps(res, indent=1) + "\n")
    s = from_dict(RedshiftSweep, res["settings"], "redshift")
    plots = write_plots(res, s, out)
    blocks = report_blocks(res, s, plots)
    write_text_atomic(out / "report.md", render_md(blocks))
    write_text_atomic(out / "report.html", render_html(blocks, plots))
    res["findings_lines"] = [f"{f['verdict']:>13}  {f['claim']} (p {f['p_holm']:.3g})"
                             for f in res.get("findings", {}).get("frequency", [])]
    return res


def rebuild_redshift(out: str | Path, *, command: str | None = None) -> dict[str, Any]:
    """Recompute the findings, plots and report from ``out/results.json`` (nothing is re-run)."""
    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise ConfigError(f"--rebuild: {path} not found; run archlab redshift --out {out} first")
    res = json.loads(path.read_text())
    if not isinstance(res, dict) or "settings" not in res:
        raise ConfigError(f"--rebuild: {path} is not an archlab redshift result")
    res["rebuilt_by"] = command or "archlab.analysis.redshift.rebuild_redshift"
    return write_redshift(res, out)


def reference_scores(s: RedshiftSweep) -> list[dict[str, Any]]:
    """The measures of a few functions with known shapes, on the sweep's grid: what the
    networks' numbers are to be read against."""
    x, y = grid(s.grid)
    rng = np.random.default_rng(0)
    funcs = {"constant": np.ones_like(x), "linear x + y": x + y, "cos, 1 cycle": np.cos(np.pi * (x + 1)),
             "cos, 4 cycles": np.cos(4 * np.pi * (x + 1)), "x·y": x * y,
             "sign(x)": np.sign(x), "white noise": rng.normal(size=x.shape)}
    return [{"function": name, **_measures(f, s.degree)} for name, f in funcs.items()]


__all__ = ["ACTIVATIONS", "STRUCTURES", "RandomMLP", "RedshiftSweep", "findings", "mlp_function",
           "parse_sweep", "part_findings", "part_function", "rebuild_redshift", "reference_scores",
           "run_redshift", "run_claims"]
