"""``archlab bench scaling``: forward+backward time and peak memory of one block per
registered token mixer against sequence length, and cached decoding time per token against
the context length, on log-log axes with reference slopes.

Each (mixer, length) point runs in a fresh subprocess: the CPU allocator keeps no peak
statistics, but a new process's peak resident set minus its resident set before the
measurement is the memory that point needed. On CUDA the allocator's peak is used instead.
Decoding: the block's cache is filled with T tokens (one call), then single tokens at
positions T, T + 1, … are timed; the median per token is the point.

A mixer is a kind, optionally with knobs: ``retention:form=parallel:chunk_size=128``. By
default every registered kind runs, retention twice: in its parallel form and as ``auto``
(chunkwise beyond chunk_size = 256 tokens in training, recurrent when decoding).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path
from typing import Any

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
DECODE_STEPS = 64  # timed single-token decoding calls per point (after 4 untimed ones)


def parse_mixer(spec: str) -> dict:
    """``kind[:knob=value]…`` -> the mixer's config mapping (values read as YAML scalars)."""
    import yaml

    kind, *knobs = spec.split(":")
    out: dict[str, Any] = {"kind": kind}
    for kv in knobs:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise ValueError(f"mixer '{spec}': knob '{kv}' is not key=value")
        out[key] = yaml.safe_load(value)
    return out


def default_mixers() -> list[str]:
    from archlab.registry import MIXER

    out = []
    for kind in MIXER.kinds():
        out += ["retention:form=parallel", "retention"] if kind == "retention" else [kind]
    return out


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _measure(mixer: str, T: int, dim: int, heads: int, repeats: int, device: str, q: Any) -> None:
    import torch

    from archlab.config import load_config
    from archlab.models.lm import build_blocks, context_for
    from archlab.registry import POSITION

    try:
        torch.manual_seed(0)
        cfg = load_config(None, [f"model.dim={dim}", f"model.heads={heads}", "model.depth=1",
                                 f"model.layers.default.mixer={json.dumps(parse_mixer(mixer))}",
                                 f"model.max_seq_len={max(T + 2 * DECODE_STEPS, 4096)}"],
                          require_budget=False)  # blocks only: nothing is trained
        pos = POSITION.build(cfg.model.position, context_for(cfg.model))
        block = build_blocks(cfg.model, causal=True, shared_position=pos)[0].to(device)
        x = torch.randn(1, T, dim, device=device, requires_grad=True)
        positions = torch.arange(T, device=device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        base = _rss_mb()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            y = block(x, positions=positions)
            y.square().mean().backward()
            sync()
            if i:  # the first call warms up allocator and kernels
                times.append(time.perf_counter() - t0)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
        steps = []
        with torch.no_grad():
            cache = block.init_cache()
            block(x.detach(), positions=positions, cache=cache)
            tok = torch.randn(1, 1, dim, device=device)
            for i in range(DECODE_STEPS + 4):
                t0 = time.perf_counter()
                block(tok, positions=torch.tensor([T + i], device=device), cache=cache)
                sync()
                if i >= 4:  # the first steps after a long prefill are slower (memory just freed)
                    steps.append(time.perf_counter() - t0)
        q.put({"mixer": mixer, "T": T, "seconds": statistics.median(times), "peak_mb": max(peak, 0.0),
               "decode_ms_per_token": statistics.median(steps) * 1e3})
    except Exception as e:  # reported, not raised: one failing point must not hide the rest
        q.put({"mixer": mixer, "T": T, "error": f"{type(e).__name__}: {e}"})


def decode_growth(result: dict) -> dict[str, float]:
    """Per mixer: decoding time per token at the longest context over the shortest (1: flat)."""
    out = {}
    for mixer in sorted({p["mixer"] for p in result["points"] if "error" not in p}):
        mine = sorted((p for p in result["points"] if p["mixer"] == mixer and "error" not in p), key=lambda p: p["T"])
        if len(mine) > 1:
            out[mixer] = mine[-1]["decode_ms_per_token"] / mine[0]["decode_ms_per_token"]
    return out


def run_scaling(*, mixers: list[str] | None = None, lengths=DEFAULT_LENGTHS, dim: int = 256, heads: int = 4,
                repeats: int = 3, device: str = "cpu", out: str | Path | None = None, log=print) -> dict:
    mixers = mixers or default_mixers()
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
                log(f"{mixer:>24} T={T:>5}: {res['seconds'] * 1e3:9.1f} ms  {res['peak_mb']:8.1f} MB  "
                    f"decode {res['decode_ms_per_token']:6.2f} ms/token")
    result = {"benchmark": "scaling", "dim": dim, "heads": heads, "batch": 1, "device": device,
              "what": "one block (norm + mixer + feed-forward), forward + backward; cached decoding per token "
                      f"after T tokens (median of {DECODE_STEPS})", "points": points}
    result["decode_growth"] = decode_growth(result)
    for mixer, g in result["decode_growth"].items():
        log(f"{mixer:>24}: decoding per token at T={max(lengths)} / at T={min(lengths)} = {g:.2f}")
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

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    pts = [p for p in result["points"] if "error" not in p]
    for mixer in sorted({p["mixer"] for p in pts}):
        mine = sorted((p for p in pts if p["mixer"] == mixer), key=lambda p: p["T"])
        T = [p["T"] for p in mine]
        axes[0].plot(T, [p["seconds"] for p in mine], "o-", label=mixer)
        axes[1].plot(T, [max(p["peak_mb"], 1e-1) for p in mine], "o-", label=mixer)
        if all("decode_ms_per_token" in p for p in mine):
            axes[2].plot(T, [p["decode_ms_per_token"] for p in mine], "o-", label=mixer)
    if pts:
        T0 = min(p["T"] for p in pts)
        T1 = max(p["T"] for p in pts)
        s0 = min(p["seconds"] for p in pts if p["T"] == T0)
        for slope, style in ((1, ":"), (2, "--")):
            axes[0].plot([T0, T1], [s0, s0 * (T1 / T0) ** slope], "k" + style, lw=0.8, label=f"∝ T^{slope}")
    for ax, ylab in zip(axes, ("seconds per forward+backward", "peak memory (MB)", "decoding ms per token")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T" if ylab != "decoding ms per token" else "context length T")
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
    sp.add_argument("--mixers", default=None,
                    help="comma-separated kinds, each optionally with knobs (kind:knob=value:…); default: every "
                         "registered kind, retention as retention:form=parallel and retention (auto)")
    sp.add_argument("--dim", type=int, default=256, help="model width of the block")
    sp.add_argument("--heads", type=int, default=4, help="attention heads")
    sp.add_argument("--repeats", type=int, default=3, help="timed forward+backward passes per point")
    o = sp.parse_args(argv)
    from archlab.config import load_config
    from archlab.registry import ConfigError

    mixers = o.mixers.split(",") if o.mixers else None
    for m in mixers or []:
        try:  # the whole mixer config is validated here, before any point is spent
            load_config(None, [f"model.dim={o.dim}", f"model.heads={o.heads}",
                               f"model.layers.default.mixer={json.dumps(parse_mixer(m))}"], require_budget=False)
        except (ConfigError, ValueError) as e:
            sp.error(f"--mixers: {e}")
    try:
        lengths = [int(x) for x in o.lengths.split(",")]
    except ValueError:
        sp.error(f"--lengths: '{o.lengths}' is not a comma-separated list of integers")
    if any(T < 1 for T in lengths):
        sp.error(f"--lengths: every length must be ≥ 1, got {o.lengths}")
    if o.repeats < 1:
        sp.error(f"--repeats: must be ≥ 1, got {o.repeats}")
    res = run_scaling(mixers=mixers, lengths=lengths, dim=o.dim, heads=o.heads, repeats=o.repeats, out=o.out)
    print(f"wrote {Path(o.out) / 'scaling.json'} and {res['plot']}")
    return 0
