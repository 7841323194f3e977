"""Side-by-side comparisons built on the primitives in :mod:`archlab.bench.harness`:
alternating contenders round by round (:func:`interleaved`), ratios against the best peer,
and the JSON-ready results of ``archlab bench train|generate``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archlab.atomic import write_text_atomic
from archlab.bench.harness import (
    REFERENCE_SHAPE,
    ReferenceShape,
    TrainBench,
    _default_optimizer,
    _median,
    bench_generate,
    measure_matmul_peak,
    mfu,
    next_token_loss,
)
from archlab.environment import benchmark_environment as environment
from archlab.models.counting import train_flops_per_token


# ---------------------------------------------------------------------------------------------
# Interleaving and comparison


def interleaved(
    runs: Mapping[str, Callable[[], Any]],
    rounds: int = 3,
    *,
    key: str | Mapping[str, str] = "tokens_per_s",
    rotate: bool = True,
    probe: Callable[[], float] | None = None,
    probe_keep: float = 0.0,
    max_foreign_cpu: float | None = None,
    on_result: Callable[[int, str, Any], None] | None = None,
) -> dict[str, Any]:
    """Run contenders alternately, ``rounds`` times each, and report per-contender medians.

    Each callable takes no argument and returns either a number or a dict holding ``key``
    (one key for all, or a ``{name: key}`` mapping when contenders report different
    quantities). Within a round each contender runs once; with ``rotate`` the starting contender moves by
    one each round (A B, B A, ...) so that neither always runs right after the other's
    allocations or always first after a quiet period. Slow drifts of the machine therefore
    hit all contenders alike, and the median over rounds ignores a single disturbed round.

    ``probe`` (optional, e.g. a short :func:`measure_matmul_peak`) measures how fast the
    machine is right now; it runs before the first round and after every round. A round's
    speed is the lower of the probes around it, and rounds slower than ``probe_keep`` × the
    fastest probe are left out of the medians (their values stay in ``values``). On a VM
    whose neighbours sometimes take most of the cores, this keeps a comparison from mixing
    quiet and contended periods; ``probe_keep=0`` keeps everything. Independently, with
    ``max_foreign_cpu`` set, a round is left out when any contender's result reports a
    ``foreign_cpu`` (see :class:`ForeignCpu`) above it. If no round survives the filters,
    all rounds are used (and ``kept_rounds`` says so) rather than reporting nothing.

    Returns ``{"order": [names in run order], "rounds", "key", "probe": [per-round speed],
    "kept_rounds": [indices], "results": {name: {"values": [...], "median": m,
    "runs": [raw results]}}}``; ``median`` is over kept rounds.
    """
    names = list(runs)
    if not names:
        raise ValueError("interleaved() needs at least one contender")
    order: list[str] = []
    results: dict[str, dict[str, Any]] = {n: {"values": [], "runs": []} for n in names}
    probes = [float(probe())] if probe is not None else []
    round_speed: list[float] = []
    for r in range(rounds):
        shift = r % len(names) if rotate else 0
        for name in names[shift:] + names[:shift]:
            raw = runs[name]()
            k = key if isinstance(key, str) else key[name]
            value = raw[k] if isinstance(raw, Mapping) else raw
            results[name]["values"].append(float(value))
            results[name]["runs"].append(raw)
            order.append(name)
            if on_result is not None:
                on_result(r, name, raw)
        if probe is not None:
            probes.append(float(probe()))
            round_speed.append(min(probes[-2], probes[-1]))
    kept = list(range(rounds))
    if round_speed and probe_keep > 0:
        best = max(round_speed)
        kept = [r for r in kept if round_speed[r] >= probe_keep * best]
    if max_foreign_cpu is not None:
        def foreign(raw: Any) -> float:
            v = raw.get("foreign_cpu") if isinstance(raw, Mapping) else None
            return 0.0 if v is None else float(v)

        kept = [r for r in kept if all(foreign(results[n]["runs"][r]) <= max_foreign_cpu for n in names)]
    if not kept:
        kept = list(range(rounds))
    for rec in results.values():
        rec["median"] = _median(rec["values"][r] for r in kept)
    return {
        "order": order, "rounds": rounds, "key": key if isinstance(key, str) else dict(key),
        "probes": probes, "probe": round_speed, "kept_rounds": kept, "results": results,
    }


def ratio(summary: Mapping[str, Any], numerator: str, denominator: str) -> float:
    """``median(numerator) / median(denominator)`` from an :func:`interleaved` summary."""
    res = summary["results"]
    den = res[denominator]["median"]
    return res[numerator]["median"] / den if den else float("nan")


def paired_ratio(summary: Mapping[str, Any], numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio ``numerator[r] / denominator[r]``.

    Within a round the two contenders ran back to back, so a slow period of a shared machine
    (which can last several seconds and slow everything several-fold) mostly cancels in the
    per-round ratio; this is the more robust of the two ratios when the machine is noisy.
    """
    res = summary["results"]
    kept = summary.get("kept_rounds", range(len(res[denominator]["values"])))
    num, den = res[numerator]["values"], res[denominator]["values"]
    return _median(num[r] / den[r] for r in kept if den[r])


# ---------------------------------------------------------------------------------------------
# Side-by-side comparisons


@dataclass
class Contender:
    """One model in a comparison, with what the harness needs to drive it.

    ``name`` starting with ``"peer"`` marks a reference implementation: ratios are reported
    against the best peer. ``n_params_nonembedding`` follows :func:`train_flops_per_token`
    (blocks only: no embedding table, no LM head); ``None`` skips MFU. ``info`` is free-form
    and lands in the JSON (configuration, what was compiled, ...).
    """

    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = next_token_loss
    generate_fn: Callable[[torch.Tensor, int], Any] | None = None
    n_params_nonembedding: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _peak_from(summary: Mapping[str, Any]) -> float:
    """Median matmul peak over the probes that bracket the kept rounds."""
    probes = summary.get("probes") or []
    idx = sorted({i for r in summary.get("kept_rounds", []) for i in (r, r + 1) if i < len(probes)})
    return _median(probes[i] for i in idx) if idx else _median(probes)


def compare_train(
    contenders: list[Contender],
    shape: ReferenceShape = REFERENCE_SHAPE,
    *,
    rounds: int = 10,
    steps_per_round: int = 2,
    warmup: int = 3,
    optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = _default_optimizer,
    max_foreign_cpu: float | None = 0.15,
    peak_probe: Callable[[], float] | None = None,
    on_result: Callable[[int, str, Any], None] | None = None,
) -> dict[str, Any]:
    """Training tokens/s and MFU of each contender, interleaved, with ratios to the best peer.

    Every contender gets its own :class:`TrainBench` (same batch pool seed, same optimizer
    settings), is warmed up (the time is reported as ``warmup_s``; for a compiled model it is
    mostly compilation), then the contenders alternate ``steps_per_round`` steps at a time
    for ``rounds`` rounds. The matmul peak is re-measured between rounds so that MFU uses the
    machine's speed at the time of the measurement. Rounds during which other processes used
    more than ``max_foreign_cpu`` of the machine are left out of the medians.
    """
    probe = peak_probe or (lambda: measure_matmul_peak(n=1024, seconds=0.15, repeats=3))
    benches: dict[str, TrainBench] = {}
    warm_s: dict[str, float] = {}
    for c in contenders:
        tb = TrainBench(
            c.model, loss_fn=c.loss_fn, batch_size=shape.batch_size, seq_len=shape.seq_len,
            vocab_size=shape.vocab, optimizer_factory=optimizer_factory,
        )
        t0 = time.perf_counter()
        tb.warmup(warmup)
        warm_s[c.name] = time.perf_counter() - t0
        benches[c.name] = tb
    runs = {name: (lambda tb=tb: tb.run(steps_per_round)) for name, tb in benches.items()}
    summary = interleaved(runs, rounds, probe=probe, max_foreign_cpu=max_foreign_cpu, on_result=on_result)
    peak = _peak_from(summary)
    per: dict[str, Any] = {}
    for c in contenders:
        rec = summary["results"][c.name]
        fpt = (
            train_flops_per_token(c.n_params_nonembedding, shape.depth, shape.dim, shape.seq_len, shape.vocab)
            if c.n_params_nonembedding is not None else None
        )
        per[c.name] = {
            "tokens_per_s": rec["median"],
            "values": rec["values"],
            "mfu": mfu(rec["median"], fpt, peak) if fpt is not None else None,
            "flops_per_token": fpt,
            "n_params_nonembedding": c.n_params_nonembedding,
            "n_params": sum(p.numel() for p in c.model.parameters()),
            "warmup_s": warm_s[c.name],
            "final_loss": benches[c.name].last_loss,
            "info": c.info,
        }
    return {
        "kind": "train",
        "shape": shape.to_dict(),
        "steps_per_round": steps_per_round,
        "warmup": warmup,
        "peak_gflops": peak,
        "flops_convention": "6*(N_blocks + V*d) + 12*L*T*d (PaLM; causal mask not discounted)",
        "contenders": per,
        "comparison": summarize(summary),
        "interleaving": {k: summary[k] for k in ("order", "rounds", "kept_rounds", "probes")},
        "foreign_cpu": {n: [r.get("foreign_cpu") for r in rec["runs"]] for n, rec in summary["results"].items()},
        "environment": environment(),
    }


def compare_generate(
    contenders: list[Contender],
    shape: ReferenceShape = REFERENCE_SHAPE,
    *,
    rounds: int = 5,
    warmup: int = 1,
    max_foreign_cpu: float | None = 0.15,
    on_result: Callable[[int, str, Any], None] | None = None,
) -> dict[str, Any]:
    """Batch-1 cached-decoding tokens/s of each contender (those with a ``generate_fn``),
    one full generation per contender per round, interleaved; ratios to the best peer."""
    usable = [c for c in contenders if c.generate_fn is not None]
    if not usable:
        raise ValueError("no contender has a generate_fn")
    for c in usable:  # warm-up outside the rounds: lazy init, compilation
        bench_generate(c.generate_fn, prompt_len=shape.prompt_len, new_tokens=8, repeats=1,
                       warmup=warmup, vocab_size=shape.vocab)
    runs = {
        c.name: (lambda c=c: bench_generate(c.generate_fn, prompt_len=shape.prompt_len,
                                            new_tokens=shape.new_tokens, repeats=1, warmup=0,
                                            vocab_size=shape.vocab))
        for c in usable
    }
    summary = interleaved(runs, rounds, max_foreign_cpu=max_foreign_cpu, on_result=on_result)
    per = {
        c.name: {
            "tokens_per_s": summary["results"][c.name]["median"],
            "ms_per_token": 1e3 / summary["results"][c.name]["median"],
            "values": summary["results"][c.name]["values"],
            "returned_len": summary["results"][c.name]["runs"][-1].get("returned_len"),
            "info": c.info,
        }
        for c in usable
    }
    return {
        "kind": "generate",
        "shape": shape.to_dict(),
        "contenders": per,
        "comparison": summarize(summary),
        "interleaving": {k: summary[k] for k in ("order", "rounds", "kept_rounds")},
        "foreign_cpu": {n: [r.get("foreign_cpu") for r in rec["runs"]] for n, rec in summary["results"].items()},
        "environment": environment(),
    }


# ---------------------------------------------------------------------------------------------
# Environment and output


def summarize(summary: Mapping[str, Any], baseline: str | None = None) -> dict[str, Any]:
    """Compact ``{name: median}`` plus each other contender's ratio to ``baseline``.

    ``ratios`` divides medians (:func:`ratio`); ``paired_ratios`` takes the median of per-round
    ratios (:func:`paired_ratio`), which is steadier on a noisy machine.

    With no ``baseline`` given, the best (highest-median) contender whose name starts with
    ``"peer"`` is used, so "ours" is always compared with the peer's best variant.
    """
    res = summary["results"]
    medians = {n: r["median"] for n, r in res.items()}
    if baseline is None:
        peers = [n for n in medians if n.startswith("peer")]
        baseline = max(peers, key=lambda n: medians[n]) if peers else None
    out: dict[str, Any] = {"medians": medians, "baseline": baseline, "ratios": {}, "paired_ratios": {}}
    if baseline is not None:
        for n in medians:
            if n != baseline:
                out["ratios"][n] = ratio(summary, n, baseline)
                out["paired_ratios"][n] = paired_ratio(summary, n, baseline)
    return out


def _jsonable(obj: Any) -> Any:
    """Recursively turn tensors/paths/dataclasses into JSON types; NaN/inf become ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    return str(obj)


def write_json(path: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Write ``result`` as indented JSON, atomically (creating parent folders); return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(p, json.dumps(_jsonable(result), indent=2, sort_keys=False) + "\n")
    return p
