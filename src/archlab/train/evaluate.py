"""Held-out evaluation: mean NLL over contiguous windows, and exact bits per byte."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Iterator

import numpy as np
import torch
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
    """The model's logits for ``x``, under the run's autocast context when it has one. A model
    may return the logits tensor itself (a peer such as x-transformers) or an output with
    ``.logits`` (archlab's models)."""
    if autocast is None:
        out = model(x)
    else:
        with autocast():
            out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


_BYTE_TABLES: dict[str, np.ndarray] = {}


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id of ``tokenizer``: ``len(tokenizer.decode_bytes([i]))``
    for ``i < vocab_size`` (read-only int64 array). Exact for archlab's tokenizers: the byte
    tokenizer's ids are bytes, and each id of the byte-level BPE stands for fixed bytes, so the
    bytes of any run of targets are the sum of their lengths. Cached by the tokenizer's
    fingerprint (a run evaluates many times with one tokenizer)."""
    key = tokenizer.fingerprint() if hasattr(tokenizer, "fingerprint") else None
    if key is not None and key in _BYTE_TABLES:
        return _BYTE_TABLES[key]
    table = np.array([len(tokenizer.decode_bytes([i])) for i in range(int(tokenizer.vocab_size))], dtype=np.int64)
    table.setflags(write=False)
    if key is not None:
        _BYTE_TABLES[key] = table
    return table


def _byte_table(stream, token_bytes) -> torch.Tensor | None:
    """The per-id byte lengths as an int64 tensor; None for a byte stream (one byte per id)."""
    if token_bytes is not None:
        table = (token_bytes.detach().cpu() if isinstance(token_bytes, torch.Tensor)
                 else torch.from_numpy(np.array(token_bytes))).reshape(-1)  # a copy: tables may be read-only
        if table.dtype.is_floating_point or table.dtype == torch.bool or table.numel() == 0:
            raise ValueError(f"evaluate: token_bytes must be a non-empty array of integer byte lengths, "
                             f"got dtype {table.dtype}, {table.numel()} entries")
        table = table.to(torch.int64)
        if bool((table < 0).any()):
            raise ValueError("evaluate: token_bytes holds a negative byte length")
        return table
    unit = getattr(stream, "unit", "byte")  # a bare array: ids of the byte tokenizer, as before
    if unit != "byte":
        raise ValueError(f"evaluate: a stream of unit '{unit}' (e.g. BPE) needs token_bytes, the byte length "
                         "of every id (token_byte_lengths(tokenizer)); bits per byte cannot be exact without it")
    return None


@torch.no_grad()
def evaluate(
    model: nn.Module, stream, *, seq_len: int, batch_size: int, max_tokens: int | None = None,
    device: torch.device | str = "cpu", autocast=None, progress: bool = False,
    token_bytes: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """Exact held-out metrics over the split's contiguous windows (every target once, the first
    ``max_tokens`` targets when capped): the NLL of each scored target from a float64 log-softmax,
    summed in float64; ``loss`` = nats / targets, ``bits_per_token`` = loss / ln 2 and
    ``bpb`` = nats / ln 2 / (UTF-8 bytes of exactly the scored targets). Also ``tokens`` (targets
    scored) and ``bytes`` (their bytes).

    ``token_bytes``: the byte length of every token id (:func:`token_byte_lengths` of the
    tokenizer that produced ``stream``). Needed for a stream of unit ``token`` (BPE): dividing by
    the split's average bytes per token instead is wrong on a capped prefix. Without it a byte
    stream (or a bare array of byte ids) counts one byte per target; a token stream is refused.

    ``progress``: a bar over the targets on a terminal (``archlab eval`` of a large split);
    off by default so the trainer's periodic evaluations stay quiet."""
    table = _byte_table(stream, token_bytes)
    was_training = model.training
    model.eval()
    nats, count, n_bytes = 0.0, 0, 0
    n_targets = count_eval_targets(stream, max_tokens=max_tokens)
    try:
        with progress_bar(progress, total=n_targets, unit="tok", desc="eval") as bar:
            for x, y in eval_windows(stream, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens):
                x = x.to(device)
                logits = forward_logits(model, x, autocast)
                if logits.device.type == "mps":  # no float64 there: the log-softmax runs on the CPU
                    logits = logits.cpu()
                y = y.to(logits.device).reshape(-1)
                logp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).to(torch.float64), dim=-1)
                nats += float(-logp.gather(1, y[:, None]).sum())  # float64 sum; a Python float adds in float64
                count += y.numel()
                if table is None:
                    n_bytes += y.numel()
                else:
                    y_cpu = y.cpu()
                    if int(y_cpu.max()) >= table.numel():
                        raise ValueError(f"evaluate: token id {int(y_cpu.max())} has no entry in token_bytes "
                                         f"({table.numel()} ids); pass the table of the stream's tokenizer")
                    n_bytes += int(table[y_cpu].sum())
                if bar is not None:
                    bar.update(y.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluation split has no tokens to predict")
    if n_bytes == 0:
        raise ValueError("evaluate: the scored targets stand for no bytes; bits per byte is undefined")
    loss = nats / count
    return {"loss": loss, "bits_per_token": loss / math.log(2), "bpb": nats / math.log(2) / n_bytes,
            "tokens": count, "bytes": n_bytes}
