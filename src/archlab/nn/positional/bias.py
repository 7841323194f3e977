"""Additive attention-logit biases: ALiBi and T5-style bucketed relative bias."""

from __future__ import annotations

import math

import torch
from torch import nn

from archlab.nn.positional.base import PositionalScheme, relative_positions, table_bias


def alibi_slopes(heads: int) -> torch.Tensor:
    """Head slopes of ALiBi (Press et al., 2022): geometric 2^{−8/n·h} for n a power of two;
    otherwise the slopes of the nearest lower power of two plus every other slope of the next."""

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        s = geometric(heads)
    else:
        low = 2 ** math.floor(math.log2(heads))
        s = geometric(low) + geometric(2 * low)[0::2][: heads - low]
    return torch.tensor(s, dtype=torch.float32)


class ALiBi(PositionalScheme):
    """bias[h, i, j] = −m_h · (i − j) (causal) or −m_h · |i − j| (bidirectional)."""

    uses_bias = True
    relative_bias = True

    def __init__(self, *, heads: int, bidirectional: bool = False) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def bias(self, q, k, q_pos, k_pos, scores=None, allowed=None):
        rel = relative_positions(q_pos, k_pos).to(torch.float32)
        if self.bidirectional:
            rel = rel.abs()
        return -(self.slopes.view(-1, 1, 1) * rel)


def t5_bucket(rel: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of the relative position i − j (Raffel et al., 2020, T5).

    Half the buckets hold exact distances 0..n/2−1; the rest are log-spaced up to
    ``max_distance``, beyond which everything shares the last bucket. Bidirectional: half the
    buckets for keys before the query, half for keys after.
    """
    n = num_buckets
    out = torch.zeros_like(rel)
    dist = rel
    if bidirectional:
        n //= 2
        out = out + (rel < 0).long() * n  # keys after the query get the upper half
        dist = rel.abs()
    else:
        dist = rel.clamp(min=0)
    exact = n // 2
    is_small = dist < exact
    log_ratio = torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (n - exact)).long()
    large = large.clamp(max=n - 1)
    return out + torch.where(is_small, dist, large)


class T5RelativeBias(PositionalScheme):
    """bias[h, i, j] = b[bucket(i − j), h] with a trainable table b (one per scheme instance)."""

    uses_bias = True
    relative_bias = True

    def __init__(self, *, heads: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.table = nn.Embedding(num_buckets, heads)
        nn.init.normal_(self.table.weight, std=0.02)

    def bias(self, q, k, q_pos, k_pos, scores=None, allowed=None):
        rel = relative_positions(q_pos, k_pos).squeeze(-3)
        buckets = t5_bucket(rel, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
                            max_distance=self.max_distance)
        return table_bias(self.table.weight, buckets)
