"""Held-out evaluation of a synthetic task: answer loss, exact-match error and per-token error.

Under teacher forcing the model reads each example up to every answer token and its greedy
(argmax) prediction there is compared with the answer. An example is correct when *every* one of
its answer tokens is predicted correctly (selective copy: the whole copied sequence; flip-flop:
every read). Reported, all lower-is-better:

* ``error`` = 1 − (correct examples / examples),
* ``token_error`` = 1 − (correct answer tokens / answer tokens),
* ``loss`` = mean negative log-likelihood (nats) over answer tokens — the training objective.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archlab.data.taskdata import TaskSplit
from archlab.models.lm import IGNORE_INDEX
from archlab.train.evaluate import forward_logits, progress_bar


@torch.no_grad()
def evaluate_task(
    model: nn.Module, split: TaskSplit, *, batch_size: int, max_examples: int | None = None,
    device: torch.device | str = "cpu", autocast=None, progress: bool = False,
) -> dict[str, float]:
    """``loss``, ``error``, ``token_error`` (and ``examples``, ``answer_tokens``) on the first
    ``max_examples`` examples of ``split`` (all when None), in batches padded to their longest row.
    ``progress``: a bar over the examples on a terminal (off by default, as for ``evaluate``)."""
    n = len(split) if max_examples is None else min(len(split), max(1, int(max_examples)))
    was_training = model.training
    model.eval()
    nll, tokens, right_tokens, right_examples = 0.0, 0, 0, 0
    try:
        with progress_bar(progress, total=n, unit="ex", desc=f"eval {split.name}") as bar:
            for start in range(0, n, batch_size):
                x, y = split.batch(np.arange(start, min(n, start + batch_size)), ignore_index=IGNORE_INDEX)
                x, y = x.to(device), y.to(device)
                logits = forward_logits(model, x, autocast)
                logits = logits.float()
                counted = y != IGNORE_INDEX
                nll += float(F.cross_entropy(logits[counted], y[counted], reduction="sum"))
                hit = logits.argmax(-1) == y
                tokens += int(counted.sum())
                right_tokens += int((hit & counted).sum())
                right_examples += int((hit | ~counted).all(dim=1).sum())
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError(f"task split '{split.name}' has no answer tokens to score")
    return {"loss": nll / tokens, "error": 1.0 - right_examples / n, "token_error": 1.0 - right_tokens / tokens,
            "examples": n, "answer_tokens": tokens}
