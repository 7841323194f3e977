"""Sampling from any archlab model: greedy, temperature, top-k, top-p, stop sequences.

With ``use_cache`` the prompt is run once and every new token costs one single-token forward
against the per-layer caches; without it the whole sequence is recomputed each step. Both
give identical tokens (tested); the second exists to prove the first and for models without
a cache.
"""

from __future__ import annotations

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
    per-module path, which every model supports."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    B, T = ids.shape
    # One buffer for the whole result: appending a token is a copy of one column, not of all.
    out = ids.new_full((B, T + max_new_tokens), pad_id)
    out[:, :T] = ids
    n = T
    done = torch.zeros(B, dtype=torch.bool, device=ids.device) if stop else None
    rows = [r.tolist() for r in ids] if stop else None
    step_in = ids
    try:
        # inference_mode skips autograd bookkeeping on every small op of every decoding step
        with torch.inference_mode():
            fast = None
            if use_cache and fast_path and max_new_tokens > 0:
                from archlab.models.fastdecode import FastDecoder

                p = next(model.parameters())
                fast = FastDecoder.build(model, batch=B, capacity=T + max_new_tokens, dtype=p.dtype, device=p.device)
            cache = model.init_cache() if use_cache and fast is None else None
            for i in range(max_new_tokens):
                if fast is not None:
                    logits = fast.prefill(ids) if i == 0 else fast.step(out[:, n - 1])
                else:
                    src = step_in if use_cache else out[:, :n]
                    logits = model(src, cache=cache).logits[:, -1]
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
