"""Schemes that act on the embeddings: none (NoPE), learned absolute, fixed sinusoidal."""

from __future__ import annotations

import math

import torch
from torch import nn

from archlab.nn.positional.base import PositionalScheme


class NoPosition(PositionalScheme):
    """NoPE: no explicit position signal; a causal decoder can still infer order (Kazemnejad et al., 2023)."""


def check_table_range(positions: torch.Tensor, max_len: int) -> None:
    """A learned table has rows for positions < max_len only: say so instead of an index error."""
    top = int(positions.max())
    if top >= max_len:
        raise ValueError(
            f"position {top} is beyond the learned table (model.max_seq_len={max_len}); "
            "raise model.max_seq_len or use a relative scheme"
        )


class LearnedAbsolute(PositionalScheme):
    """x + P[pos] with a trainable table P ∈ R^{max_len × dim} (GPT-2 style)."""

    uses_embed = True

    def __init__(self, *, dim: int, max_len: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.max_len = max_len
        self.table = nn.Embedding(max_len, dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        check_table_range(positions, self.max_len)
        return x + self.table(positions)


def sinusoid_table(n: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE[p, 2i] = sin(p / base^{2i/dim}), PE[p, 2i+1] = cos(p / base^{2i/dim}) (Vaswani et al., 2017)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    inv = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table.float()


class Sinusoidal(PositionalScheme):
    """x + PE[pos] with the fixed sinusoid table; valid at any position (table grows on demand)."""

    uses_embed = True

    def __init__(self, *, dim: int, base: float = 10000.0, scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.base, self.scale = dim, base, scale
        self.register_buffer("table", sinusoid_table(1024, dim, base), persistent=False)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        top = int(positions.max())
        if top >= self.table.shape[0]:
            n = 1 << (top.bit_length())
            self.table = sinusoid_table(n, self.dim, self.base).to(self.table.device)
        return x + self.scale * self.table[positions].to(x.dtype)
