"""``archlab bench local``: sliding-window attention against full causal attention and the
``local-attention`` package, forward + backward, interleaved in one process.

Two levels are timed (``--level``):

* ``kernel``: the same q, k, v (B, H, T, D) through (a) full causal attention as archlab's
  :class:`~archlab.nn.mixers.attention.Attention` runs it (``scaled_dot_product_attention``
  with ``is_causal``), (b) lucidrains' ``local_attention.LocalAttention`` (``window_size=w,
  causal=True, look_backward=1``, its own rotary embedding off), (c) archlab's
  :func:`~archlab.nn.kernels.sliding_window.sliding_window_attention`;
* ``layer``: a whole attention layer (dim, heads; q/k/v and output projections included):
  archlab's ``Attention``, the package between the same projections, archlab's ``LocalAttention``.

Window semantics differ: archlab's query sees exactly w keys (0 ≤ i − j < w); the package's
sees its own block of w up to itself plus the whole previous block, w + 1 … 2w keys (with
``exact_windowsize=True``: i − j ≤ w, w + 1 keys). The ratios compare time per call;
the package does up to twice the arithmetic by design.

A round runs every contender once (the starting contender rotates); the reported speed-up of
X is the median over rounds of t(full)/t(X) within the round (:func:`paired_ratio`), which a
busy shared machine disturbs least.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from archlab.bench.harness import ForeignCpu, _stats
from archlab.bench.interleave import environment, interleaved, paired_ratio, write_json
from archlab.nn.mixers.attention import Attention
from archlab.nn.kernels.sliding_window import default_block, sliding_window_attention
from archlab.nn.mixers.local import LocalAttention
from archlab.nn.positional import NoPosition

SEMANTICS = ("archlab local: each query sees exactly `window` keys (0 <= i-j < w). "
             "local-attention package (look_backward=1): its own block up to itself plus the previous "
             "block, i.e. w+1..2w keys (exact_windowsize=True: i-j <= w, w+1 keys); it computes 2w "
             "scores per query either way. full: every earlier key.")


def _peer(window: int, exact: bool):
    """The package's module, or None (with the reason) when it is not installed."""
    try:
        from local_attention import LocalAttention as PeerLocal
    except ImportError as e:  # pragma: no cover - depends on the environment
        return None, f"local-attention not installed ({e}); pip install 'archlab[peers]'"
    return PeerLocal(window_size=window, causal=True, look_backward=1, look_forward=0, autopad=True,
                     exact_windowsize=exact, use_rotary_pos_emb=False), None


def _timed(fn: Callable[[], torch.Tensor], grad_out: torch.Tensor | None, params: list[torch.Tensor]):
    """A callable running fn (forward, and backward of <y, grad_out> unless forward-only) once,
    returning its wall time (ms) and the CPU other processes used meanwhile."""
    def run() -> dict[str, Any]:
        for p in params:
            p.grad = None
        monitor = ForeignCpu()
        t0 = time.perf_counter()
        if grad_out is None:
            with torch.no_grad():
                fn()
        else:
            fn().backward(grad_out)
        return {"ms": 1e3 * (time.perf_counter() - t0), "foreign_cpu": monitor.fraction()}
    return run


def kernel_contenders(o: argparse.Namespace, peer) -> tuple[dict[str, Callable], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    hd = o.dim // o.heads
    shape = (o.batch, o.heads, o.seq_len, hd)
    q, k, v = (torch.randn(*shape, generator=g, dtype=o.dtype).requires_grad_(not o.forward_only) for _ in range(3))
    grad = None if o.forward_only else torch.randn(*shape, generator=g, dtype=o.dtype)
    w = o.window
    fns = {
        "full": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "archlab_local": lambda: sliding_window_attention(q, k, v, window=w, block=o.block),
    }
    if peer is not None:
        fns["peer_local_attention"] = lambda: peer(q, k, v)
    return {n: _timed(f, grad, [q, k, v]) for n, f in fns.items()}, [q, k, v]


def layer_contenders(o: argparse.Namespace, peer) -> dict[str, Callable]:
    torch.manual_seed(0)
    kw = {"dim": o.dim, "heads": o.heads, "position": NoPosition()}
    full = Attention(**kw).to(o.dtype)
    local = LocalAttention(window=o.window, block=o.block, **kw).to(o.dtype)
    local.load_state_dict(full.state_dict())
    x = torch.randn(o.batch, o.seq_len, o.dim, dtype=o.dtype, requires_grad=not o.forward_only)
    grad = None if o.forward_only else torch.randn(o.batch, o.seq_len, o.dim, dtype=o.dtype)
    pos = torch.arange(o.seq_len)

    def peer_layer() -> torch.Tensor:
        q, k, v = full.project(x)  # same projections, the package's attention in between
        y = peer(q, k, v)
        return full.out(y.transpose(1, 2).reshape(o.batch, o.seq_len, -1))

    fns = {"full": lambda: full(x, positions=pos), "archlab_local": lambda: local(x, positions=pos)}
    if peer is not None:
        fns["peer_local_attention"] = peer_layer
    params = [x, *full.parameters(), *local.parameters()]
    return {n: _timed(f, grad, params) for n, f in fns.items()}


def run_level(level: str, o: argparse.Namespace, peer) -> dict[str, Any]:
    runs = kernel_contenders(o, peer)[0] if level == "kernel" else layer_contenders(o, peer)
    for fn in runs.values():  # warm-up: allocator, lazy init, first-call dispatch
        fn()
    summary = interleaved(runs, o.rounds, key="ms", max_foreign_cpu=o.max_foreign_cpu)
    res = summary["results"]
    out: dict[str, Any] = {"ms": {n: _stats(r["values"]) for n, r in res.items()},
                           "foreign_cpu": {n: [x["foreign_cpu"] for x in r["runs"]] for n, r in res.items()},
                           "kept_rounds": summary["kept_rounds"], "order": summary["order"],
                           "speedup_vs_full": {}}
    for n in res:
        if n != "full":
            out["speedup_vs_full"][n] = paired_ratio(summary, "full", n)  # t(full) / t(n), per round
    if "peer_local_attention" in res:
        out["archlab_vs_peer"] = paired_ratio(summary, "peer_local_attention", "archlab_local")
    return out


def main(argv: list[str] | None = None, mode: str = "local") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    shared = common_options(rounds=5, rounds_help="rounds; every contender runs once per round", max_foreign_cpu=None,
                            seed=False, out=None, verbose=False)
    sp = ArgumentParser(prog=f"archlab bench {mode}", description=plain(__doc__), parents=[shared],
                        epilog="examples:\n  archlab bench local\n"
                               "  archlab bench local --seq-len 2048 --window 128 --level kernel --forward-only\n"
                               "  archlab bench local --out runs/bench/local.json")
    sp.add_argument("--seq-len", type=int, default=8192, help="tokens per sequence")
    sp.add_argument("--window", type=int, default=256, help="keys each query sees (archlab's window)")
    sp.add_argument("--dim", type=int, default=256, help="model width (the layer level)")
    sp.add_argument("--heads", type=int, default=4, help="attention heads")
    sp.add_argument("--batch", type=int, default=1, help="sequences per call")
    sp.add_argument("--block", type=int, default=None, help="query block size (default: archlab's choice)")
    sp.add_argument("--level", choices=["kernel", "layer", "both"], default="both",
                    help="kernel: attention on given q, k, v; layer: whole attention layers")
    sp.add_argument("--forward-only", action="store_true", help="time forward passes only (no_grad)")
    sp.add_argument("--no-peer", action="store_true", help="leave the local-attention package out")
    sp.add_argument("--peer-exact", action="store_true", help="the package with exact_windowsize=True")
    sp.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="tensor type")
    o = sp.parse_args(argv)
    if o.dim % o.heads or o.window < 1 or o.seq_len < 1:
        sp.error("need dim divisible by heads, window ≥ 1 and seq-len ≥ 1")
    if o.threads:
        torch.set_num_threads(o.threads)
    o.dtype = getattr(torch, o.dtype)
    peer, why = (None, "left out (--no-peer)") if o.no_peer else _peer(o.window, o.peer_exact)
    levels = ["kernel", "layer"] if o.level == "both" else [o.level]
    result: dict[str, Any] = {
        "kind": "local", "seq_len": o.seq_len, "window": o.window, "dim": o.dim, "heads": o.heads,
        "batch": o.batch, "block": o.block or default_block(o.window), "rounds": o.rounds,
        "pass": "forward" if o.forward_only else "forward+backward", "dtype": str(o.dtype),
        "semantics": SEMANTICS, "peer": why or f"local-attention (exact_windowsize={o.peer_exact})",
        "arithmetic_limit": o.seq_len / (2 * o.window),  # T²/2 score pairs vs T·w
        "levels": {}, "environment": environment(),
    }
    print(f"T={o.seq_len} w={o.window} dim={o.dim} heads={o.heads} batch={o.batch} "
          f"{result['pass']}, {o.rounds} interleaved rounds, {torch.get_num_threads()} thread(s)")
    print(f"note: {SEMANTICS}")
    if why:
        print(f"peer: {why}")
    for level in levels:
        r = result["levels"][level] = run_level(level, o, peer)
        print(f"\n[{level}]  median ms (speed-up vs full, median of per-round ratios)")
        for n, st in r["ms"].items():
            s = r["speedup_vs_full"].get(n)
            print(f"  {n:22s} {st['median']:9.1f} ms" + (f"   {s:5.2f}x" if s is not None else ""))
        if "archlab_vs_peer" in r:
            print(f"  archlab local vs package: {r['archlab_vs_peer']:.2f}x faster")
    print(f"\narithmetic limit (T/2w, attention scores only): {result['arithmetic_limit']:.1f}x")
    if o.out:
        print(f"wrote {write_json(Path(o.out), result)}")
    return 0
