"""The interface every positional scheme implements.

Attention asks its scheme at three points and never knows which scheme it has:

* ``embed(x, positions)``: add a position signal to the residual stream (absolute schemes).
* ``rotate(q, k, q_pos, k_pos)``: transform queries and keys (the rotary family). With a KV
  cache, ``k`` holds only the *new* keys; cached keys were rotated when they were new.
* ``bias(q, k, q_pos, k_pos, scores)``: an additive logit bias of shape broadcastable to
  (B, H, Tq, Tk). ``scores`` (q·kᵀ/√d) is passed only to schemes with ``needs_scores``.

Positions are integer tensors of shape (T,) shared by the batch or (B, T) per row, always
passed explicitly, so cache offsets, strided streams and encoder frames use the same code.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class PositionalScheme(nn.Module):
    """Which of the three points a scheme acts at (``uses_*``), and its optional capabilities,
    declared here with their defaults so attention never probes for them."""

    uses_embed: bool = False
    uses_rotate: bool = False
    uses_bias: bool = False
    needs_scores: bool = False  # bias depends on q·k: attention must materialise the scores
    uses_input: bool = False  # rotate() also takes the layer input x (a rotation predicted from it)
    # bias() depends on the positions only through i − j (not on q, k or absolute positions), so
    # one band table serves every query block and decoding step (local attention, fast decoding)
    relative_bias: bool = False
    # A scheme's own attention path (scores, bias, softmax and values in one call, as CoPE has):
    # attend(q, k, v, q_pos, k_pos, *, allowed, scale, dropout_p) -> output; None: the standard one.
    attend: Callable[..., torch.Tensor] | None = None

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def bias(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        scores: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """``allowed`` (bool, broadcastable to the scores) is the causal/padding mask, passed
        to schemes with ``needs_scores`` that must respect it (CoPE's gates count only
        visible keys)."""
        return None


def relative_positions(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """i − j for every (query i, key j): shape (1, Tq, Tk) or (B, 1, Tq, Tk) (a head axis to broadcast)."""
    return (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).unsqueeze(-3)


def per_position(t: torch.Tensor) -> torch.Tensor:
    """A per-position table (T, X) or (B, T, X) -> broadcastable over heads: (1, 1, T, X) / (B, 1, T, X)."""
    return t.unsqueeze(-3) if t.dim() == 3 else t[None, None]
