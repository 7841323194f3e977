"""A residual block: norm placement policy + token mixer + feed-forward."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm: x + f(N(x)). Post-norm (original Transformer): N(x + f(x))."""

    def __init__(self, *, mixer: nn.Module, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module,
                 placement: str = "pre", dropout: float = 0.0) -> None:
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"norm placement '{placement}'; allowed: pre, post")
        self.mixer, self.ffn, self.norm1, self.norm2 = mixer, ffn, norm1, norm2
        self.pre = placement == "pre"
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_cache(self):
        return self.mixer.init_cache()

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre:
            x = x + self.drop(self.mixer(self.norm1(x), positions=positions, cache=cache, mask=mask))
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + self.drop(self.mixer(x, positions=positions, cache=cache, mask=mask)))
        return self.norm2(x + self.ffn(x))
