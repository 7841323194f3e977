"""Residual policies: how a block adds a sublayer's output to the residual stream.

A policy is called as ``policy(x, f, norm, stream)`` with the stream ``x``, the sublayer ``f``
(a callable on a tensor), that sublayer's norm and the model's per-call :class:`Stream` (None
when the model carries none). Pre- and post-norm hold no parameters; a learned residual
(LAuReL) does. ``final_norm`` says whether the stream still needs a norm after this sublayer
when it is the model's last (pre-norm) or ends normalised (post-norm).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Stream:
    """What flows down the stack beside the residual stream within one forward call.

    ``inputs``: the residual stream as each earlier sublayer received it (appended by the
    policies that look back, LAuReL-PA); ``state``: named records of parts controlled across
    layers (PID attention's reference, error sum and previous error). Everything is per
    position, so a decoding step builds its own from the tokens it is given."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.state: dict[str, dict] = {}


class ResidualPolicy(nn.Module):
    kind: str = ""
    final_norm: bool = True
    uses_stream: bool = False

    def forward(self, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], norm: nn.Module,
                stream: Stream | None = None) -> torch.Tensor:
        raise NotImplementedError


class PreNorm(ResidualPolicy):
    """x + f(N(x)) (GPT-2 and most decoders since)."""

    kind = "pre"
    final_norm = True

    def forward(self, x, f, norm, stream=None):
        return x + f(norm(x))


class PostNorm(ResidualPolicy):
    """N(x + f(x)) (the original Transformer)."""

    kind = "post"
    final_norm = False

    def forward(self, x, f, norm, stream=None):
        return norm(x + f(x))


def column_orthogonal(rank: int, dim: int) -> torch.Tensor:
    """LAuReL's initial down-projection A (rank, dim): A[j, i] = 1/√(rank·dim) where i mod rank = j,
    else 0 (the paper's footnote for its language models): each output channel sums an
    interleaved, disjoint set of input channels, so the rows are orthogonal."""
    A = torch.zeros(rank, dim)
    i = torch.arange(dim)
    A[i % rank, i] = 1.0 / (rank * dim) ** 0.5
    return A


class LAuReL(ResidualPolicy):
    """Learned augmented residual (Menghani, Kumar & Kumar, 2024, arXiv 2411.07501):
    x_{i+1} = α·f(x_i) + g(x_i, x_{i−1}, …), for each sublayer f with its norm N placed before
    (f(N(x)), pre) or after (N(α·f(x) + g), post).

    * RW (``rw``): α·f + β·x with learned scalars, kept bounded as α = 2σ(a), β = 2σ(b)
      (the paper asks for a softmax or sigmoid and leaves the form and start open; here both
      start at 1, the plain residual).
    * LR (``rank`` r > 0, ``previous`` 0): g = x + B·A·x, A (r, D) column-orthogonal, B (D, r)
      zero at the start (the paper's initialisation).
    * PA (``previous`` k > 0): g = x + Σ_{j<k} γ_j·h_j(x_{i−j}) over the residual stream as
      the last k sublayers received it (this one included; fewer at the bottom of the stack),
      h_j = B_j·A_j of rank r (γ starting at 1, B_j at 0) or the identity when r = 0 (γ
      starting at 0). With RW: α·f + β·g, the paper's RW+LR+PA with the identity kept in g.
    Every variant starts as the plain residual and stays so with α = β = 1 and B (or γ) = 0."""

    kind = "laurel"

    def __init__(self, dim: int, *, rw: bool = True, rank: int = 0, previous: int = 0, post: bool = False) -> None:
        super().__init__()
        if rank < 0 or previous < 0:
            raise ValueError(f"LAuReL needs rank ≥ 0 and previous ≥ 0, got {rank}, {previous}")
        self.rank, self.previous, self.post = rank, previous, post
        self.final_norm = not post
        self.uses_stream = previous > 0
        self.rw = nn.Parameter(torch.zeros(2)) if rw else None  # α = 2σ(a), β = 2σ(b)
        n = max(previous, 1)
        if rank:
            self.down = nn.Parameter(column_orthogonal(rank, dim).repeat(n, 1, 1))  # (n, r, D)
            self.up = nn.Parameter(torch.zeros(n, dim, rank))  # (n, D, r)
        if previous:
            self.gamma = nn.Parameter(torch.full((previous,), 1.0 if rank else 0.0))

    def extra_repr(self) -> str:
        return f"rw={self.rw is not None}, rank={self.rank}, previous={self.previous}, post={self.post}"

    def _low_rank(self, x: torch.Tensor, j: int) -> torch.Tensor:
        return (x @ self.down[j].to(x.dtype).t()) @ self.up[j].to(x.dtype).t()

    def augment(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        """g: x plus the learned linear terms (LR or PA)."""
        g = x
        if self.previous:
            if stream is None or not stream.inputs or stream.inputs[-1] is not x:
                raise ValueError("LAuReL-PA reads earlier residual-stream states: it needs the model's Stream, "
                                 "with this sublayer's input recorded last")
            for j, h in enumerate(reversed(stream.inputs[-self.previous:])):  # x_i, x_{i−1}, …
                g = g + self.gamma[j].to(x.dtype) * (self._low_rank(h, j) if self.rank else h)
        elif self.rank:
            g = g + self._low_rank(x, 0)
        return g

    def forward(self, x, f, norm, stream=None):
        fx = f(x) if self.post else f(norm(x))
        g = self.augment(x, stream)
        if self.rw is not None:
            a, b = (2 * torch.sigmoid(self.rw)).to(x.dtype)
            out = a * fx + b * g
        else:
            out = fx + g
        return norm(out) if self.post else out
