"""Position-wise feed-forward networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeluMLP(nn.Module):
    """y = W₂ · GELU(W₁ x), hidden width = mult · dim (Vaswani et al., 2017; GELU: Hendrycks & Gimpel)."""

    def __init__(self, *, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.down.residual_out = True  # scaled at init (see models.init)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class SwiGLU(nn.Module):
    """y = W₂ · (SiLU(W_g x) ⊙ W₁ x) (Shazeer, 2020, "GLU Variants Improve Transformer").

    The gate and value projections are one fused matmul; the hidden width is chosen by the
    builder (by default 2/3 of the GELU width, so both have the same parameter count).
    """

    def __init__(self, *, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.hidden = hidden
        self.up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.down.residual_out = True
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).split(self.hidden, dim=-1)
        return self.dropout(self.down(F.silu(gate) * value))
