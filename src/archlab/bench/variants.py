"""``archlab bench variants``: training-step time of config variants relative to a baseline.

    archlab bench variants                                   # the rotary variants vs rope
    archlab bench variants experiments/positional.yaml       # an experiment's variants and baseline
    archlab bench variants configs/lm_ref.yaml \\
        --variant givens=model.position.kind=givens_rope \\
        --variant orth=model.position.kind=orthogonal_rope,model.position.penalty=0.01

Every variant is built at the reference LM shape (configs/lm_ref.yaml: byte vocabulary, dim
256, depth 4, heads 4, seq 256, batch 16) unless ``--shape file`` keeps the file's own shape;
``--set`` refines the base of every variant. The variants train side by side in one process,
alternating step by step (:func:`archlab.bench.interleave.interleaved` over
:class:`archlab.bench.harness.TrainBench`), on the model's own training loss (auxiliary terms such
as an orthogonality penalty included). The headline is each variant's median step time divided
by the baseline's, plus the steadier paired ratio (median over rounds of the per-round ratio);
absolute times on a shared machine are noise. ``--clock cpu`` times by this process's CPU time
instead of the wall clock, which other processes on a shared machine disturb much less (use it
with ``--threads 1``).

With many variants alternating, every model's weights and optimiser state compete for the
caches, and variants made of many small operations pay the most for it (the same variant
measured ×1.19 against RoPE alone and ×1.70 in a 12-way alternation). ``--pairwise`` measures
each variant in its own alternation with a fresh baseline instead: a step-time ratio then
depends only on the two models compared.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from archlab.bench import harness, interleave
from archlab.models import counting
from archlab.bench.harness import ReferenceShape
from archlab.bench.interleave import Contender
from archlab.registry import ConfigError

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "lm_ref.yaml")

#: What runs when no variant is given: RoPE against each rotary variant.
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "rope": {},
    "rope_learned": {"model.position.learn_freq": True, "model.position.learn_scale": True,
                     "model.position.learn_phase": True},
    "rope_multiscale": {"model.position.base_mults": [1.0, 10.0]},
    "givens": {"model.position.kind": "givens_rope"},
    "givens_head": {"model.position.kind": "givens_rope", "model.position.scope": "head"},
    "orthogonal": {"model.position.kind": "orthogonal_rope"},
    "orthogonal_penalty": {"model.position.kind": "orthogonal_rope", "model.position.penalty": 0.01},
    "givens_orthogonal": {"model.position.kind": "orthogonal_rope", "model.position.givens_rounds": -1},
    "conditional": {"model.position.kind": "conditional_rope"},
    "relative": {"model.position.kind": "relative"},
    "dynamic": {"model.position.kind": "dynamic"},
    "learned_sinusoidal": {"model.position.kind": "learned_sinusoidal"},
}

# Variants may not change what a step is: equal work per step is the point of a step-time ratio.
FIXED = ("train.batch", "train.seq_len", "data.tokenizer", "model.vocab_size")
_ITEM = re.compile(r",(?=[A-Za-z_][\w.]*=)")  # a comma that starts the next key=value


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name=key=value[,key=value…]`` -> (name, {key: YAML-parsed value}). Commas inside YAML
    values (``[1, 10]``, ``{a: 1, b: 2}``) stay with their value."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ConfigError(f"--variant {text}: expected NAME=KEY=VALUE[,KEY=VALUE], "
                          "e.g. givens=model.position.kind=givens_rope")
    over: dict[str, Any] = {}
    for item in (s for s in _ITEM.split(rest) if s):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--variant {name}: '{item}' is not KEY=VALUE")
        over[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return name, over


def _reference_sets(shape: ReferenceShape) -> dict[str, Any]:
    return {"model.dim": shape.dim, "model.depth": shape.depth, "model.heads": shape.heads,
            "data.tokenizer": "bytes", "model.vocab_size": shape.vocab, "train.seq_len": shape.seq_len,
            "train.batch": shape.batch_size}


def resolve_variants(source: str | None, variants: list[str], *, shape: str = "reference",
                     sets: list[str] | None = None, baseline: str | None = None) -> tuple[dict, str]:
    """({name: validated Config}, baseline name) from a config or experiment file (or the
    reference config) plus ``--variant`` specs. An experiment supplies its own variants and
    baseline; a config is the baseline ("base") that ``--variant``s modify; with neither,
    :data:`DEFAULT_VARIANTS` against ``rope``."""
    from archlab.config import apply_overrides, load_yaml, parse_config
    from archlab.lab.experiment import load_experiment

    path = source or DEFAULT_CONFIG
    raw = load_yaml(path, "config or experiment file")
    pinned = _reference_sets(ReferenceShape()) if shape == "reference" else {}
    if "variants" in raw:  # an experiment file
        exp = load_experiment(path)
        if shape == "reference":
            base = apply_overrides(load_yaml(DEFAULT_CONFIG), pinned)
            overs = dict(exp.overrides)
        else:  # the experiment's own base + overrides: its variants already are full configs
            base = None
            overs = {n: exp.variants[n].to_dict() for n in exp.variants}
        base_name = baseline or exp.baseline
    elif variants:  # a config: the baseline "base", modified by each --variant
        base = apply_overrides(raw, pinned)
        overs, base_name = {"base": {}}, baseline or "base"
    else:  # a config alone: the built-in rotary variants on top of it
        base = apply_overrides(raw, pinned)
        overs, base_name = dict(DEFAULT_VARIANTS), baseline or "rope"
    for spec in variants:
        name, over = parse_variant(spec)
        if name in overs and name != "base":
            raise ConfigError(f"--variant {name}: defined twice")
        overs[name] = over
    configs: dict[str, Any] = {}
    for name, over in overs.items():
        bad = [k for k in over if any(k == f or k.startswith(f + ".") for f in FIXED)]
        if bad and base is not None:
            raise ConfigError(f"variant {name}: '{bad[0]}' would change the work per step; "
                              f"variants may not set {', '.join(FIXED)}")
        cfg_raw = over if base is None else apply_overrides(base, over)
        cfg_raw = apply_overrides(cfg_raw, sets or [])
        try:
            configs[name] = parse_config(cfg_raw)
        except ConfigError as e:
            raise ConfigError(f"variant {name}: {e}") from None
    if base_name not in configs:
        raise ConfigError(f"--baseline {base_name}: not a variant; variants: {', '.join(configs)}")
    # the baseline first: it is what every ratio is taken against
    configs = {base_name: configs[base_name], **{k: v for k, v in configs.items() if k != base_name}}
    return configs, base_name


def training_loss(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own training loss (NLL + auxiliary terms) on ``tokens`` (B, T + 1)."""
    return model(tokens[:, :-1], targets=tokens[:, 1:]).loss


def make_contender(name: str, cfg: Any, *, seed: int, device: torch.device, compile: bool) -> Contender:
    from archlab.models import build_model
    from archlab.registry import to_dict

    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device)
    n_ne = counting.nonembedding_params(model)
    run = torch.compile(model) if compile else model
    return Contender(name=name, model=run, loss_fn=training_loss, n_params_nonembedding=n_ne,
                     info={"model": to_dict(cfg.model), "torch_compile": compile})


def step_time_ratios(per: dict[str, Any], baseline: str, kept: list[int], tokens_per_step: int) -> dict[str, Any]:
    """Each contender's step time / the baseline's: from the medians, and paired (the median
    over kept rounds of the per-round ratio, steadier on a noisy machine)."""
    base = per[baseline]
    out = {}
    for name, rec in per.items():
        ratio = base["tokens_per_s"] / rec["tokens_per_s"] if rec["tokens_per_s"] else float("nan")
        pairs = [base["values"][r] / rec["values"][r] for r in kept if rec["values"][r]]
        out[name] = {"ratio": ratio, "paired": harness._median(pairs), "step_ms": 1e3 * tokens_per_step / rec["tokens_per_s"]}
    return out


def run_variants(configs: dict[str, Any], baseline: str, *, rounds: int = 8, steps_per_round: int = 1,
                 warmup: int = 2, seed: int = 0, device: str = "cpu", compile: bool = False, clock: str = "wall",
                 max_foreign_cpu: float | None = 0.15, verbose: bool = False) -> dict[str, Any]:
    """Interleaved training steps of every variant (:func:`archlab.bench.interleave.interleaved` over
    :class:`archlab.bench.harness.TrainBench`es), timed by the wall clock or, with ``clock="cpu"``,
    by this process's CPU time (robust to other processes on a shared machine when torch runs
    one thread; with several threads it also counts their spinning)."""
    dev = torch.device(device)
    b = configs[baseline]
    B, T, V = b.train.batch, b.train.seq_len, b.model.vocab_size
    contenders = [make_contender(n, c, seed=seed, device=dev, compile=compile) for n, c in configs.items()]
    benches, warm_s = {}, {}
    for c in contenders:
        tb = harness.TrainBench(c.model, loss_fn=c.loss_fn, batch_size=B, seq_len=T, vocab_size=V, seed=seed)
        t0 = time.perf_counter()
        tb.warmup(warmup)
        warm_s[c.name] = time.perf_counter() - t0
        benches[c.name] = tb

    def timed(tb: harness.TrainBench) -> dict[str, Any]:
        c0 = time.process_time()
        r = tb.run(steps_per_round)
        r["cpu_s"] = time.process_time() - c0
        r["cpu_tokens_per_s"] = tb.tokens_per_step * r["steps"] / r["cpu_s"] if r["cpu_s"] > 0 else float("nan")
        return r

    key = "cpu_tokens_per_s" if clock == "cpu" else "tokens_per_s"
    on_result = (lambda r, n, x: print(f"  round {r} {n}: {x[key]:.0f} tok/s", flush=True)) if verbose else None
    summary = interleave.interleaved({n: (lambda tb=tb: timed(tb)) for n, tb in benches.items()}, rounds, key=key,
                                  max_foreign_cpu=max_foreign_cpu if clock == "wall" else None, on_result=on_result)
    per = {}
    for c in contenders:
        rec = summary["results"][c.name]
        per[c.name] = {"tokens_per_s": rec["median"], "values": rec["values"], "n_params": sum(
            p.numel() for p in c.model.parameters()), "warmup_s": warm_s[c.name],
            "final_loss": benches[c.name].last_loss, "info": c.info}
    kept = summary["kept_rounds"]
    return {
        "kind": "variants", "clock": clock, "baseline": baseline,
        "shape": {"vocab": V, "dim": b.model.dim, "depth": b.model.depth, "heads": b.model.heads, "seq_len": T,
                  "batch_size": B},
        "steps_per_round": steps_per_round, "warmup": warmup, "device": str(dev),
        "step_time_ratios": step_time_ratios(per, baseline, kept, B * T),
        "contenders": per,
        "interleaving": {k: summary[k] for k in ("order", "rounds", "kept_rounds")},
        "foreign_cpu": {n: [r.get("foreign_cpu") for r in rec["runs"]] for n, rec in summary["results"].items()},
        "environment": interleave.environment(),
    }


def run_pairwise(configs: dict[str, Any], baseline: str, **kw: Any) -> dict[str, Any]:
    """Each variant against the baseline alone (:func:`run_variants` on the pair, a fresh
    baseline model each time); the pairs' results under ``pairs`` and their ratios together."""
    pairs = {n: run_variants({baseline: configs[baseline], n: c}, baseline, **kw)
             for n, c in configs.items() if n != baseline}
    if not pairs:
        raise ConfigError(f"--pairwise: no variant besides the baseline '{baseline}'")
    first = next(iter(pairs.values()))
    base_ms = harness._median([p["step_time_ratios"][baseline]["step_ms"] for p in pairs.values()])
    ratios = {baseline: {"ratio": 1.0, "paired": 1.0, "step_ms": base_ms}}
    ratios.update({n: p["step_time_ratios"][n] for n, p in pairs.items()})
    return {
        "kind": "variants", "mode": "pairwise", "clock": first["clock"], "baseline": baseline, "shape": first["shape"],
        "step_time_ratios": ratios, "pairs": pairs,
        "interleaving": {"rounds": first["interleaving"]["rounds"],
                         "kept_rounds": min((p["interleaving"]["kept_rounds"] for p in pairs.values()), key=len)},
        "environment": first["environment"],
    }


def _print(result: dict[str, Any]) -> None:
    kept, total = len(result["interleaving"]["kept_rounds"]), result["interleaving"]["rounds"]
    sh = result["shape"]
    mode = ", each variant alone with it" if result.get("mode") == "pairwise" else ""
    print(f"\nstep time relative to '{result['baseline']}'{mode} ({result['clock']} clock, {kept}/{total} rounds kept, "
          f"dim {sh['dim']}, depth {sh['depth']}, heads {sh['heads']}, seq {sh['seq_len']}, batch {sh['batch_size']}):")
    for name, r in result["step_time_ratios"].items():
        print(f"  {name:22s} {r['step_ms']:9.1f} ms/step   ×{r['ratio']:.2f}  (paired ×{r['paired']:.2f})")


def main(argv: list[str] | None = None, mode: str = "variants") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    summary, examples = __doc__.split("\n\n")[:2]
    shared = common_options(rounds=8, steps_per_round=1, warmup=2, clock=True, max_foreign_cpu=0.15,
                            out="runs/bench/variants.json", who="variant")
    ap = ArgumentParser(prog=f"archlab bench {mode}", description=plain(summary), parents=[shared],
                        epilog="examples:\n" + examples.replace("\\\\\n", "\\\n").replace("    archlab", "  archlab"))
    ap.add_argument("source", nargs="?", default=None,
                    help="experiment YAML (its variants) or config YAML (the baseline); default: the reference "
                         "config with the built-in rotary variants")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="a variant as overrides of the base (repeatable)")
    ap.add_argument("--baseline", default=None, help="variant the ratios are taken against")
    ap.add_argument("--only", default=None, help="comma-separated variant names to keep (the baseline always runs)")
    ap.add_argument("--shape", choices=["reference", "file"], default="reference",
                    help="reference: dim 256, depth 4, heads 4, seq 256, batch 16, bytes; file: as the file says")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="torch.compile every variant")
    ap.add_argument("--pairwise", action="store_true",
                    help="time each variant in its own alternation with the baseline (not all together)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    configs, baseline = resolve_variants(a.source, a.variant, shape=a.shape, sets=a.set, baseline=a.baseline)
    if a.only:
        keep = {n.strip() for n in a.only.split(",") if n.strip()}
        unknown = sorted(keep - set(configs))
        if unknown:
            raise ConfigError(f"--only {unknown[0]}: not a variant; variants: {', '.join(configs)}")
        configs = {n: c for n, c in configs.items() if n == baseline or n in keep}
    t0 = time.perf_counter()
    run = run_pairwise if a.pairwise else run_variants
    result = run(configs, baseline, rounds=a.rounds, steps_per_round=a.steps_per_round, warmup=a.warmup,
                 seed=a.seed, device=a.device, compile=a.compile, clock=a.clock,
                 max_foreign_cpu=None if a.max_foreign_cpu < 0 else a.max_foreign_cpu, verbose=a.verbose)
    result["command"] = " ".join(["archlab", "bench", mode, *(argv or [])])
    result["wall_s"] = time.perf_counter() - t0
    _print(result)
    path = interleave.write_json(a.out, result)
    print(f"\nwrote {path}")
    return 0
