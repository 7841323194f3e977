"""``archlab bench method``: what a training step costs under each ``train.method`` — time and
peak memory of backprop against forward-gradient steps with K perturbations, the same model
and batch.

Each contender runs in a fresh process (spawn), so its peak resident memory
(``ru_maxrss``) is its own: the reported memory is the peak during the steps minus the
resident memory after the trainer was built (weights, optimiser state, data). Backprop keeps
every layer's activations for the backward pass; a forward-mode step keeps the current
activations and their tangents only. Times are the median step after one warm-up step.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from archlab.registry import ConfigError


def _measure(sets: list[str], steps: int, threads: int | None, folder: str) -> dict[str, Any]:
    import resource

    import torch

    from archlab.config import load_config
    from archlab.train import Trainer

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config("configs/lm.yaml", [*sets, f"train.steps={steps + 1}", "train.eval_every=100000",
                                          "train.tensorboard=false", "train.ckpt_every=100000"])
    trainer = Trainer(cfg, folder, progress=False, log=lambda line: None)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(step)
        trainer.step += 1
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_s": statistics.median(times[1:]), "extra_peak_mb": (peak - base) / 1024,
            "params": sum(p.numel() for p in trainer.model.parameters())}


def main(argv: list[str], mode: str = "method") -> int:
    import tempfile

    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.interleave import environment, write_json
    from archlab.bench.options import common_options

    shared = common_options(seed=False, out=None, verbose=False)
    p = ArgumentParser(prog=f"archlab bench {mode}", description=plain(__doc__), parents=[shared],
                       epilog="examples:\n  archlab bench method\n"
                              "  archlab bench method --dim 256 --depth 4 --batch 8 --seq-len 256 --ks 4,16")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ks", default="1,4,16", help="perturbation counts of the forward-gradient contenders")
    p.add_argument("--steps", type=int, default=3, help="timed steps per contender (after one warm-up)")
    o = p.parse_args(argv)
    try:
        ks = [int(k) for k in o.ks.split(",")]
    except ValueError:
        raise ConfigError(f"--ks: expected comma-separated integers, got {o.ks!r}") from None
    if any(k < 1 for k in ks) or min(o.dim, o.depth, o.seq_len, o.batch, o.steps) < 1:
        raise ConfigError("--ks, --dim, --depth, --seq-len, --batch, --steps: must be ≥ 1")
    shape = [f"model.dim={o.dim}", f"model.depth={o.depth}", f"model.max_seq_len={max(o.seq_len, 64)}",
             f"train.seq_len={o.seq_len}", f"train.batch={o.batch}"]
    contenders = {"backprop": shape}
    for k in ks:
        contenders[f"forward_gradient K={k}"] = [*shape, "train.method=forward_gradient",
                                                 f"train.forward_gradient={{perturbations: {k}}}"]
    ctx = multiprocessing.get_context("spawn")
    res: dict[str, Any] = {"benchmark": "method", "settings": vars(o), "environment": environment(), "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, sets) in enumerate(contenders.items()):
            with ctx.Pool(1) as pool:
                r = pool.apply(_measure, (sets, o.steps, o.threads, str(Path(tmp) / f"r{i}")))
            res["results"][name] = r
            print(f"{name:<24} step {r['step_s'] * 1e3:9.1f} ms  peak memory above the model's "
                  f"{r['extra_peak_mb']:8.1f} MB")
    bp = res["results"]["backprop"]
    for name, r in res["results"].items():
        r["time_vs_backprop"] = r["step_s"] / bp["step_s"]
        r["memory_vs_backprop"] = r["extra_peak_mb"] / bp["extra_peak_mb"] if bp["extra_peak_mb"] > 0 else None
    if o.out:
        print(f"wrote {write_json(Path(o.out), res)}")
    return 0
