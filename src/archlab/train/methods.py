"""Training methods: how one micro-batch's gradient reaches ``param.grad`` (``train.method``).

The trainer owns everything around it (batches, accumulation over micro-batches, DDP's gradient
sync, clipping, the optimiser step, skipping non-finite steps); a method computes the model's
output on a micro-batch and accumulates the gradient of ``loss / accum`` into the parameters.
``backprop`` is reverse-mode autodiff; a forward-gradient method registers beside it.
"""

from __future__ import annotations

from typing import Any

import torch

from archlab.train import distributed


class Backprop:
    """The exact gradient by backpropagation (``loss.backward()``)."""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg

    def micro_step(self, trainer: Any, xs: torch.Tensor, ys: torch.Tensor, *, accum: int) -> tuple[Any, bool]:
        """The model output on (xs, ys) and whether its loss was finite on every rank; the
        gradient of ``loss / accum`` is accumulated only when it was (else nothing is touched)."""
        with trainer.autocast():
            out = trainer.forward(xs, targets=ys)
        loss = out.loss / accum
        finite = distributed.all_true(bool(torch.isfinite(loss)), trainer.dist, trainer.device)
        if finite:
            loss.backward()
        return out, finite
