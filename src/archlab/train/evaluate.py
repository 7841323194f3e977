"""Held-out evaluation: mean NLL over contiguous windows, and bits per byte."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from archlab.data import count_eval_targets, eval_windows


@contextlib.contextmanager
def progress_bar(enabled: bool, *, total: int, unit: str, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr when ``enabled`` and stderr is a terminal, else None: redirected into
    a log file a bar is only a long line of carriage returns, and the caller reports the result."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        yield bar
    finally:
        bar.close()


def forward_logits(model: nn.Module, x: torch.Tensor, autocast=None) -> torch.Tensor:
    """The model's logits for ``x``, under the run's autocast context when it has one."""
    if autocast is None:
        return model(x).logits
    with autocast():
        return model(x).logits


@torch.no_grad()
def evaluate(
    model: nn.Module, stream, *, seq_len: int, batch_size: int, max_tokens: int | None = None,
    device: torch.device | str = "cpu", autocast=None, progress: bool = False,
) -> dict[str, float]:
    """Mean next-token NLL (nats) over the split's contiguous windows (every target once),
    bits per token = nll / ln 2, bits per byte = bits per token / (bytes per token).

    ``progress``: a bar over the targets on a terminal (``archlab eval`` of a large split);
    off by default so the trainer's periodic evaluations stay quiet."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n_targets = count_eval_targets(stream, max_tokens=max_tokens)
    try:
        with progress_bar(progress, total=n_targets, unit="tok", desc="eval") as bar:
            for x, y in eval_windows(stream, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens):
                x, y = x.to(device), y.to(device)
                logits = forward_logits(model, x, autocast)
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                               reduction="sum"))
                count += y.numel()
                if bar is not None:
                    bar.update(y.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation split has no tokens to predict")
    nll = total / count
    bpt = nll / math.log(2)
    bpb = bpt / getattr(stream, "bytes_per_token", 1.0)
    return {"loss": nll, "bits_per_token": bpt, "bpb": bpb, "tokens": count}
