"""Model-agnostic throughput harness: training tokens/s, MFU and cached-decoding tokens/s.

Principles (why the harness looks the way it does):

* Absolute numbers on a shared CPU are noisy (frequency scaling, neighbours, the OS), so the
  headline result is always a *ratio* against a peer measured in the same process, with the
  contenders run alternately (:func:`interleaved`) so that a slow patch of the machine hits
  both of them. Unit tests never assert on timings.
* MFU is reported against the fp32 matmul throughput *measured in the same process*
  (:func:`measure_matmul_peak`), not against a datasheet number: on a 2-core VM the datasheet
  peak is unreachable and would make every model look equally bad.
* Everything returned is a plain JSON-serialisable ``dict`` so that a run can be written with
  :func:`write_json` and compared later.

Nothing here knows about archlab's own model classes; a contender is a ``nn.Module`` plus a
loss function (training) or a ``generate_fn`` (decoding).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from archlab.train.runtime import peak_memory_mb

__all__ = [
    "ReferenceShape",
    "REFERENCE_SHAPE",
    "measure_matmul_peak",
    "next_token_loss",
    "TrainBench",
    "ForeignCpu",
    "bench_train_step",
    "bench_generate",
    "mfu",
]


# ---------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class ReferenceShape:
    """The shape every contender is built with, so comparisons are like for like."""

    vocab: int = 256  # byte-level vocabulary
    dim: int = 256
    depth: int = 4
    heads: int = 4
    seq_len: int = 256
    batch_size: int = 16
    # Cached generation: batch 1, a short prompt, then ``new_tokens`` decoded one at a time.
    prompt_len: int = 16
    new_tokens: int = 512

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


#: The shape named in the foundation issue (byte vocab, dim 256, depth 4, heads 4, seq 256,
#: batch 16, RoPE; generation batch 1 with 512 new tokens).
REFERENCE_SHAPE = ReferenceShape()


# ---------------------------------------------------------------------------------------------
# Small utilities


def _sync(device: torch.device) -> None:
    """Wait for queued device work so wall-clock timings cover the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: Iterable[float]) -> float:
    vals = list(values)
    return float(statistics.median(vals)) if vals else float("nan")


def _stats(values: list[float]) -> dict[str, float]:
    """Order statistics of a sample; the median is the headline, the spread shows the noise."""
    if not values:
        return {"n": 0}
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:  # nearest-rank quantile; no interpolation needed for a report
        return s[min(n - 1, max(0, round(p * (n - 1))))]

    return {
        "n": n,
        "median": float(statistics.median(s)),
        "mean": float(statistics.fmean(s)),
        "min": s[0],
        "max": s[-1],
        "p10": q(0.10),
        "p90": q(0.90),
        "stdev": float(statistics.stdev(s)) if n > 1 else 0.0,
    }


class ForeignCpu:
    """How much CPU *other* processes used while a measurement ran (Linux; else ``None``).

    Reads the system-wide busy time from ``/proc/stat`` (steal included) and subtracts this
    process's own CPU time. The result is a fraction of the machine's total capacity over the
    interval: 0 means the contenders had the cores to themselves; 0.5 on 2 cores means
    someone else kept a whole core busy. On a shared box this is the most direct sign that a
    number is contaminated, and :func:`interleaved` can drop such rounds.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields)) / hz
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system

    def fraction(self) -> float | None:
        """Foreign CPU use since construction, as a fraction of all cores (clamped to [0, 1])."""
        end = self._snapshot()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        if wall <= 0:
            return None
        foreign = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1))))


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _logits_of(out: Any) -> torch.Tensor:
    """Accept either bare logits or an output object/tuple carrying them.

    Models differ in what ``forward`` returns (a tensor, a dataclass with ``.logits``, a
    tuple whose first element is the logits); the harness should not care.
    """
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find logits in model output of type {type(out).__name__}")


# ---------------------------------------------------------------------------------------------
# Matmul peak


def measure_matmul_peak(
    dtype: torch.dtype = torch.float32,
    n: int = 1024,
    seconds: float = 0.25,
    repeats: int = 5,
    device: str | torch.device = "cpu",
) -> float:
    """Measured square-GEMM throughput in GFLOP/s (median of ``repeats`` timed windows).

    Each window runs ``C = A @ B`` (``n × n``, ``2·n³`` FLOPs) into a preallocated output for
    about ``seconds``; the median over windows discards the odd window in which the machine was
    busy elsewhere. This is the denominator of MFU: "what this process could get from the
    matmul library right now", which is the fair ceiling for a model made mostly of matmuls.
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    flops = 2.0 * n**3
    for _ in range(3):  # warm caches, let the BLAS spin up its threads
        torch.mm(a, b, out=c)
    _sync(device)
    rates = []
    for _ in range(max(1, repeats)):
        calls = 0
        t0 = time.perf_counter()
        while True:
            torch.mm(a, b, out=c)
            calls += 1
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        rates.append(flops * calls / dt / 1e9)
    return _median(rates)


def mfu(tokens_per_s: float, flops_per_token: float, peak_gflops: float) -> float:
    """Model FLOPs utilisation: achieved useful FLOP/s as a fraction of the measured peak."""
    if peak_gflops <= 0 or not math.isfinite(peak_gflops):
        return float("nan")
    return tokens_per_s * flops_per_token / (peak_gflops * 1e9)


# ---------------------------------------------------------------------------------------------
# Training throughput


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``tokens`` (``B × (T+1)``).

    The model sees ``tokens[:, :-1]`` and is scored on ``tokens[:, 1:]``. Logits are flattened
    to a ``(B·T, V)`` view so ``cross_entropy`` takes its fast 2-D path without a transpose.
    """
    logits = _logits_of(model(tokens[:, :-1]))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def _default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    # foreach=True: one multi-tensor kernel per op instead of a Python loop over parameters;
    # the same setting is used for every contender so the optimizer is not what is compared.
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)


class TrainBench:
    """A model, its optimizer and a pool of random batches, ready to time training steps.

    Building the optimizer and warming up happen once; :meth:`run` can then be called many
    times for a few steps each. That is what makes fine-grained interleaving cheap: two
    contenders can alternate every step or two, so that a slow spell of a shared machine
    (which can last seconds) lands on both instead of on whichever happened to be running.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = next_token_loss,
        batch_size: int,
        seq_len: int,
        vocab_size: int,
        optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = _default_optimizer,
        device: str | torch.device | None = None,
        seed: int = 0,
        n_batches: int = 4,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = torch.device(device) if device is not None else _model_device(model)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # A small pool, cycled: generated before any timing so the clock sees model work only,
        # and varied so no cache holds "the" batch.
        self.batches = [
            torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=gen).to(self.device)
            for _ in range(max(1, n_batches))
        ]
        self.optimizer = optimizer_factory(model.parameters())
        self.steps_done = 0
        self.last_loss = float("nan")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def step(self) -> float:
        """One full training step (forward, backward, optimizer); returns its wall time (s)."""
        tokens = self.batches[self.steps_done % len(self.batches)]
        self.model.train()
        _sync(self.device)
        t0 = time.perf_counter()
        loss = self.loss_fn(self.model, tokens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        _sync(self.device)
        dt = time.perf_counter() - t0
        self.steps_done += 1
        self.last_loss = float(loss.detach())
        return dt

    def warmup(self, steps: int) -> TrainBench:
        """Untimed steps: allocator growth, lazy optimizer state, compilation."""
        for _ in range(steps):
            self.step()
        return self

    def run(self, steps: int) -> dict[str, Any]:
        """Time ``steps`` steps; ``tokens_per_s`` is tokens per step / median step time."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        monitor = ForeignCpu()
        times = [self.step() for _ in range(max(1, steps))]
        stats = _stats(times)
        result: dict[str, Any] = {
            "tokens_per_s": self.tokens_per_step / stats["median"],
            "tokens_per_step": self.tokens_per_step,
            "step_time_s": stats,
            "steps": len(times),
            "final_loss": self.last_loss,
            "device": str(self.device),
            "peak_rss_mb": peak_memory_mb(torch.device("cpu")),
            "foreign_cpu": monitor.fraction(),
        }
        if self.device.type == "cuda":
            result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return result


def bench_train_step(
    model: nn.Module,
    *,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = next_token_loss,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    steps: int = 10,
    warmup: int = 3,
    optimizer_factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] = _default_optimizer,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time full training steps (forward + backward + optimizer step) on random tokens.

    ``loss_fn(model, tokens)`` receives a ``batch_size × (seq_len + 1)`` LongTensor (inputs
    plus the shifted targets) and returns a scalar loss; the default is
    :func:`next_token_loss`. Batches are generated before timing starts so the clock only
    sees model work. The first ``warmup`` steps (allocator growth, lazy optimizer state,
    compilation) are run but not counted. For side-by-side comparisons on a noisy machine
    prefer :class:`TrainBench` with :func:`interleaved`, which alternates at step granularity.

    Returns a dict with ``tokens_per_s`` (median over steps), ``step_time_s`` statistics,
    ``final_loss``, ``peak_rss_mb`` and, on CUDA, ``cuda_peak_mb``.
    """
    tb = TrainBench(
        model, loss_fn=loss_fn, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
        optimizer_factory=optimizer_factory, device=device, seed=seed,
    )
    tb.warmup(warmup)
    result = tb.run(steps)
    result["warmup"] = warmup
    # Drop gradients and optimizer state now so the next contender starts from a clean heap.
    tb.optimizer.zero_grad(set_to_none=True)
    del tb
    return result


# ---------------------------------------------------------------------------------------------
# Generation throughput


def bench_generate(
    generate_fn: Callable[[torch.Tensor, int], Any],
    *,
    prompt_len: int,
    new_tokens: int,
    repeats: int = 3,
    warmup: int = 1,
    vocab_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Tokens/s of batch-1 cached decoding.

    ``generate_fn(prompt, new_tokens)`` gets a ``1 × prompt_len`` LongTensor and must decode
    exactly ``new_tokens`` tokens (greedy is recommended so contenders do the same work).
    The timed region is the whole call, prefill included: with a short prompt the prefill is
    a small fraction, and it is part of what a user waits for. ``warmup`` calls with a short
    generation are made first (lazy initialisation, compilation). Gradients are disabled.

    Returns ``tokens_per_s`` (``new_tokens`` / median call time), ``ms_per_token`` and the
    call-time statistics.
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (1, prompt_len), generator=gen).to(device)
    times: list[float] = []
    produced: int | None = None
    with torch.inference_mode():
        for _ in range(warmup):
            generate_fn(prompt, min(new_tokens, 8))
        monitor = ForeignCpu()
        for _ in range(max(1, repeats)):
            _sync(device)
            t0 = time.perf_counter()
            out = generate_fn(prompt, new_tokens)
            _sync(device)
            times.append(time.perf_counter() - t0)
            if isinstance(out, torch.Tensor):
                produced = int(out.shape[-1])
    call = _stats(times)
    return {
        "tokens_per_s": new_tokens / call["median"],
        "ms_per_token": 1e3 * call["median"] / new_tokens,
        "call_time_s": call,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        # Shape of what generate_fn returned (last dim), to catch a contender that stops early
        # or returns prompt + continuation; None when it returned something other than a tensor.
        "returned_len": produced,
        "repeats": repeats,
        "device": str(device),
        "peak_rss_mb": peak_memory_mb(torch.device("cpu")),
        "foreign_cpu": monitor.fraction(),
    }
