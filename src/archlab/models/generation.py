"""Sampling from any archlab model: greedy, temperature, top-k, top-p, stop sequences.

With ``use_cache`` the prompt is run once and every new token costs one single-token forward
against the per-layer caches; without it the whole sequence is recomputed each step. Both
give identical tokens (tested); the second exists to prove the first and for models without
a cache.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (smallest set with probability ≥ top_p) to −inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_token(
    logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _ends_with(seq: list[int], stop: Sequence[int]) -> bool:
    return len(stop) > 0 and len(seq) >= len(stop) and seq[-len(stop):] == list(stop)


#: New tokens the output (and the fast decoder's caches) get room for at first; the buffers
#: double when a long generation fills them, so ``max_new_tokens=10**9`` allocates nothing huge.
FIRST_CHUNK = 2048


def check_sampling(*, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                   flags: bool = False) -> None:
    """Refuse sampling settings that mean nothing, before any compute: one ``ConfigError``
    line each, naming the value and what is allowed. ``flags`` names them as the command
    line does (``--top-p``) instead of as keywords (``top_p``)."""
    from archlab.registry import ConfigError

    def name(key: str) -> str:
        return "--" + key.replace("_", "-") if flags else key

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"{name('max_new_tokens')}: must be an integer ≥ 0 (0: the prompt only), got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"{name('temperature')}: must be a finite number ≥ 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"{name('top_k')}: must be an integer ≥ 1 (or unset: no top-k filter), got {top_k!r}")
    # `not 0 < p <= 1` is also true for NaN, which no comparison satisfies
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ConfigError(f"{name('top_p')}: must be in (0, 1] (1: no nucleus filter), got {top_p!r}")


def context_limit(model: torch.nn.Module) -> int | None:
    """The longest context ``model`` can take, or ``None`` when it has no bound.

    A positional scheme with a finite learned table (learned absolute, learned sinusoidal)
    says so with an integer ``max_len``; every other scheme extrapolates (possibly badly, but
    without failing). The smallest table anywhere in the model bounds it."""
    from archlab.nn.positional.base import PositionalScheme

    limits = [m.max_len for m in model.modules()
              if isinstance(m, PositionalScheme) and isinstance(getattr(m, "max_len", None), int)]
    return min(limits) if limits else None


def _grown(buf: torch.Tensor, total: int, pad_id: int) -> torch.Tensor:
    """``buf`` (B, C) copied into a buffer about twice as long, never longer than ``total``."""
    bigger = buf.new_full((buf.shape[0], min(total, 2 * buf.shape[1])), pad_id)
    bigger[:, :buf.shape[1]] = buf
    return bigger


def generate(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[Sequence[int]] = (),
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    pad_id: int = 0,
    fast_path: bool = True,
) -> torch.Tensor:
    """Continue ``ids`` (B, T). Returns (B, T + n) with n ≤ max_new_tokens; a row that has
    produced one of the ``stop`` sequences (included in the output) is padded with ``pad_id``
    while the others go on; generation ends when every row has stopped.

    With ``use_cache`` a plain LM decodes through :mod:`archlab.models.fastdecode` (the same
    arithmetic with far fewer operations per token); ``fast_path=False`` forces the generic
    per-module path, which every model supports.

    A model with a bounded position table (:func:`context_limit`) sees at most its last
    ``max_len`` tokens, as GPT-2-style samplers do: once prompt and continuation outgrow the
    table, every step is a fresh forward over that window (cached positions would no longer
    match the window's), so generation goes on instead of failing at the table's end.
    Sampling settings out of range raise a one-line ``ConfigError`` before any compute."""
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    was_training = model.training
    model.eval()
    B, T = ids.shape
    total = T + max_new_tokens
    limit = context_limit(model)
    # Appending a token is a copy of one column, not of all; the buffer grows by doubling.
    out = ids.new_full((B, T + min(max_new_tokens, FIRST_CHUNK)), pad_id)
    out[:, :T] = ids
    n = T
    done = torch.zeros(B, dtype=torch.bool, device=ids.device) if stop else None
    rows = [r.tolist() for r in ids] if stop else None
    step_in = ids
    try:
        # inference_mode skips autograd bookkeeping on every small op of every decoding step
        with torch.inference_mode():
            fast = None
            cached = use_cache and (limit is None or T <= limit)
            if cached and fast_path and max_new_tokens > 0:
                fast = _fast_decoder(model, B, _room(out.shape[1], limit))
            cache = model.init_cache() if cached and fast is None else None
            for i in range(max_new_tokens):
                if n == out.shape[1]:
                    out = _grown(out, total, pad_id)
                if limit is not None and n > limit:  # past the table: the last `limit` tokens, afresh
                    logits = model(out[:, n - limit:n]).logits[:, -1]
                elif fast is not None:
                    if i > 0 and n > fast.capacity:  # full: a bigger one, prefilled with everything so far
                        fast = _fast_decoder(model, B, _room(out.shape[1], limit))
                        if fast is None:  # not expected (the same model qualified before): the generic cache
                            cache = model.init_cache()
                            logits = model(out[:, :n], cache=cache).logits[:, -1]
                        else:
                            logits = fast.prefill(out[:, :n])
                    else:
                        logits = fast.prefill(ids) if i == 0 else fast.step(out[:, n - 1])
                elif cache is not None:
                    logits = model(step_in, cache=cache).logits[:, -1]
                else:
                    logits = model(out[:, :n]).logits[:, -1]
                tok = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
                if done is not None:
                    tok = torch.where(done, torch.full_like(tok, pad_id), tok)
                out[:, n] = tok
                n += 1
                step_in = out[:, n - 1:n]
                if rows is not None:
                    for b in range(B):
                        if not done[b]:
                            rows[b].append(int(tok[b]))
                            if any(_ends_with(rows[b], s) for s in stop):
                                done[b] = True
                    if bool(done.all()):
                        break
    finally:
        model.train(was_training)
    return out[:, :n].clone()  # a normal tensor (usable in autograd), not an inference tensor


def _room(buffer_len: int, limit: int | None) -> int:
    """Positions a fast decoder needs: the output buffer's, but never past a position table."""
    return buffer_len if limit is None else min(buffer_len, limit)


def _fast_decoder(model: torch.nn.Module, batch: int, capacity: int):
    from archlab.models.fastdecode import FastDecoder

    p = next(model.parameters())
    return FastDecoder.build(model, batch=batch, capacity=capacity, dtype=p.dtype, device=p.device)
