"""Warm starts from data statistics: bit-cipher codes, co-occurrence vectors and the
closed-form initialisation of a softmax layer (docs/warm_start.md).

Pure functions of token counts and arrays; :mod:`archlab.train.warm` applies them to a built
model after one streaming pass over the training split.

* :func:`bit_cipher` — frequency-ordered binary codes: the most frequent token gets the first
  one-hot code, and codes are handed out in order of increasing number of set bits (all
  one-hot, then all two-hot, …; within a tier in increasing integer value, lowest bit first),
  each normalised to sum 1. Decoding (:func:`decode`) is the argmax of cosine similarity: a
  distinct binary pattern is the only one at cosine 1 with itself (a plain dot product ties a
  two-hot code with its one-hot parts).
* :func:`cooccurrence` — for each offset r in ±1..±radius, the sum of the codes of the tokens
  seen at offset r of each token type; offsets concatenated or summed, rows L2-normalised.
* :func:`closed_form` — for inputs x ≥ 0 and targets y, F = Σ x yᵀ; P(j | i) = F_ij / Σ_j F_ij,
  P(j) = Σ_i F_ij / Σ F; W_ij = log P(j | i) − ((K − 1)/K) · log P(j). With one-hot inputs
  (K = 1) W is log P(j | i): softmax(xᵀW) is then the maximum-likelihood conditional model.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


def default_width(vocab: int) -> int:
    """⌊log2 V⌋ + 1: the fewest bits b with 2^b > V, so V non-zero codes exist."""
    if vocab < 1:
        raise ValueError(f"vocabulary size must be ≥ 1, got {vocab}")
    return int(math.floor(math.log2(vocab))) + 1


def code_patterns(n: int, width: int) -> np.ndarray:
    """The first ``n`` non-zero binary patterns of ``width`` bits in bit-cipher order: by
    number of set bits, then lexicographically by the positions of the set bits. (n, width) 0/1."""
    if n > 2 ** width - 1:
        raise ValueError(f"{width} bits give {2 ** width - 1} non-zero codes, fewer than {n} tokens; "
                         f"allowed: width ≥ {default_width(n)}")
    out = np.zeros((n, width), dtype=np.float64)
    row = 0
    for k in range(1, width + 1):
        for bits in itertools.combinations(range(width), k):
            if row == n:
                return out
            out[row, list(bits)] = 1.0
            row += 1
    return out


def frequency_order(counts: np.ndarray) -> np.ndarray:
    """Token ids by descending count; ties by ascending id (a stable, documented order)."""
    counts = np.asarray(counts)
    return np.lexsort((np.arange(len(counts)), -counts))


def bit_cipher(counts: np.ndarray, width: int | None = None) -> torch.Tensor:
    """(V, b) float64 codes: token of rank k (by ``counts``) gets the k-th pattern, normalised
    to sum 1."""
    counts = np.asarray(counts)
    V = len(counts)
    b = default_width(V) if width is None else int(width)
    patterns = code_patterns(V, b)
    codes = np.zeros((V, b))
    codes[frequency_order(counts)] = patterns
    return torch.from_numpy(codes / codes.sum(1, keepdims=True))


def decode(vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Token ids of (…, b) vectors: the code of highest cosine similarity."""
    c = codes / codes.norm(dim=-1, keepdim=True)
    v = vectors.to(codes.dtype)
    return (v @ c.T).argmax(-1)


def token_counts(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab)[:vocab].astype(np.float64)


def cooccurrence(tokens: np.ndarray, codes: torch.Tensor, radius: int, combine: str = "concat") -> torch.Tensor:
    """(V, 2·radius·b) (``concat``, offsets −radius..−1, 1..radius in that order) or (V, b)
    (``sum``) co-occurrence vectors, each row scaled to unit L2 norm (a type never seen keeps
    a zero row)."""
    if combine not in ("concat", "sum"):
        raise ValueError(f"combine: {combine!r}; allowed: concat, sum")
    t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    V, b = codes.shape
    blocks = []
    for r in [*range(-radius, 0), *range(1, radius + 1)]:
        here, there = (t[-r:], t[:r]) if r < 0 else (t[:-r], t[r:])
        acc = torch.zeros(V, b, dtype=codes.dtype)
        acc.index_add_(0, here, codes[there])
        blocks.append(acc)
    out = torch.cat(blocks, 1) if combine == "concat" else sum(blocks)
    norm = out.norm(dim=1, keepdim=True)
    return out / torch.where(norm > 0, norm, torch.ones_like(norm))


def closed_form(F: torch.Tensor, K: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """W (n_in, n_out) from F = Σ x yᵀ (non-negative): log P(j | i) − ((K − 1)/K) · log P(j).
    ``smoothing`` is a pseudo-count added to every cell (0: none, and an empty row or column
    then gives −inf / nan, as the maximum-likelihood model would)."""
    if K < 1:
        raise ValueError(f"K: the context size must be ≥ 1, got {K}")
    F = F.to(torch.float64) + smoothing
    cond = F / F.sum(1, keepdim=True)
    marg = F.sum(0) / F.sum()
    return cond.log() - ((K - 1) / K) * marg.log()


def orthonormal_rows(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(n, dim) with orthonormal rows (n ≤ dim), Haar-distributed under ``generator``."""
    if n > dim:
        raise ValueError(f"{n} orthonormal rows do not fit in width {dim}")
    q, r = torch.linalg.qr(torch.randn(dim, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T


def to_width(table: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of ``table`` (V, w) in ``dim`` columns: through orthonormal rows when w ≤ dim (inner
    products kept exactly), else onto the top ``dim`` right singular vectors (the best rank-dim
    approximation of the Gram matrix)."""
    V, w = table.shape
    if w <= dim:
        return table @ orthonormal_rows(w, dim, generator)
    _, _, vh = torch.linalg.svd(table, full_matrices=False)
    return table @ vh[:dim].T
