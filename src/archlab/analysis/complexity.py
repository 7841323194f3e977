"""Complexity of a function sampled on a 2-D grid: the three measures of Neural Redshift
(Teney et al., CVPR 2024), pure numpy.

The grid is ``n × n`` cell centres of [-1, 1]²: x_i = −1 + (2i + 1)/n.

- :func:`mean_frequency` — the magnitude-weighted mean spatial frequency. We take the
  2-D cosine transform (DCT-II) rather than the DFT: a DFT treats the grid as periodic, so a
  plain ramp would wrap into a jump and score as high-frequency; the cosine transform is the
  DFT of the mirrored, seamless image. Coefficient (i, j) is a wave of i/2 and j/2 cycles
  across the square; its frequency is ½·√(i² + j²) cycles, and the measure is
  Σ |C_ij| ν_ij / Σ |C_ij| over (i, j) ≠ (0, 0). A constant scores 0 (by definition: it has
  no non-constant part), cos(2π ν (x + 1)/2) scores ν exactly.
- :func:`lz_complexity` — the Lempel–Ziv (1976) complexity, counted by Kaspar and Schuster's
  algorithm, of the output binarised at its median, normalised as c(n)·log₂(n)/n (≈ 1 for
  a random sequence, → 0 for a periodic one); for a grid, the mean over the row-major and
  the column-major reading.
- :func:`legendre_order` — the coefficient-weighted mean order of a least-squares fit by
  products of Legendre polynomials P_a(x) P_b(y), a, b ≤ ``degree``: Σ |c_ab| (a + b) /
  Σ |c_ab| over (a, b) ≠ (0, 0). P_3(x) scores 3, x·y scores 2, a constant 0.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Below this share of the output's scale, the non-constant part is round-off: the function is a constant.
_FLAT = 1e-9


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the n × n cell centres of [-1, 1]², each (n, n); x varies along axis 1."""
    c = -1 + (2 * np.arange(n) + 1) / n
    return np.meshgrid(c, c, indexing="xy")


def _flat(f: np.ndarray) -> bool:
    scale = float(np.max(np.abs(f))) if f.size else 0.0
    return not math.isfinite(scale) or float(np.std(f)) <= _FLAT * max(scale, 1e-300)


@lru_cache(maxsize=8)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    return np.cos(np.pi * (np.arange(n)[None, :] + 0.5) * k / n)  # (k, sample)


def mean_frequency(f: np.ndarray) -> float:
    """Magnitude-weighted mean frequency (cycles across the square) of ``f`` (n, n)."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] != f.shape[1]:
        raise ValueError(f"mean_frequency: expected a square grid, got shape {f.shape}")
    if _flat(f):
        return 0.0
    d = _dct_matrix(f.shape[0])
    c = np.abs(d @ f @ d.T)  # (frequency along y, frequency along x)
    c[0, 0] = 0.0
    i = np.arange(f.shape[0])
    nu = 0.5 * np.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    total = c.sum()
    return float((c * nu).sum() / total) if total > 0 else 0.0


def lz76(bits: np.ndarray | list[int] | str) -> int:
    """The number of phrases of the Lempel–Ziv (1976) parsing, as Kaspar & Schuster count it:
    each phrase is the shortest run starting where the last one ended that does not occur
    earlier (overlap allowed, up to its own last symbol); an unfinished last phrase counts."""
    s = bits if isinstance(bits, str) else "".join("1" if b else "0" for b in np.asarray(bits).reshape(-1).tolist())
    n, i, c = len(s), 0, 0
    while i < n:
        length = 1
        while i + length <= n and s[i:i + length] in s[:i + length - 1]:  # substring search in C
            length += 1
        c += 1
        i += length
    return c


def lz_normalised(bits: np.ndarray | list[int] | str) -> float:
    """c(n)·log₂(n)/n."""
    n = len(bits)
    return lz76(bits) * math.log2(n) / n if n > 1 else 0.0


def binarise(f: np.ndarray) -> np.ndarray:
    """1 where ``f`` is above its median, else 0 (a constant: all 0)."""
    f = np.asarray(f, dtype=np.float64)
    if _flat(f):
        return np.zeros(f.shape, dtype=np.int8)
    return (f > np.median(f)).astype(np.int8)


def lz_complexity(f: np.ndarray) -> float:
    """Normalised LZ complexity of ``f`` binarised at its median: for a 1-D array its sequence,
    for a grid the mean over the row-major and the column-major readings."""
    b = binarise(f)
    if b.ndim == 1:
        return lz_normalised(b)
    return 0.5 * (lz_normalised(b.reshape(-1)) + lz_normalised(b.T.reshape(-1)))


@lru_cache(maxsize=8)
def _legendre_fit(n: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = grid(n)
    v = np.polynomial.legendre.legvander2d(x.reshape(-1), y.reshape(-1), [degree, degree])  # (n², (d+1)²)
    order = np.add.outer(np.arange(degree + 1), np.arange(degree + 1)).reshape(-1)  # a + b, x index first
    return np.linalg.pinv(v), order


def legendre_order(f: np.ndarray, degree: int = 10) -> float:
    """Coefficient-weighted mean order of the Legendre fit of ``f`` (n, n) (see the module doc)."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] != f.shape[1]:
        raise ValueError(f"legendre_order: expected a square grid, got shape {f.shape}")
    if degree < 1 or (degree + 1) ** 2 > f.size:
        raise ValueError(f"legendre_order: degree {degree} needs more than {f.size} points; allowed 1.."
                         f"{math.isqrt(f.size) - 1}")
    if _flat(f):
        return 0.0
    pinv, order = _legendre_fit(f.shape[0], degree)
    c = np.abs(pinv @ f.reshape(-1))
    c[0] = 0.0  # the constant term (a = b = 0)
    total = c.sum()
    return float((c * order).sum() / total) if total > 0 else 0.0


MEASURES = {"frequency": mean_frequency, "lz": lz_complexity, "order": legendre_order}


def measure_all(f: np.ndarray) -> dict[str, float]:
    return {name: fn(f) for name, fn in MEASURES.items()}


__all__ = ["MEASURES", "binarise", "grid", "legendre_order", "lz76", "lz_complexity", "lz_normalised",
           "mean_frequency", "measure_all"]
