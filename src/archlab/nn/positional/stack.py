"""Several positional schemes acting in one attention: rotations applied in order, biases summed.

Echo's recipe puts rotations before RoPE *and* a clipped relative bias in the same attention
(the seed's ``max_rel_dist``); each part is an ordinary registered scheme. At most one part
may need the raw scores or bring its own attention path (CoPE): two such paths do not compose.
"""

from __future__ import annotations

import torch
from torch import nn

from archlab.nn.positional.base import PositionalScheme


class PositionStack(PositionalScheme):
    """``embed``: each part's in order; ``rotate``: each rotating part's in order (q and k);
    ``bias``: the sum of the biasing parts' biases. The capability flags are the parts'."""

    def __init__(self, parts: list[PositionalScheme]) -> None:
        super().__init__()
        if any(p.attend is not None for p in parts):
            raise ValueError("a scheme with its own attention path (CoPE) cannot be stacked with others")
        self.parts = nn.ModuleList(parts)
        self.uses_embed = any(p.uses_embed for p in parts)
        self.uses_rotate = any(p.uses_rotate for p in parts)
        self.uses_bias = any(p.uses_bias for p in parts)
        self.needs_scores = any(p.needs_scores for p in parts)
        self.uses_input = any(p.uses_input for p in parts)
        biasing = [p for p in parts if p.uses_bias]
        self.relative_bias = bool(biasing) and all(p.relative_bias for p in biasing)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        for p in self.parts:
            if p.uses_embed:
                x = p.embed(x, positions)
        return x

    def rotate(self, q, k, q_pos, k_pos, x=None):
        for p in self.parts:
            if p.uses_rotate:
                q, k = p.rotate(q, k, q_pos, k_pos, x=x) if p.uses_input else p.rotate(q, k, q_pos, k_pos)
        return q, k

    def _first_rotating(self) -> PositionalScheme | None:
        return next((p for p in self.parts if p.uses_rotate), None)

    def pre_rotation(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The first rotating part's (it is the first thing ``rotate`` does)."""
        first = self._first_rotating()
        return None if first is None or self.uses_input else first.pre_rotation(positions)

    def rotate_rest(self, q, k, q_pos, k_pos):
        first = self._first_rotating()
        for p in self.parts:
            if p is first:
                q, k = p.rotate_rest(q, k, q_pos, k_pos)
            elif p.uses_rotate:
                q, k = p.rotate(q, k, q_pos, k_pos)  # no part uses the input (else no pre_rotation)
        return q, k

    def bias(self, q, k, q_pos, k_pos, scores=None, allowed=None):
        total = None
        for p in self.parts:
            if p.uses_bias:
                b = p.bias(q, k, q_pos, k_pos, scores=scores, allowed=allowed)
                if b is not None:
                    total = b if total is None else total + b
        return total
