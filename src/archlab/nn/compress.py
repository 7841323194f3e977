"""Causal sequence compressors for hierarchical streams.

A compressed stream with factor ``c`` and stride ``s`` has one token per ``s`` fine positions.
Its token j summarises the fine embeddings at positions [j·s − c + 1, j·s] (positions below 0
are padding), so it "ends" at e_j = j·s and may be used by fine positions i ≥ e_j only; the
fine position i reads token ⌊i/s⌋ (:func:`expand_to_fine`). Causality comes from the shift by
c − 1: the window is padded on the left, never on the right ("causal convolution",
van den Oord et al., 2016, WaveNet).

Every compressor is called the same way, for a whole sequence or for a chunk of new tokens
during cached decoding: ``forward(x_ext, i0) -> (z, aux)`` with ``x_ext`` (B, c − 1 + n, D)
the c − 1 fine embeddings before position i0 (zeros before position 0) followed by the n new
ones at i0 … i0 + n − 1; ``z`` (B, m, d_out) are the stream tokens j whose window ends inside
the new positions, in order; ``aux`` is a scalar auxiliary loss or ``None``.

Kinds:

* ``conv``: depthwise convolution (kernel c, stride s) then a pointwise projection — a
  depthwise-separable convolution (Chollet, 2017, "Xception").
* ``attn``: attention pooling — a learned query per head attends over the c positions of each
  window (the pooling-by-attention of Lee et al., 2019, "Set Transformer", PMA).
* ``vq``: a fixed random projection of the window (BEST-RQ, Chiu et al., 2022) quantised to
  the nearest entry of a learned codebook (VQ-VAE, van den Oord et al., 2017), with cosine
  similarity (codes and projections on the unit sphere), straight-through gradients and the
  loss ``‖sg(q) − z‖²·β + ‖q − sg(z)‖²`` returned as ``aux``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def new_groups(i0: int, n: int, stride: int) -> tuple[int, int]:
    """Stream tokens completed by fine positions i0 … i0+n−1: (first index j0, count m)."""
    j0 = -(-i0 // stride)  # ceil: the first multiple of stride at or after i0
    j1 = (i0 + n - 1) // stride
    return j0, max(0, j1 - j0 + 1)


def expand_to_fine(z: torch.Tensor, *, stride: int, i0: int, n: int, j0: int, last: torch.Tensor | None) -> torch.Tensor:
    """Per fine position i in i0 … i0+n−1, the stream token ⌊i/stride⌋.

    ``z`` (B, m, d) holds tokens j0 … j0+m−1 (the new ones); ``last`` (B, 1, d) the token
    j0 − 1 from earlier calls (``None`` at the start, when no position needs it).
    """
    if stride == 1:
        return z
    if last is None:
        last = z.new_zeros(z.shape[0], 1, z.shape[-1])
    ext = torch.cat([last, z], dim=1)
    idx = torch.arange(i0, i0 + n, device=z.device) // stride - (j0 - 1)
    return ext.index_select(1, idx)


class CausalCompressor(nn.Module):
    """Base: factor c, stride s and the slicing shared by every kind."""

    def __init__(self, *, factor: int, stride: int) -> None:
        super().__init__()
        if factor < 2 or stride < 1 or factor % stride:
            raise ValueError(f"compressor needs factor ≥ 2 and a stride dividing it, got factor {factor}, stride {stride}")
        self.factor, self.stride = factor, stride

    def windows(self, x_ext: torch.Tensor, i0: int) -> tuple[torch.Tensor, int, int]:
        """The part of ``x_ext`` that the new windows cover, its first fine position, and m."""
        n = x_ext.shape[1] - (self.factor - 1)
        j0, m = new_groups(i0, n, self.stride)
        off = j0 * self.stride - i0  # x_ext[:, off] is the first position of window j0
        return x_ext[:, off:off + (m - 1) * self.stride + self.factor], j0 * self.stride - self.factor + 1, m


class ConvCompressor(CausalCompressor):
    """z_j = W · Σ_k w_k ⊙ x_{j·s − k}, k = 0 … c−1 (depthwise taps, pointwise W)."""

    def __init__(self, *, dim_in: int, dim_out: int, factor: int, stride: int) -> None:
        super().__init__(factor=factor, stride=stride)
        self.depthwise = nn.Conv1d(dim_in, dim_in, factor, stride=stride, groups=dim_in, bias=False)
        # Start as a mean over the window: a meaningful summary before any training.
        nn.init.constant_(self.depthwise.weight, 1.0 / factor)
        self.pointwise = nn.Linear(dim_in, dim_out, bias=False)

    def forward(self, x_ext: torch.Tensor, i0: int) -> tuple[torch.Tensor, None]:
        xs, _, m = self.windows(x_ext, i0)
        if m == 0:
            return x_ext.new_zeros(x_ext.shape[0], 0, self.pointwise.out_features), None
        y = self.depthwise(xs.transpose(1, 2)).transpose(1, 2)  # (B, m, dim_in)
        return self.pointwise(y), None


class AttnPoolCompressor(CausalCompressor):
    """z_j = W_o · concat_h Σ_k softmax_k(q_h·W_k x_{j·s−k} / √d_h) W_v x_{j·s−k}; padding
    positions (< 0) are masked out, and every window holds at least its own end."""

    def __init__(self, *, dim_in: int, dim_out: int, factor: int, stride: int, heads: int) -> None:
        super().__init__(factor=factor, stride=stride)
        if dim_out % heads:
            raise ValueError(f"attention pooling: heads {heads} must divide the stream width {dim_out}")
        self.heads, self.head_dim = heads, dim_out // heads
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.kv = nn.Linear(dim_in, 2 * dim_out, bias=False)
        self.out = nn.Linear(dim_out, dim_out, bias=False)

    def forward(self, x_ext: torch.Tensor, i0: int) -> tuple[torch.Tensor, None]:
        xs, p0, m = self.windows(x_ext, i0)
        B, L, _ = xs.shape
        if m == 0:
            return x_ext.new_zeros(B, 0, self.out.out_features), None
        H, D, c, s = self.heads, self.head_dim, self.factor, self.stride
        k, v = self.kv(xs).view(B, L, 2, H, D).unbind(2)
        scores = (k * self.query).sum(-1) / math.sqrt(D)  # (B, L, H): one query, so one score per key
        pad = torch.arange(p0, p0 + L, device=xs.device) < 0
        scores = scores.masked_fill(pad[None, :, None], float("-inf"))
        p = scores.unfold(1, c, s).softmax(dim=-1)  # (B, m, H, c)
        vw = v.unfold(1, c, s)  # (B, m, H, D, c), a view
        y = (vw * p.unsqueeze(-2)).sum(-1)
        return self.out(y.reshape(B, m, H * D)), None


class VQCompressor(CausalCompressor):
    """z = normalise(R ⋆ x) with a fixed random R (kernel c, stride s), q = the nearest unit
    code (cosine), output W·(z + sg(q − z)); aux = β‖z − sg(q)‖² + ‖sg(z) − q‖² (mean over tokens)."""

    def __init__(self, *, dim_in: int, dim_out: int, factor: int, stride: int, codes: int, code_dim: int,
                 beta: float, seed: int = 0) -> None:
        super().__init__(factor=factor, stride=stride)
        gen = torch.Generator().manual_seed(seed)
        # Persistent, so a checkpoint carries the projection its codebook was trained against.
        self.register_buffer("projection", torch.randn(code_dim, dim_in, factor, generator=gen) / math.sqrt(dim_in * factor))
        self.codebook = nn.Parameter(F.normalize(torch.randn(codes, code_dim, generator=gen), dim=-1))
        self.beta = beta
        self.out = nn.Linear(code_dim, dim_out, bias=False)

    def forward(self, x_ext: torch.Tensor, i0: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        xs, _, m = self.windows(x_ext, i0)
        if m == 0:
            return x_ext.new_zeros(x_ext.shape[0], 0, self.out.out_features), None
        z = F.conv1d(xs.transpose(1, 2), self.projection.to(xs.dtype), stride=self.stride).transpose(1, 2)
        z = F.normalize(z, dim=-1)
        book = F.normalize(self.codebook, dim=-1)
        idx = (z @ book.t()).argmax(dim=-1)  # (B, m): the nearest code on the sphere
        q = book[idx]
        aux = self.beta * (z - q.detach()).pow(2).sum(-1).mean() + (q - z.detach()).pow(2).sum(-1).mean()
        return self.out(z + (q - z).detach()), aux
