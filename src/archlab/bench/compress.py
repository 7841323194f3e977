"""``archlab bench compress``: lossless weight compression, archlab's byte-plane codec against
the ``zipnn`` package and plain ``zstandard`` (level 3) of the same bytes, side by side in one
process.

Inputs, each a set of tensors:

- a trained run's weights (``--run``), as stored (fp32) and cast to bf16 and fp16;
- the same model at its initialisation (``model.init`` of the run's config), fp32 and bf16;
- with ``--with-optimizer``, the whole checkpoint (weights, Adam's moments, the RNG).

For each input and codec: the compression ratio (compressed bytes / raw bytes; lower is
better) and compress / decompress MB/s of raw bytes (median over ``--rounds``, the codecs
alternating within a round). Every decompression is checked bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from archlab.bench.interleave import environment, interleaved, write_json
from archlab.codec import decode_tensor, encode_tensor, entropy_coder
from archlab.registry import ConfigError
from archlab.train.checkpoint import DTYPE_NAMES

def _items(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> list[tuple[str, str, bytes, int]]:
    out = []
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        name_dtype = DTYPE_NAMES.get(t.dtype)
        if name_dtype is None or not t.numel():
            continue
        out.append((name, name_dtype, t.reshape(-1).view(torch.uint8).numpy().tobytes(), t.numel()))
    return out


def _codecs(levels: int) -> dict[str, tuple[Callable, Callable]]:
    import zstandard

    z3, zd, ent = zstandard.ZstdCompressor(level=levels), zstandard.ZstdDecompressor(), entropy_coder()
    codecs = {
        "archlab": (lambda raw, dt: encode_tensor(raw, dt, zstd=z3, entropy=ent),
                    lambda enc, dt, n, size: decode_tensor(enc, dt, n, zstd=zd)),
        "zstd": (lambda raw, dt: z3.compress(raw), lambda enc, dt, n, size: zd.decompress(enc, max_output_size=size)),
    }
    try:
        from zipnn import ZipNN
    except ImportError:
        return codecs
    fmt = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    znn = {k: ZipNN(input_format="byte", bytearray_dtype=v, threads=torch.get_num_threads()) for k, v in fmt.items()}

    def zip_c(raw: bytes, dt: str) -> Any:
        return znn[dt].compress(bytearray(raw)) if dt in znn else z3.compress(raw)  # zipnn changes its input

    def zip_d(enc: Any, dt: str, n: int, size: int) -> bytes:
        return bytes(znn[dt].decompress(enc)) if dt in znn else zd.decompress(enc, max_output_size=size)

    codecs["zipnn"] = (zip_c, zip_d)
    return codecs


def _size(enc: Any) -> int:
    return sum(len(b) for _, b in enc) if isinstance(enc, list) else len(enc)


def _contender(items: list, compress: Callable, decompress: Callable) -> Callable[[], dict[str, Any]]:
    raw_total = sum(len(r) for _, _, r, _ in items)

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        encs = [compress(raw, dt) for _, dt, raw, _ in items]
        t1 = time.perf_counter()
        outs = [decompress(e, dt, n, len(raw)) for e, (_, dt, raw, n) in zip(encs, items)]
        t2 = time.perf_counter()
        if any(bytes(o) != raw for o, (_, _, raw, _) in zip(outs, items)):
            raise RuntimeError("a codec did not return the same bytes")  # a bug, not a measurement
        return {"ratio": sum(_size(e) for e in encs) / raw_total, "compress_mb_s": raw_total / (t1 - t0) / 1e6,
                "decompress_mb_s": raw_total / (t2 - t1) / 1e6}

    return run


def main(argv: list[str], mode: str = "compress") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    shared = common_options(rounds=3, max_foreign_cpu=None, seed=False, out=None, verbose=False)
    p = ArgumentParser(prog=f"archlab bench {mode}", description=plain(__doc__), parents=[shared],
                       epilog="examples:\n  archlab bench compress --run runs/lm\n"
                              "  archlab bench compress --run runs/lm --with-optimizer --out runs/bench/compress.json")
    p.add_argument("--run", required=True, help="a trained run (its checkpoint and config)")
    p.add_argument("--with-optimizer", action="store_true", help="also the whole checkpoint, optimiser included")
    p.add_argument("--level", type=int, default=3, help="zstd level of the plain-zstd contender and integer planes")
    o = p.parse_args(argv)
    if o.rounds < 1:
        raise ConfigError(f"--rounds: must be ≥ 1, got {o.rounds}")
    if o.threads:
        torch.set_num_threads(o.threads)
    from archlab.models import build_model
    from archlab.train.checkpoint import read_checkpoint
    from archlab.train.run import load_run, resolve_checkpoint

    run = load_run(o.run)
    trained = {k: v for k, v in run.model.state_dict().items()}
    torch.manual_seed(0)
    init = build_model(run.cfg.model).state_dict()
    inputs: dict[str, list] = {
        "trained fp32": _items(trained), "trained bf16": _items(trained, torch.bfloat16),
        "trained fp16": _items(trained, torch.float16), "init fp32": _items(init), "init bf16": _items(init, torch.bfloat16),
    }
    if o.with_optimizer:
        tensors, _ = read_checkpoint(resolve_checkpoint(o.run))
        inputs["checkpoint (weights + Adam + RNG)"] = _items(tensors)
    codecs = _codecs(o.level)
    res: dict[str, Any] = {"benchmark": "compress", "run": str(o.run), "settings": vars(o),
                           "codecs": list(codecs), "environment": environment(), "inputs": {}}
    for name, items in inputs.items():
        runs = {c: _contender(items, *fns) for c, fns in codecs.items()}
        summary = interleaved(runs, rounds=o.rounds, key="compress_mb_s")
        row: dict[str, Any] = {"raw_mb": sum(len(r) for _, _, r, _ in items) / 1e6,
                               "dtypes": sorted({dt for _, dt, _, _ in items})}
        for c in codecs:
            rr = summary["results"][c]["runs"]
            row[c] = {"ratio": rr[0]["ratio"],
                      "compress_mb_s": float(np.median([r["compress_mb_s"] for r in rr])),
                      "decompress_mb_s": float(np.median([r["decompress_mb_s"] for r in rr]))}
        a = row["archlab"]["ratio"]
        row["zstd_ratio_over_archlab"] = row["zstd"]["ratio"] / a
        if "zipnn" in row:
            row["archlab_ratio_over_zipnn"] = a / row["zipnn"]["ratio"]
        res["inputs"][name] = row
        line = "  ".join(f"{c} {row[c]['ratio']:.4f} ({row[c]['compress_mb_s']:.0f}/{row[c]['decompress_mb_s']:.0f} MB/s)"
                         for c in codecs)
        print(f"{name:<36} {row['raw_mb']:7.1f} MB  {line}")
    if "zipnn" not in codecs:
        res["peer_missing"] = "zipnn not installed (pip install zipnn: builds from source, needs a C compiler)"
        print(res["peer_missing"])
    if o.out:
        print(f"wrote {write_json(Path(o.out), res)}")
    return 0


__all__ = ["main"]
