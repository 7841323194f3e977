"""A residual block: residual policy (where the norms sit) + token mixer + feed-forward."""

from __future__ import annotations

import torch
from torch import nn

from archlab.nn.mixers.base import TokenMixer
from archlab.nn.residual import ResidualPolicy


class Block(nn.Module):
    """``x ← residual1(x, mixer, norm1)``, then ``x ← residual2(x, ffn, norm2)``: pre-norm
    x + f(N(x)), post-norm (original Transformer) N(x + f(x)), or any registered policy. The
    norms stay attributes of the block (state-dict keys ``norm1``/``norm2``); dropout applies to
    the mixer's output."""

    def __init__(self, *, mixer: TokenMixer, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 residual1: ResidualPolicy, residual2: ResidualPolicy, dropout: float = 0.0) -> None:
        super().__init__()
        self.mixer, self.ffn, self.norm1, self.norm2 = mixer, ffn, norm1, norm2
        self.residual1, self.residual2 = residual1, residual2
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_cache(self):
        return self.mixer.init_cache()

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.residual1(x, lambda h: self.drop(self.mixer(h, positions=positions, cache=cache, mask=mask)),
                           self.norm1)
        return self.residual2(x, self.ffn, self.norm2)
