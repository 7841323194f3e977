"""A trainable absolute position table that starts as normalised sinusoids.

    x_t + γ · P[pos_t] / ‖P[pos_t]‖,   P ∈ R^{max_len × dim}, P₀[p] = PE[p] / ‖PE[p]‖,

PE the sinusoid table of Vaswani et al. (2017). Every row is renormalised at use, so training
changes the *direction* of each position vector but not its size; the size is fixed at
γ = scale · init_std · √dim, the expected norm of a token embedding at initialisation (entries
N(0, init_std²)): position and token signals start equally strong. (A raw sinusoid row has
norm √(dim/2), 11 at dim 256, against ~0.3 for a token embedding, which drowns the tokens.)

``checkpoint``: recompute the gather and normalisation in the backward pass instead of saving
their (…, T, dim) intermediates (``torch.utils.checkpoint``, non-reentrant). Same outputs and
gradients; less activation memory (it matters for per-row (B, T) positions, where the
intermediates are batch-sized).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from archlab.nn.positional.absolute import check_table_range, sinusoid_table
from archlab.nn.positional.base import PositionalScheme


class LearnedSinusoidal(PositionalScheme):
    uses_embed = True

    def __init__(self, *, dim: int, max_len: int, scale: float = 1.0, init_std: float = 0.02,
                 base: float = 10000.0, checkpoint: bool = False) -> None:
        super().__init__()
        self.max_len = max_len
        self.gain = scale * init_std * math.sqrt(dim)
        self.checkpoint = checkpoint
        self.table = nn.Parameter(F.normalize(sinusoid_table(max_len, dim, base), dim=-1))

    def signal(self, positions: torch.Tensor) -> torch.Tensor:
        """γ · P[pos] / ‖P[pos]‖ for positions of any shape: (…, dim)."""
        return self.gain * F.normalize(self.table[positions], dim=-1)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        check_table_range(positions, self.max_len)
        if self.checkpoint and torch.is_grad_enabled() and self.table.requires_grad:
            p = checkpoint(self.signal, positions, use_reentrant=False)
        else:
            p = self.signal(positions)
        return x + p.to(x.dtype)
