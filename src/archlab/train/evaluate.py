"""Held-out evaluation: mean NLL over contiguous windows, and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.data import eval_windows


def forward_logits(model: nn.Module, x: torch.Tensor, autocast=None) -> torch.Tensor:
    """The model's logits for ``x``, under the run's autocast context when it has one."""
    if autocast is None:
        return model(x).logits
    with autocast():
        return model(x).logits


@torch.no_grad()
def evaluate(
    model: nn.Module, stream, *, seq_len: int, batch_size: int, max_tokens: int | None = None,
    device: torch.device | str = "cpu", autocast=None,
) -> dict[str, float]:
    """Mean next-token NLL (nats) over the split's contiguous windows (every target once),
    bits per token = nll / ln 2, bits per byte = bits per token / (bytes per token)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in eval_windows(stream, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens):
            x, y = x.to(device), y.to(device)
            logits = forward_logits(model, x, autocast)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                           reduction="sum"))
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation split has no tokens to predict")
    nll = total / count
    bpt = nll / math.log(2)
    bpb = bpt / getattr(stream, "bytes_per_token", 1.0)
    return {"loss": nll, "bits_per_token": bpt, "bpb": bpb, "tokens": count}
