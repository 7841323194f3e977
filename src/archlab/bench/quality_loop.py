"""The one training loop of ``archlab bench quality``: the contenders' models (archlab's and
x-transformers'), the schedules and samplers a loop can use, the loop itself and the exact
bits-per-byte evaluation. Every contender goes through these same functions, so the models
are the only difference (see :mod:`archlab.bench.quality`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archlab.bench import peers


# ---------------------------------------------------------------------------------------------
# Models


def build_archlab(cfg) -> tuple[nn.Module, Callable]:
    from archlab.models import build_model

    model = build_model(cfg.model)

    def forward(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = m(x, targets=y)  # nll plus any weighted auxiliary term the variant trains with
        return out.loss

    return model, forward


def build_peer(cfg, overrides: dict[str, Any]) -> tuple[nn.Module, Callable]:
    m, t = cfg.model, cfg.train
    # attn_flash: x-transformers' default attention is the same function computed explicitly;
    # SDPA gives the same result faster (its own switch), so the budget buys the same model.
    kw = {"attn_flash": True, "tie_embedding": False, **overrides}
    model = peers.xtransformers_lm(vocab=m.vocab_size, dim=m.dim, depth=m.depth, heads=m.heads,
                                   seq_len=t.seq_len, **kw)

    def forward(mod: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = mod(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return model, forward


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------
# The shared loop


def lr_multiplied(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Warmup ramp × one cosine over the whole run (to lr·min_ratio at ``total``)."""
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = min(1.0, step / max(1, total))
    return lr * ramp * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def schedule_fn(kind: str, tcfg, total: int, lr: float) -> Callable[[int], float]:
    from archlab.train.optim import lr_at

    if kind == "archlab":
        return lambda s: lr_at(s, lr=lr, warmup=tcfg.warmup, total=total, min_ratio=tcfg.min_lr_ratio)
    if kind == "multiplied":
        return lambda s: lr_multiplied(s, lr=lr, warmup=tcfg.warmup, total=total, min_ratio=tcfg.min_lr_ratio)
    return lambda s: lr


def sampler_fn(kind: str, train_stream, *, seq_len: int, batch: int, seed: int) -> Callable[[int], tuple]:
    """``batch(step) -> (x, y)``; the same for every contender of a seed."""
    from archlab.data.stream import WindowSampler

    if kind == "archlab":
        return WindowSampler(train_stream, seq_len=seq_len, batch_size=batch, seed=seed).batch
    tokens = np.asarray(train_stream.tokens if hasattr(train_stream, "tokens") else train_stream)
    gen = torch.Generator().manual_seed(seed)
    offsets = np.arange(seq_len + 1)

    def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:  # stateful: call once per step, in order
        starts = torch.randint(0, len(tokens) - seq_len, (batch,), generator=gen).numpy()
        win = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64))
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()

    return draw


def train_loop(model: nn.Module, forward: Callable, batch: Callable[[int], tuple], *, steps: int,
               lr: Callable[[int], float], weight_decay: float, betas: tuple[float, float], grad_clip: float,
               optimizer: str = "adamw", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``steps`` optimiser steps; returns the training-loss trace and the time spent."""
    from archlab.train.optim import param_groups

    groups = param_groups(model, weight_decay)
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(groups, lr=lr(0), betas=betas, eps=1e-8, foreach=True)
    clip = grad_clip if grad_clip > 0 else math.inf
    params = [p for g in groups for p in g["params"]]
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr(step)
        x, y = batch(step)
        loss = forward(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, steps // 10) == 0:
            log(f"  step {step + 1}/{steps} loss {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "losses": losses}


def evaluate_bpb(model: nn.Module, data: dict, *, seq_len: int, batch_size: int,
                 max_tokens: int | None) -> dict[str, float]:
    """archlab's evaluation (:func:`archlab.train.evaluate.evaluate`): every target of the
    validation split (or its first ``max_tokens``) in non-overlapping windows, float64 sums,
    divided by the UTF-8 bytes of exactly the scored targets."""
    from archlab.train.evaluate import evaluate

    return evaluate(model, data["validation"], seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens,
                    token_bytes=data["lengths"])
