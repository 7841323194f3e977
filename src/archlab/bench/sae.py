"""``archlab bench sae``: sparse-autoencoder training tokens/s, archlab against sae-lens, on the
same activations, interleaved in one process.

Both train the same SAE (d_in → d_sae, TopK with AuxK or ReLU + decoder-weighted L1) on the
same tensor of activations with Adam, each through its own standard step:

- archlab: :func:`~archlab.analysis.sae_train.sae_step` (encode, loss, backward, the
  decoder-row projection, Adam, the renorm, the dead-latent counters);
- sae-lens: ``TrainingSAE.training_forward_pass`` (with the dead-latent mask its trainer keeps,
  so AuxK runs), backward, ``clip_grad_norm_(…, 1.0)`` and Adam, which is what its
  ``SAETrainer`` does per step (its logging, scheduling and tqdm left out).

The activations are a run's, at a site (``--run``, ``--site``), or synthetic ones (sparse
combinations of random unit directions plus noise and an offset). A round runs every
contender for ``--steps`` steps; the reported speed-up is the median over rounds of the
within-round ratio of tokens/s (:func:`~archlab.bench.interleave.paired_ratio`).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from archlab.analysis.sae_train import SAEConfig, build_sae, sae_step
from archlab.bench.harness import ForeignCpu
from archlab.bench.interleave import environment, interleaved, paired_ratio, write_json
from archlab.registry import ConfigError


def synthetic_activations(n: int, d: int, *, directions: int = 2048, active: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(directions, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    idx = torch.randint(0, directions, (n, active), generator=g)
    coef = torch.rand(n, active, generator=g) * 2
    x = torch.einsum("na,nad->nd", coef, dirs[idx])
    return x + 0.05 * torch.randn(n, d, generator=g) + 0.5


def run_activations(run_path: str, site: str, n: int, seed: int = 0) -> torch.Tensor:
    from archlab.analysis.sae_train import ActivationSource
    from archlab.train.run import load_run

    src = ActivationSource(load_run(run_path), site, batch=8, seq_len=0, seed=seed)
    parts, total, step = [], 0, 0
    while total < n:
        a = src.batch(step)[2]
        parts.append(a.reshape(-1, a.shape[-1]))
        total += parts[-1].shape[0]
        step += 1
    return torch.cat(parts)[:n]


def _archlab(acts: torch.Tensor, o: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    cfg = SAEConfig(site="bench", architecture=o.architecture, k=o.k, latents=o.latents)
    sae = build_sae(cfg, acts.shape[1])
    sae.fit_scale(acts[:4096])
    opt = torch.optim.Adam(sae.parameters(), lr=o.lr)
    k_aux = max(1, acts.shape[1] // 2)
    state = {"i": 0}

    def run() -> dict[str, Any]:
        monitor, t0 = ForeignCpu(), time.perf_counter()
        for _ in range(o.steps):
            lo = (state["i"] * o.batch) % (acts.shape[0] - o.batch + 1)
            state["i"] += 1
            sae_step(sae, opt, acts[lo:lo + o.batch], l1=o.l1 if o.architecture == "relu" else None,
                     dead_window=o.dead_steps * o.batch, aux=(k_aux, 1 / 32) if o.architecture == "topk" else None)
        dt = time.perf_counter() - t0
        return {"tokens_per_s": o.steps * o.batch / dt, "foreign_cpu": monitor.fraction()}

    return run


def _sae_lens(acts: torch.Tensor, o: argparse.Namespace) -> tuple[Callable[[], dict[str, Any]] | None, str | None]:
    try:
        import sae_lens
        from sae_lens.saes.sae import TrainStepInput
    except ImportError as e:
        return None, f"sae-lens not installed ({e}); make peer-sae installs it"
    d = acts.shape[1]
    if o.architecture == "topk":
        peer = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(d_in=d, d_sae=o.latents, k=o.k,
                                                                      aux_loss_coefficient=1 / 32))
        coefficients: dict[str, float] = {}
    else:
        peer = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(d_in=d, d_sae=o.latents,
                                                                               l1_coefficient=o.l1))
        coefficients = {"l1": o.l1}
    opt = torch.optim.Adam(peer.parameters(), lr=o.lr, betas=(0.9, 0.999))
    since = torch.zeros(o.latents, dtype=torch.long)
    state = {"i": 0}

    def run() -> dict[str, Any]:
        nonlocal since
        monitor, t0 = ForeignCpu(), time.perf_counter()
        for _ in range(o.steps):
            lo = (state["i"] * o.batch) % (acts.shape[0] - o.batch + 1)
            state["i"] += 1
            out = peer.training_forward_pass(TrainStepInput(
                sae_in=acts[lo:lo + o.batch], coefficients=coefficients, dead_neuron_mask=since > o.dead_steps,
                n_training_steps=state["i"], is_logging_step=False))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)
            opt.step()
            with torch.no_grad():  # what its trainer keeps per step for the dead mask
                since += 1
                since[(out.feature_acts > 0).any(0)] = 0
        dt = time.perf_counter() - t0
        return {"tokens_per_s": o.steps * o.batch / dt, "foreign_cpu": monitor.fraction()}

    return run, None


def parse(argv: list[str], mode: str = "sae") -> argparse.Namespace:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    shared = common_options(rounds=5, max_foreign_cpu=0.5, seed=False, out=None, verbose=False)
    p = ArgumentParser(prog=f"archlab bench {mode}", description=plain(__doc__), parents=[shared],
                       epilog="examples:\n  archlab bench sae\n"
                              "  archlab bench sae --architecture relu --latents 2048\n"
                              "  archlab bench sae --run runs/lm --site blocks.1.out --out runs/bench/sae.json")
    p.add_argument("--run", default=None, help="read the activations from this run (default: synthetic)")
    p.add_argument("--site", default="blocks.1.out", help="the run's site (with --run)")
    p.add_argument("--d-in", type=int, default=128, help="synthetic activations' width")
    p.add_argument("--tokens", type=int, default=65536, help="activations held for the benchmark")
    p.add_argument("--architecture", choices=["topk", "relu"], default="topk")
    p.add_argument("--latents", type=int, default=1024, help="dictionary size")
    p.add_argument("--k", type=int, default=32, help="active latents per token (topk)")
    p.add_argument("--l1", type=float, default=1.0, help="sparsity coefficient (relu)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=4096, help="tokens per step")
    p.add_argument("--steps", type=int, default=20, help="steps per contender per round")
    p.add_argument("--dead-steps", type=int, default=50, help="steps without firing that make a latent dead")
    o = p.parse_args(argv)
    for name in ("d_in", "tokens", "latents", "k", "batch", "steps", "rounds", "dead_steps"):
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be ≥ 1, got {getattr(o, name)}")
    if o.batch > o.tokens:
        raise ConfigError(f"--batch: {o.batch} tokens per step is more than --tokens {o.tokens}")
    if o.k > o.latents:
        raise ConfigError(f"--k: {o.k} active latents of {o.latents}")
    return o


def main(argv: list[str], mode: str = "sae") -> int:
    o = parse(argv, mode)
    if o.threads:
        torch.set_num_threads(o.threads)
    acts = run_activations(o.run, o.site, o.tokens) if o.run else synthetic_activations(o.tokens, o.d_in)
    contenders = {"archlab": _archlab(acts, o)}
    peer, why = _sae_lens(acts, o)
    if peer is not None:
        contenders["sae-lens"] = peer
    for fn in contenders.values():  # warm-up: allocations and the first Adam state
        fn()
    summary = interleaved(contenders, rounds=o.rounds, key="tokens_per_s",
                          max_foreign_cpu=o.max_foreign_cpu if o.max_foreign_cpu >= 0 else None)
    res: dict[str, Any] = {"benchmark": "sae", "settings": vars(o), "d_in": int(acts.shape[1]),
                           "activations": f"run {o.run} at {o.site}" if o.run else "synthetic",
                           "environment": environment(), "summary": summary,
                           "tokens_per_s": {n: r["median"] for n, r in summary["results"].items()}}
    if peer is not None:
        res["speedup_vs_sae_lens"] = paired_ratio(summary, "archlab", "sae-lens")
    else:
        res["peer_missing"] = why
    line = "  ".join(f"{n} {v:,.0f} tok/s" for n, v in res["tokens_per_s"].items())
    ratio = res.get("speedup_vs_sae_lens")
    print(f"sae {o.architecture} d_in {acts.shape[1]} latents {o.latents}: {line}"
          + (f"  archlab/sae-lens ×{ratio:.2f}" if ratio is not None and math.isfinite(ratio) else f"  ({why})"))
    if o.out:
        print(f"wrote {write_json(Path(o.out), res)}")
    return 0
