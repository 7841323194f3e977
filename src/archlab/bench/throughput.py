"""``archlab bench train|generate``: throughput at the reference shape, side by side with peers.

    archlab bench train --out runs/bench/train.json
    archlab bench generate --out runs/bench/generate.json
    archlab bench all --contenders peer-xt-flash,ours --rounds 12
    archlab bench train --contenders peer-xt-flash,peer-xt-cope,ours,ours-cope --rounds 6   # CoPE

Contenders run in one process, alternating (see ``archlab.bench.interleave.interleaved``); the
headline is the ratio of "ours" to the best x-transformers variant, never an absolute number.
Rounds during which other processes took CPU are dropped (``--max-foreign-cpu``).

Adding a contender is one function: ``def make_x(shape, args) -> Contender | None`` plus an
entry in :data:`FACTORIES`. A factory returns ``None`` (with a printed reason) when its
contender cannot be built here, e.g. the peer library is not installed.
"""

from __future__ import annotations

import argparse
import functools
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from archlab.bench import harness, interleave, peers
from archlab.models import counting
from archlab.bench.harness import ReferenceShape
from archlab.bench.interleave import Contender
from archlab.bench.options import common_options
from archlab.registry import ConfigError

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "lm_ref.yaml")

Factory = Callable[[ReferenceShape, argparse.Namespace], "Contender | None"]


# ---------------------------------------------------------------------------------------------
# Contenders


def _make_peer(variant: str) -> Factory:
    """Factory for an x-transformers variant from :data:`archlab.bench.peers.XT_VARIANTS`."""

    def make(shape: ReferenceShape, args: argparse.Namespace) -> Contender | None:
        if not peers.peers_available():
            print(f"skip peer-xt-{variant}: peers not installed: pip install 'archlab[peers]'")
            return None
        kw = peers.XT_VARIANTS[variant]
        torch.manual_seed(args.seed)
        model = peers.xtransformers_lm(
            vocab=shape.vocab, dim=shape.dim, depth=shape.depth, heads=shape.heads,
            seq_len=shape.seq_len,
            # Room for the whole generation, so the peer's cache is not slid (ours is not).
            max_seq_len=shape.prompt_len + shape.new_tokens, **kw,
        )
        import x_transformers

        return Contender(
            name=f"peer-xt-{variant}",
            model=model,
            loss_fn=peers.xtransformers_loss,
            generate_fn=peers.xtransformers_generate_fn(model),
            n_params_nonembedding=counting.nonembedding_params(model, exclude=peers.xtransformers_head(model)),
            info={"library": "x-transformers", "version": getattr(x_transformers, "__version__", None)
                  or _dist_version("x-transformers"), "kwargs": kw, "tie_embedding": True},
        )

    return make


def make_ours(shape: ReferenceShape, args: argparse.Namespace, *, name: str = "ours",
              sets: tuple[str, ...] = ()) -> Contender | None:
    """archlab's own model from ``--config`` (default ``configs/lm_ref.yaml``), with ``sets``
    (``--set``-style ``key=value`` overrides) applied, e.g. another positional scheme."""
    try:
        from archlab.config import load_config
        from archlab.models import build_model, generate
    except ImportError as exc:  # the model package is not there yet
        print(f"skip {name}: {exc}")
        return None
    cfg_path = Path(args.config)
    if not cfg_path.exists():
        print(f"skip {name}: config {cfg_path} not found")
        return None
    cfg = load_config(str(cfg_path), list(sets))
    m = cfg.model
    if m.vocab_size is None:
        m.vocab_size = shape.vocab
    got = (m.vocab_size, m.dim, m.depth, m.heads)
    want = (shape.vocab, shape.dim, shape.depth, shape.heads)
    if got != want:  # a ratio between different shapes would be meaningless
        print(f"skip {name}: config shape (vocab, dim, depth, heads)={got} differs from the reference {want}")
        return None
    torch.manual_seed(args.seed)
    model = build_model(m)
    head = getattr(model, "head", None)
    tied = head is not None and getattr(model, "embed", None) is not None and head.weight is model.embed.weight
    excluded = [head] if isinstance(head, torch.nn.Module) and not tied else []

    def gen(prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        out = generate(model, prompt, max_new_tokens=new_tokens, temperature=0.0)
        return out[:, prompt.shape[1]:]

    return Contender(
        name=name,
        model=model,
        generate_fn=gen,
        n_params_nonembedding=counting.nonembedding_params(model, exclude=excluded),
        info={"config": str(cfg_path), "overrides": list(sets), "model": _describe(m)},
    )


def _describe(model_cfg: Any) -> Any:
    try:
        from archlab.registry import to_dict

        return to_dict(model_cfg)
    except Exception:  # reporting only: never fail a benchmark over a description
        return repr(model_cfg)


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


FACTORIES: dict[str, Factory] = {
    "peer-xt-default": _make_peer("default"),
    "peer-xt-flash": _make_peer("flash"),
    "peer-xt-cope": _make_peer("cope"),
    "ours": make_ours,
    # the same model with CoPE instead of RoPE (docs/cope.md)
    "ours-cope": functools.partial(make_ours, name="ours-cope", sets=("model.position.kind=cope",)),
}


#: What runs without ``--contenders``: the RoPE reference comparison (CoPE is opt-in).
DEFAULT_CONTENDERS = ("peer-xt-default", "peer-xt-flash", "ours")


def _compiled(c: Contender) -> Contender:
    """The same contender with ``torch.compile``d model (training and loss path)."""
    compiled = torch.compile(c.model)
    gen = c.generate_fn  # decoding stays eager: per-token shapes change every step
    return Contender(
        name=f"{c.name}+compile", model=compiled, loss_fn=c.loss_fn, generate_fn=gen,
        n_params_nonembedding=c.n_params_nonembedding, info={**c.info, "torch_compile": True},
    )


# ---------------------------------------------------------------------------------------------
# Main


#: How ``--breakdown`` sorts operators: matrix products, fused attention, everything else.
_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def step_breakdown(c: Contender, shape: ReferenceShape, steps: int = 2) -> dict[str, float]:
    """Where one training step's time goes (ms per step, from the profiler's self times):
    matrix products, fused attention and the rest; ``step_ms`` is the profiled step's wall time
    and ``unattributed_ms`` what no operator accounts for (Python, autograd bookkeeping)."""
    from torch.profiler import ProfilerActivity, profile

    tb = harness.TrainBench(c.model, loss_fn=c.loss_fn or harness.next_token_loss, batch_size=shape.batch_size,
                          seq_len=shape.seq_len, vocab_size=shape.vocab).warmup(2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = sum(tb.step() for _ in range(steps))
    parts = {"matmul_ms": 0.0, "attention_ms": 0.0, "other_ms": 0.0}
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1e3 / steps
        key = ("matmul_ms" if ev.key in _MATMUL_OPS else
               "attention_ms" if "scaled_dot_product" in ev.key or "flash_attention" in ev.key else "other_ms")
        parts[key] += ms
    tb.optimizer.zero_grad(set_to_none=True)
    step_ms = wall / steps * 1e3
    return {"step_ms": step_ms, **parts, "unattributed_ms": max(0.0, step_ms - sum(parts.values()))}


def _print_breakdown(rows: dict[str, dict[str, float]]) -> None:
    print("\nwhere a training step goes (ms per step, profiled; times under the profiler run slower)")
    for name, b in rows.items():
        print(f"  {name:24s} step {b['step_ms']:6.0f}   matmul {b['matmul_ms']:6.0f}"
              f" ({b['matmul_ms'] / b['step_ms']:.0%})   attention {b['attention_ms']:5.0f}"
              f"   other ops {b['other_ms']:5.0f}   unattributed {b['unattributed_ms']:4.0f}")


def _print_table(res: dict[str, Any], unit: str) -> None:
    comp = res["comparison"]
    base = comp.get("baseline")
    kept = res["interleaving"]["kept_rounds"]
    print(f"\n{res['kind']}: {len(kept)}/{res['interleaving']['rounds']} rounds kept"
          + (f", matmul peak {res['peak_gflops']:.0f} GFLOP/s" if "peak_gflops" in res else ""))
    for name, rec in res["contenders"].items():
        line = f"  {name:24s} {rec['tokens_per_s']:8.1f} {unit}"
        if rec.get("mfu") is not None:
            line += f"   MFU {rec['mfu']:.2f}"
        if rec.get("warmup_s") is not None:
            line += f"   warmup {rec['warmup_s']:.1f}s"
        if name in comp["ratios"]:
            line += f"   ×{comp['ratios'][name]:.2f} (paired ×{comp['paired_ratios'][name]:.2f}) vs {base}"
        print(line)


#: What each mode measures: the first line of its ``--help`` page.
MODE_HELP = {
    "train": "training throughput: tokens/s and MFU of forward + backward + AdamW steps at the reference "
             "shape (batch 16 × 256 tokens, dim 256, depth 4, byte vocabulary), ours against x-transformers, "
             "contenders alternating step by step in one process",
    "generate": "decoding throughput: tokens/s of batch-1 cached generation at the reference shape (a 16-token "
                "prompt, then --new-tokens decoded one by one), ours against x-transformers, alternating",
    "all": "'bench train', then 'bench generate', in one process and one JSON result",
}

_EXAMPLES = {
    "train": ["archlab bench train --out runs/bench/train.json",
              "archlab bench train --contenders peer-xt-flash,peer-xt-cope,ours,ours-cope --rounds 6   # CoPE",
              "archlab bench train --compile ours --breakdown"],
    "generate": ["archlab bench generate --out runs/bench/generate.json",
                 "archlab bench generate --new-tokens 128 --rounds 3"],
    "all": ["archlab bench all --contenders peer-xt-flash,ours --rounds 12 --out runs/bench/all.json"],
}


def build_parser(mode: str | None = None) -> argparse.ArgumentParser:
    """The options of ``archlab bench MODE``: only those that mode uses (``mode=None``: the
    standalone script's page, with ``--mode`` and every option)."""
    from archlab.argparsing import ArgumentParser

    which = mode or "all"
    trains, generates = which in ("train", "all"), which in ("generate", "all")
    shown = (mode,) if mode else ("train", "generate", "all")
    rounds = {"train": "10", "generate": "5", "all": "train 10, generate 5"}[which]
    shared = common_options(rounds=None, rounds_help=f"interleaved rounds; every contender runs once per round "
                                                      f"(default: {rounds})",
                            steps_per_round=2 if trains else None, warmup=3 if trains else None,
                            max_foreign_cpu=0.15, out=None)
    ap = ArgumentParser(prog=f"archlab bench {mode}" if mode else None, parents=[shared],
                        description=textwrap.fill(MODE_HELP[which] + ".", 88, break_on_hyphens=False) + "\n\n" + textwrap.fill(
                            "The headline is the ratio of 'ours' to the best x-transformers variant, never an "
                            "absolute number; rounds during which other processes took CPU are dropped "
                            "(--max-foreign-cpu).", 88, break_on_hyphens=False),
                        epilog="examples:\n" + "\n".join(f"  {e}" for m in shown for e in _EXAMPLES[m]))
    # what a mode leaves out keeps its default, so the code below reads one namespace
    ap.set_defaults(mode=mode or "train", compile="", steps_per_round=2, warmup=3, breakdown=False,
                    new_tokens=harness.REFERENCE_SHAPE.new_tokens)
    if mode is None:
        ap.add_argument("--mode", choices=["train", "generate", "all"], default="train", help="what to measure")
    ap.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                    help=f"comma-separated, from {', '.join(sorted(FACTORIES))}")
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="config of the 'ours' contenders (default: configs/lm_ref.yaml)")
    if trains:
        ap.add_argument("--compile", default="",
                        help="comma-separated contenders to also train under torch.compile (default: none)")
        ap.add_argument("--breakdown", action="store_true",
                        help="also profile two training steps per contender: time in matmuls, attention, the rest")
    if generates:
        ap.add_argument("--new-tokens", type=int, default=harness.REFERENCE_SHAPE.new_tokens,
                        help="tokens decoded per generation")
    return ap


def main(argv: list[str] | None = None, mode: str | None = None) -> int:
    ap = build_parser(mode)
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = ReferenceShape(new_tokens=args.new_tokens)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        raise ConfigError(f"--contenders: unknown {', '.join(unknown)}; allowed: {', '.join(sorted(FACTORIES))}")
    contenders = [c for c in (FACTORIES[n](shape, args) for n in names) if c is not None]
    to_compile = {n.strip() for n in args.compile.split(",") if n.strip()}
    if not contenders:
        print("nothing to run")
        return 1

    max_foreign = None if args.max_foreign_cpu < 0 else args.max_foreign_cpu
    verbose = (lambda r, n, x: print(f"  round {r} {n}: {x['tokens_per_s']:.1f} tok/s"
                                     f" (foreign cpu {x.get('foreign_cpu') or 0:.2f})", flush=True)) if args.verbose else None
    result: dict[str, Any] = {"command": " ".join(["archlab", "bench", args.mode, *(argv or [])])}
    t0 = time.perf_counter()
    if args.mode in ("train", "all"):
        train_set = contenders + [_compiled(c) for c in contenders if c.name in to_compile]
        result["train"] = interleave.compare_train(
            train_set, shape, rounds=args.rounds or 10, steps_per_round=args.steps_per_round,
            warmup=args.warmup, max_foreign_cpu=max_foreign, on_result=verbose,
        )
        _print_table(result["train"], "tok/s")
        if args.breakdown:
            result["train"]["breakdown"] = {c.name: step_breakdown(c, shape) for c in train_set}
            _print_breakdown(result["train"]["breakdown"])
    if args.mode in ("generate", "all"):
        result["generate"] = interleave.compare_generate(
            contenders, shape, rounds=args.rounds or 5, max_foreign_cpu=max_foreign, on_result=verbose,
        )
        _print_table(result["generate"], "tok/s")
    result["wall_s"] = time.perf_counter() - t0
    if args.out:
        path = interleave.write_json(args.out, result)
        print(f"\nwrote {path}")
    return 0

