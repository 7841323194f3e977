"""``archlab bench hier``: training throughput of the hierarchical family against lucidrains'
simple-hierarchical-transformer at the same configuration, side by side.

    archlab bench hier                                  # hierarchies (1, 2), dim 256, depth 4, seq 256, batch 16
    archlab bench hier --hierarchies 1 --rounds 4       # the flat version
    archlab bench hier --generate --out runs/bench/hier.json

Both models get the same per-hierarchy dims, heads, dim_head, ff_mult, window sizes and strides
(the peer's defaults: dim_head 64, heads 8, ff_mult 4, full attention, stride 1) and are driven
the same way: one training step = forward with the training loss, backward, AdamW step, on the
same random batches. The peer runs twice: as a user gets it (``peer-sht-default``: its
reconstruction and next-latent auxiliary losses on) and at its cheapest (``peer-sht-lean``:
both off, cross-entropy only); ours computes its full training loss (fine cross-entropy plus
each coarse stream's next-token loss). Parameter counts of all are reported, since the two
implementations compress and merge differently. Contenders alternate step by step
(:func:`archlab.bench.interleave.interleaved`); the headline is the ratio to the best peer variant.

``--generate`` adds batch-1 decoding: ours uses its KV caches; the peer has none and recomputes
the whole (cropped) sequence for every new token.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

import torch

from archlab.bench import interleave
from archlab.bench.harness import ReferenceShape, TrainBench
from archlab.bench.interleave import Contender

PEER = "simple_hierarchical_transformer"
INSTALL_HINT = "pip install simple-hierarchical-transformer (or 'archlab[peers]')"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _windows(text: str) -> tuple[int | None, ...]:
    return tuple(None if v.strip().lower() in ("none", "full") else int(v) for v in text.split(",") if v.strip())


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration both implementations are built with (the peer's argument names)."""
    n = len(args.hierarchies)

    def per(values: tuple) -> Any:
        return values[0] if len(values) == 1 else values if len(values) == n else _bad(values, n)

    return dict(num_tokens=256, dim=per(args.dim), depth=args.depth, seq_len=args.seq_len, heads=per(args.heads),
                dim_head=per(args.dim_head), ff_mult=per(args.ff_mult), hierarchies=args.hierarchies,
                hierarchical_stride=per(args.stride), window_sizes=per(args.windows))


def _bad(values: tuple, n: int) -> Any:
    raise SystemExit(f"archlab bench hier: {len(values)} values {list(values)} for {n} hierarchies")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def make_ours(kw: dict[str, Any], args: argparse.Namespace) -> Contender:
    from archlab.models.generation import generate
    from archlab.models.hierarchical import HierarchicalTransformer

    torch.manual_seed(args.seed)
    model = HierarchicalTransformer(**kw, use_flash_attn=not args.explicit)

    def gen(prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        return generate(model, prompt, max_new_tokens=new_tokens, temperature=0.0)[:, prompt.shape[1]:]

    return Contender(
        name="ours", model=model, loss_fn=lambda m, tokens: m(tokens, return_loss=True).loss, generate_fn=gen,
        info={"kwargs": {**kw, "use_flash_attn": not args.explicit}, "n_params": _n_params(model),
              "levels": [lv.__dict__ for lv in model.levels]},
    )


def make_peer(kw: dict[str, Any], args: argparse.Namespace, *, lean: bool) -> Contender | None:
    if importlib.util.find_spec(PEER) is None:
        print(f"skip peer: simple-hierarchical-transformer not installed: {INSTALL_HINT}")
        return None
    import simple_hierarchical_transformer as sht

    extra = {"recon_loss_weight": 0.0, "next_latent_loss_weight": 0.0} if lean else {}
    torch.manual_seed(args.seed)
    model = sht.HierarchicalTransformer(**kw, **extra)

    @torch.no_grad()
    def gen(prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        model.eval()
        out = prompt
        for _ in range(new_tokens):  # no cache: the whole window again for every token (greedy)
            logits = model(out[:, -kw["seq_len"]:])[:, -1]
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
        return out[:, prompt.shape[1]:]

    return Contender(
        name="peer-sht-lean" if lean else "peer-sht-default", model=model,
        loss_fn=lambda m, tokens: m(tokens, return_loss=True)[0], generate_fn=gen,
        info={"library": "simple-hierarchical-transformer", "version": _version(), "kwargs": {**kw, **extra},
              "n_params": _n_params(model)},
    )


def _version() -> str | None:
    try:
        from importlib.metadata import version

        return version("simple-hierarchical-transformer")
    except Exception:
        return None


class CpuTrainBench(TrainBench):
    """A :class:`TrainBench` whose step time is this process's CPU time (user + system) instead
    of wall time. On a machine shared with other jobs, wall time mostly measures the neighbours;
    CPU time measures the work done (with one thread it equals the wall time of a quiet machine,
    up to cache effects)."""

    def step(self) -> float:
        tokens = self.batches[self.steps_done % len(self.batches)]
        self.model.train()
        t0 = time.process_time()
        loss = self.loss_fn(self.model, tokens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        dt = time.process_time() - t0
        self.steps_done += 1
        self.last_loss = float(loss.detach())
        return dt


def compare_train(contenders: list[Contender], shape: ReferenceShape, *, clock: str = "wall", rounds: int = 6,
                  steps_per_round: int = 1, warmup: int = 2, max_foreign_cpu: float | None = None) -> dict[str, Any]:
    """Training tokens/s of each contender, interleaved step by step; ratios to the best peer."""
    cls = CpuTrainBench if clock == "cpu" else TrainBench
    benches = {}
    for c in contenders:
        tb = cls(c.model, loss_fn=c.loss_fn, batch_size=shape.batch_size, seq_len=shape.seq_len, vocab_size=shape.vocab)
        benches[c.name] = tb.warmup(warmup)
    runs = {name: (lambda tb=tb: tb.run(steps_per_round)) for name, tb in benches.items()}
    summary = interleave.interleaved(runs, rounds, max_foreign_cpu=max_foreign_cpu)
    per = {c.name: {"tokens_per_s": summary["results"][c.name]["median"], "values": summary["results"][c.name]["values"],
                    "final_loss": benches[c.name].last_loss, "info": c.info} for c in contenders}
    return {"kind": "train", "shape": shape.to_dict(), "contenders": per, "comparison": interleave.summarize(summary),
            "interleaving": {k: summary[k] for k in ("order", "rounds", "kept_rounds")}}


def counted_flops(model: torch.nn.Module, loss_fn: Any, *, batch: int, seq_len: int, vocab: int = 256) -> dict[str, float]:
    """FLOPs of one training forward + backward, by operator, from PyTorch's FLOP counter.

    The counter knows matrix products and convolutions. The fused CPU attention kernel is
    counted as the explicit products it replaces, the way the peer's explicit attention is
    counted (``bmm``): forward 4·B·H·T²·D (QKᵀ and PV, causal mask not discounted), backward
    twice that (no recomputation). Norms, activations and softmax are not counted."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fused = {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, out_shape=None, **kw: 2 * fc.sdpa_flop_count(q, k, v),
    }
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    was = model.training
    model.train()
    with fc.FlopCounterMode(display=False, custom_mapping=fused) as counter:
        loss_fn(model, tokens).backward()
    model.zero_grad(set_to_none=True)
    model.train(was)
    by_op = {str(k).replace("aten.", ""): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": float(counter.get_total_flops()), "by_op": by_op}


def work_bound(result: dict[str, Any], contenders: list[Contender], shape: ReferenceShape, goal: float = 2.0) -> dict[str, Any]:
    """What the measured rates mean against the machine: counted GFLOP/s of each contender as a
    fraction of the measured matmul peak, and the rate the ``goal`` (× the best peer) needs."""
    from archlab.bench.harness import measure_matmul_peak

    peak = measure_matmul_peak()
    per_step = shape.batch_size * shape.seq_len
    out: dict[str, Any] = {"matmul_peak_gflops": peak, "contenders": {}}
    for c in contenders:
        fl = counted_flops(c.model, c.loss_fn, batch=shape.batch_size, seq_len=shape.seq_len, vocab=shape.vocab)
        tps = result["contenders"][c.name]["tokens_per_s"]
        per_token = fl["total"] / per_step
        out["contenders"][c.name] = {"counted_flops_per_token": per_token, "by_op_gflop_per_step": {
            k: v / 1e9 for k, v in fl["by_op"].items()}, "gflops": tps * per_token / 1e9,
            "fraction_of_peak": tps * per_token / 1e9 / peak}
    peers = [n for n in out["contenders"] if n.startswith("peer")]
    if "ours" in out["contenders"] and peers:
        best = max(result["contenders"][n]["tokens_per_s"] for n in peers)
        need = goal * best * out["contenders"]["ours"]["counted_flops_per_token"] / 1e9
        out["goal"] = {"times_best_peer": goal, "tokens_per_s": goal * best, "needs_gflops": need,
                       "needs_fraction_of_peak": need / peak}
    return out


def main(argv: list[str] | None = None, mode: str | None = None) -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    summary, examples = __doc__.split("\n\n")[:2]
    shared = common_options(rounds=6, steps_per_round=1, warmup=2, clock=True, max_foreign_cpu=-1.0, out=None,
                            verbose=False)
    ap = ArgumentParser(prog=f"archlab bench {mode or 'hier'}", description=plain(summary), parents=[shared],
                        epilog="examples:\n" + examples.replace("    archlab", "  archlab"))
    ap.add_argument("--hierarchies", type=_ints, default=(1, 2), help="compression factors, e.g. 1,2,4")
    ap.add_argument("--dim", type=_ints, default=(256,), help="model width: one, or one per hierarchy")
    ap.add_argument("--heads", type=_ints, default=(8,), help="attention heads: one, or one per hierarchy")
    ap.add_argument("--dim-head", type=_ints, default=(64,), help="width of a head: one, or one per hierarchy")
    ap.add_argument("--ff-mult", type=_ints, default=(4,), help="feed-forward width ÷ model width, per hierarchy")
    ap.add_argument("--stride", type=_ints, default=(1,), help="hierarchical_stride, per hierarchy")
    ap.add_argument("--windows", type=_windows, default=(None,),
                    help="attention window per hierarchy; 'none' is full attention")
    ap.add_argument("--depth", type=int, default=4, help="layers")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    ap.add_argument("--batch", type=int, default=16, help="sequences per training step")
    ap.add_argument("--contenders", default="ours,peer-sht-default,peer-sht-lean",
                    help="comma-separated, from ours, peer-sht-default, peer-sht-lean")
    ap.add_argument("--explicit", action="store_true", help="ours with use_flash_attn=False (the explicit path)")
    ap.add_argument("--generate", action="store_true", help="also batch-1 decoding tokens/s")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per generation (with --generate)")
    ap.add_argument("--no-flops", action="store_true",
                    help="skip counting FLOPs and measuring the matmul peak (the work bound)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = model_kwargs(args)
    factories = {
        "ours": lambda: make_ours(kw, args),
        "peer-sht-default": lambda: make_peer(kw, args, lean=False),
        "peer-sht-lean": lambda: make_peer(kw, args, lean=True),
    }
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in factories]
    if unknown:
        ap.error(f"unknown contender(s) {unknown}; choose from {sorted(factories)}")
    contenders = [c for c in (factories[n]() for n in names) if c is not None]
    if not contenders:
        print("nothing to run")
        return 1
    dim0 = kw["dim"][0] if isinstance(kw["dim"], tuple) else kw["dim"]
    heads0 = kw["heads"][0] if isinstance(kw["heads"], tuple) else kw["heads"]
    shape = ReferenceShape(vocab=256, dim=dim0, depth=args.depth, heads=heads0, seq_len=args.seq_len,
                           batch_size=args.batch, prompt_len=16, new_tokens=args.new_tokens)
    foreign = None if args.max_foreign_cpu < 0 else args.max_foreign_cpu
    result: dict[str, Any] = {"command": " ".join(["archlab", "bench", mode or "hier", *(argv or [])]),
                              "config": kw, "clock": args.clock, "environment": interleave.environment()}
    t0 = time.perf_counter()
    result["train"] = compare_train(contenders, shape, clock=args.clock, rounds=args.rounds,
                                    steps_per_round=args.steps_per_round, warmup=args.warmup, max_foreign_cpu=foreign)
    _print(result["train"], f"train tok/s ({args.clock} clock)")
    if not args.no_flops:
        result["work"] = work_bound(result["train"], contenders, shape)
        _print_work(result["work"])
    if args.generate:
        result["generate"] = interleave.compare_generate(contenders, shape, rounds=max(2, args.rounds // 2),
                                                      max_foreign_cpu=foreign)
        _print(result["generate"], "decode tok/s (wall clock)")
    result["wall_s"] = time.perf_counter() - t0
    if args.out:
        print(f"\nwrote {interleave.write_json(args.out, result)}")
    return 0


def _print(res: dict[str, Any], unit: str) -> None:
    comp = res["comparison"]
    print(f"\n{unit} ({len(res['interleaving']['kept_rounds'])}/{res['interleaving']['rounds']} rounds kept)")
    for name, rec in res["contenders"].items():
        line = f"  {name:18s} {rec['tokens_per_s']:9.1f}"
        if "n_params" in rec.get("info", {}):
            line += f"   {rec['info']['n_params'] / 1e6:6.2f}M params"
        if name in comp["ratios"]:
            line += f"   ×{comp['ratios'][name]:.2f} (paired ×{comp['paired_ratios'][name]:.2f}) vs {comp['baseline']}"
        print(line)


def _print_work(work: dict[str, Any]) -> None:
    print(f"\nwork (counted FLOPs of matrix products, convolutions and attention; matmul peak measured now:"
          f" {work['matmul_peak_gflops']:.0f} GFLOP/s)")
    for name, rec in work["contenders"].items():
        print(f"  {name:18s} {rec['counted_flops_per_token'] / 1e6:7.1f} MFLOP/token   {rec['gflops']:6.1f} GFLOP/s"
              f" = {rec['fraction_of_peak']:.2f} of peak")
    if "goal" in work:
        g = work["goal"]
        print(f"  ×{g['times_best_peer']:g} the best peer = {g['tokens_per_s']:.0f} tok/s needs ours to run"
              f" {g['needs_gflops']:.0f} GFLOP/s of counted work = {g['needs_fraction_of_peak']:.2f} × the matmul peak")
