"""Learned relative-position logit biases: a clipped table and a dynamic (MLP) bias.

Both return bias[h, i, j] for query position i and key position j from the signed distance
d = i − j alone, through the ``bias`` seam (an additive attention-logit term). Causal models
only ever use d ≥ 0 (later keys are masked), so they only hold parameters for d ≥ 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.positional.base import PositionalScheme, relative_positions, table_bias


class ClippedRelativeBias(PositionalScheme):
    """bias[h, i, j] = w[clip(i − j, −M, M), h], one learned scalar per head and clipped signed
    distance (Shaw et al., 2018, relative positions clipped at k = M; here as a scalar logit bias,
    as in T5, without T5's log buckets). Bidirectional: distances −M … M (2M + 1 entries);
    causal: 0 … M (M + 1 entries: negative distances are masked, so entries for them could
    never be trained). Init N(0, init_std) so the scheme differs from NoPE from the start."""

    uses_bias = True
    relative_bias = True  # a function of i − j only (local attention reuses one band table)

    def __init__(self, *, heads: int, max_rel_dist: int, bidirectional: bool = False, init_std: float = 0.02) -> None:
        super().__init__()
        if max_rel_dist < 1:
            raise ValueError(f"max_rel_dist must be ≥ 1, got {max_rel_dist}")
        self.max_rel_dist, self.bidirectional = max_rel_dist, bidirectional
        self.low = -max_rel_dist if bidirectional else 0
        self.table = nn.Parameter(torch.randn(max_rel_dist - self.low + 1, heads) * init_std)

    def index(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Table row of every (query, key): clip(i − j, low, M) − low; (Tq, Tk) or (B, Tq, Tk)."""
        rel = relative_positions(q_pos, k_pos).squeeze(-3)
        return rel.clamp(self.low, self.max_rel_dist) - self.low

    def bias(self, q, k, q_pos, k_pos, scores=None, allowed=None):
        return table_bias(self.table, self.index(q_pos, k_pos))


def signed_log_distance(d: torch.Tensor) -> torch.Tensor:
    """sign(d) · log(1 + |d|)."""
    return d.sign() * torch.log1p(d.abs())


class DynamicPositionBias(PositionalScheme):
    """bias[h, i, j] = MLP(sign(d)·log(1 + |d|))_h, d = i − j (dynamic position bias: Wang et
    al., 2021, "CrossFormer"; log-spaced distance input as in Liu et al., 2022, "Swin
    Transformer V2"). The MLP is 1 → hidden (SiLU) → … → heads with ``depth`` hidden layers,
    evaluated once per *distinct* distance in the call (≤ Tq + Tk − 1 of them), then indexed
    into (…, H, Tq, Tk). Causal models clamp d at 0 (later keys are masked anyway).

    The output layer has no bias: a per-head constant added to every logit of a row is removed
    by the softmax (it would never receive a gradient). Hidden layers start as ``nn.Linear``
    does (U(±1/√fan_in)); the output layer at N(0, init_std), so the initial bias is small but
    present. Parameters are plain tensors so the model's linear-layer initialisation (meant for
    the residual stream) leaves this tiny scalar network alone."""

    uses_bias = True
    relative_bias = True  # a function of i − j only

    def __init__(self, *, heads: int, hidden: int = 32, depth: int = 2, bidirectional: bool = False,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if hidden < 1 or depth < 1:
            raise ValueError(f"dynamic bias needs hidden ≥ 1 and depth ≥ 1, got {hidden}, {depth}")
        self.bidirectional = bidirectional
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        fan_in = 1
        for _ in range(depth):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(hidden, fan_in).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(hidden).uniform_(-bound, bound)))
            fan_in = hidden
        self.out = nn.Parameter(torch.randn(heads, hidden) * init_std)

    def mlp(self, d: torch.Tensor) -> torch.Tensor:
        """Signed distances (N,) -> per-head biases (N, H)."""
        x = signed_log_distance(d.to(self.out.dtype))[:, None]
        for w, b in zip(self.weights, self.biases):
            x = F.silu(F.linear(x, w, b))
        return F.linear(x, self.out)

    def bias(self, q, k, q_pos, k_pos, scores=None, allowed=None):
        rel = relative_positions(q_pos, k_pos).squeeze(-3)
        if not self.bidirectional:
            rel = rel.clamp(min=0)
        lo, hi = int(rel.min()), int(rel.max())
        table = self.mlp(torch.arange(lo, hi + 1, device=rel.device))  # (distinct, H)
        return table_bias(table, rel - lo)
