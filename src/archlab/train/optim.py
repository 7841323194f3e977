"""AdamW with decay only on matmul weights, and warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for the weights of linear layers only; none for norms, biases, embeddings
    and positional tables (decaying those pulls them towards zero for no regularising gain).
    A head tied to the embedding counts as an embedding."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_matmul = isinstance(mod, nn.Linear) and name == "weight" and id(p) not in embedding_ids
            (decay if is_matmul else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, tcfg, device: torch.device) -> torch.optim.Optimizer:
    kwargs = {"lr": tcfg.lr, "betas": (tcfg.beta1, tcfg.beta2), "eps": 1e-8}
    # foreach is the fast path on CPU; fused kernels exist on CUDA.
    if device.type == "cuda":
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(param_groups(model, tcfg.weight_decay), **kwargs)


def lr_at(step: int, *, lr: float, warmup: int, total: int | None, min_ratio: float,
          time_fraction: float | None = None) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to lr·min_ratio at the end of
    the budget: step ``total``, or (wall-clock budgets, ``total`` None) the fraction of the
    time budget used.

    A pure function of its arguments, so a resumed run follows the schedule exactly.
    """
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total is not None:
        progress = (step - warmup) / max(1, total - warmup)
    else:
        progress = time_fraction or 0.0
    progress = min(1.0, max(0.0, progress))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
