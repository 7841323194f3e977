"""``archlab bench quality``: does archlab's LM train as well as x-transformers' at one budget?

    archlab bench quality --out runs/bench/quality
    archlab bench quality --set data.corpus=path --set data.path=/usr/share/vim/vim90/doc
    archlab bench quality --tokens 500000 --seeds 0,1 --variant gpt2=model.init=fixed
    archlab bench quality --mode own --seeds 0,1

Every contender is built from one shape (the base config's vocabulary, dim, depth, heads and
seq_len; ``configs/lm.yaml`` unless ``--config``) and trained for the same number of steps of
the same batch size on the same corpus. Mode ``shared`` (the default) trains them all through
**one** loop: the same batches (a pure function of the seed and the step, so contender A and B
see identical tokens in identical order), the same AdamW (decay on matrices only), schedule,
clipping and the same evaluation; what differs is the model alone. Mode ``own`` trains archlab
with its own trainer and config, and the peer with x-transformers' documented recipe (its
README's enwik8 example: Adam at 1e-4, constant, gradients clipped at 0.5).

Evaluation scores every target of the validation split (``--eval-tokens`` caps it at a prefix,
the same for every contender) in non-overlapping ``seq_len`` windows, summing in float64, and
divides by the UTF-8 bytes of the targets actually scored, so bits per byte is exact for BPE too.

The headline per contender: final bpb per seed, the mean, and the gap to the baseline (the
peer unless ``--baseline``) paired by seed (same seed, same batches) with a Student-t 95 %
interval; also tokens/s of training. One JSON per contender and seed is written under ``--out``
as soon as it finishes and reused by a later call with the same settings (a killed run loses
at most the run in progress; different contenders can run in parallel processes), then
``summary.json``.

Knobs, as contenders: ``--variant NAME=KEY=VALUE[,…]`` overrides the base config (``model.*``,
``train.*``); ``--peer NAME=KEY=VALUE[,…]`` passes keywords to x-transformers' ``Decoder``
(``wrapper_*`` to ``TransformerWrapper``). Both take the loop keys ``loop.schedule``
(``archlab``: linear warmup, then cosine to ``min_lr_ratio`` from the end of warmup;
``multiplied``: the warmup ramp multiplied into one cosine over the whole run) and
``loop.sampler`` (``archlab``: :class:`~archlab.data.stream.WindowSampler`; ``torch``: window
starts from a seeded ``torch.Generator``, as a hand-written loop draws them).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archlab.bench import peers
from archlab.bench.quality_loop import (
    build_archlab,
    build_peer,
    evaluate_bpb,
    param_count,
    sampler_fn,
    schedule_fn,
    train_loop,
)
from archlab.environment import package_versions
from archlab.registry import ConfigError

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "lm.yaml")
SCHEDULES = ("archlab", "multiplied", "constant")
SAMPLERS = ("archlab", "torch")
LOOP_KEYS = ("loop.schedule", "loop.sampler")
#: x-transformers' documented recipe (README, train_enwik8.py): Adam, lr 1e-4, no schedule,
#: no weight decay, gradients clipped at norm 0.5.
PEER_RECIPE = {"optimizer": "adam", "lr": 1e-4, "schedule": "constant", "grad_clip": 0.5, "weight_decay": 0.0}


@dataclass
class Spec:
    """One contender: archlab with config overrides, or x-transformers with keywords."""

    name: str
    kind: str  # "archlab" | "xt"
    overrides: dict[str, Any] = field(default_factory=dict)  # archlab config keys, or xt keywords
    schedule: str = "archlab"
    sampler: str = "archlab"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "overrides": self.overrides,
                "schedule": self.schedule, "sampler": self.sampler}


def _split_loop(name: str, over: dict[str, Any], flag: str) -> tuple[dict[str, Any], str, str]:
    rest = {k: v for k, v in over.items() if not k.startswith("loop.")}
    for key in over:
        if key.startswith("loop.") and key not in LOOP_KEYS:
            raise ConfigError(f"{flag} {name}: unknown key '{key}'; loop keys: {', '.join(LOOP_KEYS)}")
    schedule, sampler = over.get("loop.schedule", "archlab"), over.get("loop.sampler", "archlab")
    if schedule not in SCHEDULES:
        raise ConfigError(f"{flag} {name}: loop.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"{flag} {name}: loop.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return rest, schedule, sampler


def parse_specs(variants: list[str], peer_specs: list[str], *, peer: bool) -> list[Spec]:
    """Contenders: ``archlab`` (the base recipe), the ``--variant``s, ``xt`` (x-transformers'
    defaults, with ``peer``) and the ``--peer``s. A variant or peer named ``archlab`` / ``xt``
    replaces that default."""
    from archlab.bench.variants import parse_variant

    groups = {"archlab": [Spec("archlab", "archlab")], "xt": [Spec("xt", "xt")] if peer else []}
    redefined: set[str] = set()
    for flag, texts, kind in (("--variant", variants, "archlab"), ("--peer", peer_specs, "xt")):
        group = groups[kind]
        for text in texts:
            name, over = parse_variant(text)
            rest, schedule, sampler = _split_loop(name, over, flag)
            if kind == "archlab":
                bad = [k for k in rest if not k.startswith(("model.", "train."))]
                if bad:
                    raise ConfigError(f"--variant {name}: '{bad[0]}' is not a model.* or train.* key "
                                      "(the corpus and shape are shared: set them with --set)")
            spec = Spec(name, kind, rest, schedule, sampler)
            if name == kind and group and name not in redefined:  # the default contender, redefined once
                group[0] = spec
                redefined.add(name)
            elif any(s.name == name for g in groups.values() for s in g):
                raise ConfigError(f"contender '{name}' is defined twice; give each --variant/--peer its own name")
            else:
                group.append(spec)
    specs = groups["archlab"] + groups["xt"]
    return specs


# ---------------------------------------------------------------------------------------------
# One run


def contender_config(base, spec: Spec):
    """The archlab config of a contender (the base for a peer: its shape and train settings)."""
    from archlab.config import apply_overrides, parse_config

    if spec.kind != "archlab" or not spec.overrides:
        return base
    return parse_config(apply_overrides(base.to_dict(), spec.overrides))


def run_key(spec: Spec, cfg, *, seed: int, mode: str, eval_tokens: int | None) -> str:
    blob = json.dumps({"spec": spec.to_dict(), "config": cfg.to_dict(), "seed": seed, "mode": mode,
                       "eval_tokens": eval_tokens, "version": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_one(spec: Spec, base, data: dict, *, seed: int, mode: str, eval_tokens: int | None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one contender at one seed."""
    cfg = contender_config(base, spec)
    t = cfg.train
    steps = t.total_steps()
    torch.manual_seed(seed)
    own = mode == "own"
    if spec.kind == "archlab" and own:
        return _run_own_archlab(cfg, data, seed=seed, eval_tokens=eval_tokens, log=log)
    model, forward = build_archlab(cfg) if spec.kind == "archlab" else build_peer(cfg, spec.overrides)
    recipe = PEER_RECIPE if (own and spec.kind == "xt") else {}
    sched = schedule_fn(recipe.get("schedule", spec.schedule), t, steps, recipe.get("lr", t.lr))
    batches = sampler_fn(spec.sampler, data["train"], seq_len=t.seq_len, batch=t.batch, seed=seed)
    trained = train_loop(model, forward, batches, steps=steps, lr=sched,
                         weight_decay=recipe.get("weight_decay", t.weight_decay), betas=(t.beta1, t.beta2),
                         grad_clip=recipe.get("grad_clip", t.grad_clip), optimizer=recipe.get("optimizer", "adamw"),
                         log=log)
    ev = evaluate_bpb(model, data, seq_len=t.seq_len, batch_size=t.batch, max_tokens=eval_tokens)
    return {"bpb": ev["bpb"], "eval": ev, "params": param_count(model), "steps": steps,
            "train_tokens": steps * t.batch * t.seq_len, "train_seconds": trained["seconds"],
            "tokens_per_s": steps * t.batch * t.seq_len / trained["seconds"],
            "final_train_loss": float(np.mean(trained["losses"][-20:])), "recipe": recipe or "shared"}


def _run_own_archlab(cfg, data, *, seed, eval_tokens, log) -> dict[str, Any]:
    """archlab's own trainer and config (its schedule, sampler, clipping), evaluated as the rest."""
    import dataclasses

    from archlab.train.trainer import Trainer

    t = dataclasses.replace(cfg.train, seed=seed, tensorboard=False, eval_every=10**9, ckpt_every=10**9)
    with tempfile.TemporaryDirectory(prefix="archlab-quality-") as tmp:
        trainer = Trainer(dataclasses.replace(cfg, train=t), Path(tmp) / "run", progress=False, quiet=True,
                          log=log or (lambda line: None))
        trainer.fit()
        ev = evaluate_bpb(trainer.model, data, seq_len=t.seq_len, batch_size=t.batch, max_tokens=eval_tokens)
        n, seconds = param_count(trainer.model), trainer.train_time
    steps = t.total_steps()
    return {"bpb": ev["bpb"], "eval": ev, "params": n, "steps": steps, "train_tokens": steps * t.batch * t.seq_len,
            "train_seconds": seconds, "tokens_per_s": steps * t.batch * t.seq_len / seconds,
            "recipe": "archlab trainer"}


# ---------------------------------------------------------------------------------------------
# The benchmark


def load_base(config: str, sets: list[str], *, tokens: int | None, seq_len: int | None = None):
    """The base config: its data and shape are every contender's; a token budget is required."""
    from archlab.config import load_config

    overrides = list(sets)
    if tokens is not None:
        overrides.append(f"train.tokens={tokens}")
    cfg = load_config(config, overrides)
    t = cfg.train
    if t.seconds is not None:
        raise ConfigError("train.seconds: bench quality compares at equal steps; give train.tokens or train.steps "
                          "(or --tokens)")
    if cfg.data.corpus == "task":
        raise ConfigError("data.corpus: bench quality measures language modelling (bits per byte) on a text "
                          "corpus; allowed: stdlib, path, enwik8")
    if t.grad_accum != 1:
        raise ConfigError(f"train.grad_accum: bench quality's shared loop takes whole batches; got {t.grad_accum}, "
                          "allowed: 1")
    return cfg


def prepare_data(cfg) -> dict[str, Any]:
    """Tokenizer, train and validation streams, and the byte length of every token id."""
    import dataclasses

    from archlab.data import check_streams, prepare_corpus
    from archlab.train.evaluate import token_byte_lengths
    from archlab.train.trainer import setup_tokenizer

    d = cfg.data
    with tempfile.TemporaryDirectory(prefix="archlab-quality-tok-") as tmp:
        tok = setup_tokenizer(cfg, Path(tmp))
    streams = prepare_corpus(corpus=d.corpus, path=d.path, tokenizer=tok, cache_dir=d.cache_dir,
                             splits=("train", "validation"))
    check_streams(streams, seq_len=cfg.train.seq_len, splits=("train", "validation"))
    vocab = cfg.model.vocab_size or tok.vocab_size
    model = dataclasses.replace(cfg.model, vocab_size=vocab)
    return {"tokenizer": tok, "train": streams["train"], "validation": streams["validation"],
            "lengths": token_byte_lengths(tok), "model": model}


def paired_gap(values: dict[int, float], base: dict[int, float]) -> dict[str, Any]:
    """Mean of per-seed differences (contender − baseline) with a Student-t 95 % interval."""
    from archlab.stats import mean_ci

    seeds = sorted(set(values) & set(base))
    if not seeds:
        return {"n": 0}
    diffs = [values[s] - base[s] for s in seeds]
    mean, std, lo, hi = mean_ci(diffs)
    ratio = float(np.mean([values[s] for s in seeds]) / np.mean([base[s] for s in seeds]))
    return {"n": len(seeds), "mean": mean, "std": std, "lo": lo, "hi": hi, "ratio": ratio, "seeds": seeds}


def summarize(results: dict[str, dict[int, dict]], baseline: str) -> dict[str, Any]:
    base = {s: r["bpb"] for s, r in results.get(baseline, {}).items()}
    rows = {}
    for name, runs in results.items():
        bpb = {s: r["bpb"] for s, r in runs.items()}
        vals = list(bpb.values())
        rows[name] = {
            "bpb": bpb, "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in runs.values()])),
            "params": next(iter(runs.values()))["params"],
            "gap": paired_gap(bpb, base) if name != baseline else None,
        }
    return rows


def _fmt(x: float | None, nd: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:+.{nd}f}" if nd < 0 else f"{x:.{nd}f}"


def _gap_cells(g: dict[str, Any] | None, *, baseline: str) -> tuple[str, str]:
    """(gap with its interval, ratio) as text; ``baseline`` is the ratio shown for the baseline."""
    if g is None:
        return "(baseline)", baseline
    if g.get("n", 0) < 2:
        return f"{g.get('mean', math.nan):+.4f} (one seed: no interval)", f"{g.get('ratio', math.nan):.3f}"
    return f"{g['mean']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]", f"{g['ratio']:.3f}"


def print_table(rows: dict[str, Any], baseline: str, header: str) -> None:
    print(f"\n{header}")
    print(f"  {'contender':24s} {'params':>9s}  {'bpb mean':>8s} {'± sd':>7s}  {'per seed':28s} {'gap to ' + baseline:>28s}"
          f"  {'ratio':>6s}  {'tok/s':>6s}")
    for name, r in rows.items():
        seeds = " ".join(f"{v:.4f}" for _, v in sorted(r["bpb"].items()))
        gap, ratio = _gap_cells(r["gap"], baseline="")
        sd = f"{r['std']:.4f}" if r["std"] is not None else "—"
        print(f"  {name:24s} {r['params']:9,d}  {r['mean']:8.4f} {sd:>7s}  {seeds:28s} {gap:>28s}  {ratio:>6s}"
              f"  {r['tokens_per_s']:6.0f}")


def table_md(rows: dict[str, Any], baseline: str, header: str, command: str) -> str:
    """The summary as Markdown: what was run, then one row per contender."""
    lines = [f"`{command}`", "", header, "",
             f"| contender | params | bpb mean ± sd | per seed | gap to {baseline} [95% CI] | ratio | tokens/s |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for name, r in rows.items():
        gap, ratio = _gap_cells(r["gap"], baseline="1")
        sd = f" ± {r['std']:.4f}" if r["std"] is not None else ""
        seeds = ", ".join(f"{v:.4f}" for _, v in sorted(r["bpb"].items()))
        lines.append(f"| {name} | {r['params']:,} | {r['mean']:.4f}{sd} | {seeds} | {gap} | {ratio} | "
                     f"{r['tokens_per_s']:,.0f} |")
    lines += ["", "tokens/s: indicative (measured while other work shared the machine); the bench `train` "
                  "measures speed."]
    return "\n".join(lines) + "\n"


def run_quality(specs: list[Spec], base, *, seeds: list[int], mode: str, eval_tokens: int | None,
                out: Path | None, baseline: str, verbose: bool = False) -> dict[str, Any]:
    import dataclasses

    from archlab.atomic import write_text_atomic

    data = prepare_data(base)
    base = dataclasses.replace(base, model=data["model"])
    log = print if verbose else None
    results = {spec.name: {} for spec in specs}
    for seed in seeds:  # seed-major: a stopped benchmark leaves complete pairs behind
        for spec in specs:
            cfg = contender_config(base, spec)
            key = run_key(spec, cfg, seed=seed, mode=mode, eval_tokens=eval_tokens)
            path = out / "runs" / f"{spec.name}-s{seed}.json" if out is not None else None
            if path is not None and path.exists():
                try:
                    old = json.loads(path.read_text())
                except (OSError, ValueError):
                    old = {}
                if old.get("key") == key:
                    results[spec.name][seed] = old
                    print(f"  {spec.name} seed {seed}: {old['bpb']:.4f} bpb (reused {path})")
                    continue
            print(f"  {spec.name} seed {seed}: training {cfg.train.total_steps()} steps …", flush=True)
            rec = run_one(spec, base, data, seed=seed, mode=mode, eval_tokens=eval_tokens, log=log)
            rec.update({"key": key, "name": spec.name, "seed": seed, "spec": spec.to_dict(), "mode": mode})
            results[spec.name][seed] = rec
            print(f"  {spec.name} seed {seed}: {rec['bpb']:.4f} bpb, {rec['tokens_per_s']:.0f} tok/s "
                  f"({rec['train_seconds']:.0f} s)", flush=True)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(rec, indent=1, default=str) + "\n")
    return results


def main(argv: list[str] | None = None, mode: str = "quality") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options
    from archlab.atomic import write_text_atomic

    summary, examples = __doc__.split("\n\n")[:2]
    shared = common_options(seed=False, out="runs/bench/quality", out_help="folder for one JSON per run and summary.json",
                            verbose="print the training loss as runs go")
    ap = ArgumentParser(prog=f"archlab bench {mode}", description=plain(summary), parents=[shared],
                        epilog="examples:\n" + examples.replace("    archlab", "  archlab"))
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="base config: shape, corpus and train settings of every contender")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the base (repeatable)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="an archlab contender as overrides of the base (repeatable); default: 'archlab', the base")
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="an x-transformers contender with Decoder keywords (repeatable); default: 'xt', its defaults")
    ap.add_argument("--no-peer", action="store_true", help="archlab contenders only")
    ap.add_argument("--baseline", default=None, help="contender the gaps are taken against (default: the first peer)")
    ap.add_argument("--mode", choices=["shared", "own"], default="shared",
                    help="shared: one loop for all; own: archlab's trainer vs the peer's documented recipe")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (weights and batches)")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens (default: the base config's budget)")
    ap.add_argument("--eval-tokens", type=int, default=0, help="validation targets scored (0: the whole split)")
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {a.seeds}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {a.seeds}: give distinct non-negative integers, e.g. 0,1,2")
    if a.tokens is not None and a.tokens <= 0:
        raise ConfigError(f"--tokens {a.tokens}: must be a positive number of training tokens")
    if a.eval_tokens < 0:
        raise ConfigError(f"--eval-tokens {a.eval_tokens}: must be >= 0 (0: the whole validation split)")
    if a.threads is not None and a.threads < 1:
        raise ConfigError(f"--threads {a.threads}: must be >= 1")
    want_peer = not a.no_peer
    if want_peer and not peers.peers_available():
        if a.peer:
            raise peers.PeerNotInstalled("--peer needs x-transformers: pip install -c constraints.txt -e '.[peers]'")
        print("x-transformers not installed (pip install -c constraints.txt -e '.[peers]'): archlab contenders only")
        want_peer = False
    if a.no_peer and a.peer:
        raise ConfigError("--no-peer with --peer: drop one")
    specs = parse_specs(a.variant, a.peer, peer=want_peer)
    names = [s.name for s in specs]
    baseline = a.baseline or next((s.name for s in specs if s.kind == "xt"), names[0])
    if baseline not in names:
        raise ConfigError(f"--baseline {baseline}: not a contender; contenders: {', '.join(names)}")
    base = load_base(a.config, a.set, tokens=a.tokens)
    for spec in specs:  # every variant's config is checked before any training
        contender_config(base, spec)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    t = base.train
    eval_tokens = a.eval_tokens or None
    header = (f"bench quality ({a.mode} loop): {t.total_steps()} steps × batch {t.batch} × seq {t.seq_len} = "
              f"{t.total_steps() * t.batch * t.seq_len:,} tokens, corpus {base.data.corpus}"
              f"{' ' + base.data.path if base.data.path else ''}, {base.data.tokenizer}, seeds {a.seeds}; "
              f"validation bpb ({'all targets' if eval_tokens is None else f'first {eval_tokens:,} targets'})")
    print(header, flush=True)
    t0 = time.perf_counter()
    results = run_quality(specs, base, seeds=seeds, mode=a.mode, eval_tokens=eval_tokens, out=out,
                          baseline=baseline, verbose=a.verbose)
    rows = summarize(results, baseline)
    print_table(rows, baseline, header)
    summary_doc = {"kind": "quality", "mode": a.mode, "command": " ".join(["archlab", "bench", mode, *(argv or [])]),
                   "baseline": baseline, "seeds": seeds, "config": base.to_dict(), "eval_tokens": eval_tokens,
                   "contenders": {s.name: s.to_dict() for s in specs}, "summary": rows,
                   "versions": package_versions("torch", "x-transformers", "archlab"), "wall_s": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.json", json.dumps(summary_doc, indent=1, default=str) + "\n")
    write_text_atomic(out / "summary.md", table_md(rows, baseline, header, summary_doc["command"]))
    print(f"\nwrote {out / 'summary.json'} and summary.md")
    return 0
