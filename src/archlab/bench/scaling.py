"""``archlab bench scaling``: forward+backward time and peak memory of one block per
registered token mixer against sequence length, on log-log axes with reference slopes.

Each (mixer, length) point runs in a fresh subprocess: the CPU allocator keeps no peak
statistics, but a new process's peak resident set minus its resident set before the
measurement is the memory that point needed. On CUDA the allocator's peak is used instead.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path
from typing import Any

DEFAULT_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _measure(mixer: str, T: int, dim: int, heads: int, repeats: int, device: str, q: Any) -> None:
    import torch

    from archlab.config import load_config
    from archlab.models.lm import build_blocks
    from archlab.registry import POSITION

    try:
        torch.manual_seed(0)
        cfg = load_config(None, [f"model.dim={dim}", f"model.heads={heads}", "model.depth=1",
                                 f"model.layers.default.mixer.kind={mixer}", f"model.max_seq_len={max(T, 4096)}"],
                          require_budget=False)  # blocks only: nothing is trained
        from archlab.models.lm import context_for

        pos = POSITION.build(cfg.model.position, context_for(cfg.model))
        block = build_blocks(cfg.model, causal=True, shared_position=pos)[0].to(device)
        x = torch.randn(1, T, dim, device=device, requires_grad=True)
        positions = torch.arange(T, device=device)
        base = _rss_mb()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            y = block(x, positions=positions)
            y.square().mean().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first call warms up allocator and kernels
                times.append(time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        q.put({"mixer": mixer, "T": T, "seconds": statistics.median(times), "peak_mb": max(peak, 0.0)})
    except Exception as e:  # reported, not raised: one failing point must not hide the rest
        q.put({"mixer": mixer, "T": T, "error": f"{type(e).__name__}: {e}"})


def run_scaling(*, mixers: list[str] | None = None, lengths=DEFAULT_LENGTHS, dim: int = 256, heads: int = 4,
                repeats: int = 3, device: str = "cpu", out: str | Path | None = None, log=print) -> dict:
    from archlab.registry import MIXER

    mixers = mixers or MIXER.kinds()
    ctx = mp.get_context("spawn")
    points = []
    for mixer in mixers:
        for T in lengths:
            q = ctx.Queue()
            p = ctx.Process(target=_measure, args=(mixer, T, dim, heads, repeats, device, q))
            p.start()
            res = q.get()
            p.join()
            points.append(res)
            if "error" in res:
                log(f"{mixer:>12} T={T:>5}: {res['error']}")
            else:
                log(f"{mixer:>12} T={T:>5}: {res['seconds'] * 1e3:9.1f} ms  {res['peak_mb']:8.1f} MB")
    result = {"benchmark": "scaling", "dim": dim, "heads": heads, "batch": 1, "device": device,
              "what": "one block (norm + mixer + feed-forward), forward + backward", "points": points}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scaling.json").write_text(json.dumps(result, indent=2))
        result["plot"] = str(plot_scaling(result, out / "scaling.png"))
    return result


def plot_scaling(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    pts = [p for p in result["points"] if "error" not in p]
    for mixer in sorted({p["mixer"] for p in pts}):
        mine = sorted((p for p in pts if p["mixer"] == mixer), key=lambda p: p["T"])
        T = [p["T"] for p in mine]
        axes[0].plot(T, [p["seconds"] for p in mine], "o-", label=mixer)
        axes[1].plot(T, [max(p["peak_mb"], 1e-1) for p in mine], "o-", label=mixer)
    if pts:
        T0 = min(p["T"] for p in pts)
        T1 = max(p["T"] for p in pts)
        s0 = min(p["seconds"] for p in pts if p["T"] == T0)
        for slope, style in ((1, ":"), (2, "--")):
            axes[0].plot([T0, T1], [s0, s0 * (T1 / T0) ** slope], "k" + style, lw=0.8, label=f"∝ T^{slope}")
    for ax, ylab in zip(axes, ("seconds per forward+backward", "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"one block, dim {result['dim']}, batch 1, {result['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None, mode: str = "scaling") -> int:
    """``archlab bench scaling``: time and peak memory of one block per mixer against T."""
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    shared = common_options(threads=False, seed=False, out="runs/bench/scaling",
                            out_help="folder for scaling.json and the plot", verbose=False)
    sp = ArgumentParser(prog=f"archlab bench {mode}", description=plain(__doc__), parents=[shared],
                        epilog="examples:\n  archlab bench scaling\n"
                               "  archlab bench scaling --mixers attention,local --lengths 512,2048,8192")
    sp.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)),
                    help="comma-separated sequence lengths")
    sp.add_argument("--mixers", default=None, help="comma-separated (default: every registered mixer)")
    sp.add_argument("--dim", type=int, default=256, help="model width of the block")
    sp.add_argument("--heads", type=int, default=4, help="attention heads")
    sp.add_argument("--repeats", type=int, default=3, help="timed forward+backward passes per point")
    o = sp.parse_args(argv)
    res = run_scaling(mixers=o.mixers.split(",") if o.mixers else None,
                      lengths=[int(x) for x in o.lengths.split(",")], dim=o.dim, heads=o.heads,
                      repeats=o.repeats, out=o.out)
    print(f"wrote {Path(o.out) / 'scaling.json'} and {res['plot']}")
    return 0
