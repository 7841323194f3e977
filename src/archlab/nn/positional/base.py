"""The interface every positional scheme implements.

Attention asks its scheme at three points and never knows which scheme it has:

* ``embed(x, positions)``: add a position signal to the residual stream (absolute schemes).
* ``rotate(q, k, q_pos, k_pos)``: transform queries and keys (the rotary family). With a KV
  cache, ``k`` holds only the *new* keys; cached keys were rotated when they were new.
  A rotation whose first step is one fixed matrix per head (``pre_rotation``: the same at every
  position and for every input) lets the attention fold that matrix into its projection
  weights and call ``rotate_rest`` for what follows.
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

    def pre_rotation(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The (G, D, D) matrix M that :meth:`rotate` applies first, as q·M and k·M (query head h
        uses M[h // (H/G)], key head j M[j // (Hk/G)]), when it is the same at every position and
        for every input; None when ``rotate`` has no such step. Being linear and fixed per
        forward, it can be folded into the projections: x·Wᵀ·M = x·(MᵀW)ᵀ. ``positions`` are the
        forward's (a scheme may memoise M per forward on them)."""
        return None

    def rotate_rest(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`rotate` without its :meth:`pre_rotation`, for q and k that already carry it."""
        return self.rotate(q, k, q_pos, k_pos)

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


def table_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-head logit biases from a table (N, H) at integer rows ``index`` (Tq, Tk) or
    (B, Tq, Tk) -> (H, Tq, Tk) or (B, H, Tq, Tk). Through ``index_select``: the values of
    ``table[index]``, and a backward that is an index_add (≈ 20× faster on CPU than the
    accumulating index_put of advanced indexing)."""
    out = table.t().index_select(1, index.reshape(-1)).view(-1, *index.shape)
    return out.movedim(0, -3)


def per_position(t: torch.Tensor) -> torch.Tensor:
    """A per-position table (T, X) or (B, T, X) -> broadcastable over heads: (1, 1, T, X) / (B, 1, T, X)."""
    return t.unsqueeze(-3) if t.dim() == 3 else t[None, None]
