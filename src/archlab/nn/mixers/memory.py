"""A block made only of memory reads.

The primitive is one function, ``mem(q, K, V, temp) = softmax(q·Kᵀ / temp)·V``. The block
reads, in order, from a persistent associative memory (learned keys K and values V, the same
for every input), from the context (keys and values are the causal context itself) and from
the persistent memory again with keys and values swapped (the "MLP" read):

    q = x
    q = q + mem(q, K, V)            # associations
    q = q + mem(q, X, X)            # the context, causally
    q = q + mem(q, V, K)            # the same memory read backwards (or its own, untied)

A softmax MLP without biases, softmax(x·W₁)·W₂, *is* ``mem(x, W₁ᵀ, W₂)``: the swapped read is
a feed-forward layer whose hidden units are the memory slots (tests/test_memory.py checks it).

:class:`MemoryRead` computes this for every position at once, with a causal mask on the
context read; each read is split into ``heads`` heads (each head reads its own slice of q from
its own slice of the memory). Knobs: the temperature of each read (fixed, default √head_dim,
or learned per read and head), the number of slots, whether the context read projects q, k, v
and its output (as attention does) or reads the stream itself, the positional scheme of the
context read (any registered one, as for attention), an RMS norm before each read, and whether
the swapped read shares the first read's memory (tied, as written) or has its own.

As a token mixer it returns the block's update q − x; with the layer's norm ``none`` and
feed-forward ``none`` the LM's pre-norm residual turns it into exactly the block above.
Decoding keeps the context read's keys and values in a :class:`~archlab.nn.cache.KVCache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.cache import KVCache
from archlab.nn.mixers.attention import allowed_mask, explicit_attention
from archlab.nn.norms import RMSNorm
from archlab.nn.positional.base import PositionalScheme


def mem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temp: float | torch.Tensor = 1.0,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ / temp)·v over the last two axes; ``mask`` (broadcast to the scores): True
    where a key may be read. ``temp`` a number or a tensor broadcast against q (per head)."""
    return F.scaled_dot_product_attention(q / temp, k, v, attn_mask=mask, scale=1.0)


class MemoryRead(nn.Module):
    READS = ("persistent", "context", "swapped")

    def __init__(self, *, dim: int, heads: int, position: PositionalScheme, slots: int = 64,
                 temperature: float | None = None, learn_temperature: bool = False,
                 projections: bool = False, norm: bool = False, tied: bool = True,
                 causal: bool = True, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide width {dim}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.slots, self.causal, self.dropout, self.position = slots, causal, dropout, position
        self.projections, self.tied = projections, tied
        hd = self.head_dim
        temp = float(temperature) if temperature is not None else math.sqrt(hd)
        self.learn_temperature = learn_temperature
        if learn_temperature:  # per read and head, positive through the log
            self.log_temp = nn.Parameter(torch.full((3, heads, 1, 1), math.log(temp)))
        else:
            self.register_buffer("temp", torch.full((3, heads, 1, 1), temp), persistent=False)
        # keys N(0, 1/hd): q·k of unit scale for a unit-scale q; values N(0, 1/slots)
        self.keys = nn.Parameter(torch.randn(heads, slots, hd) / math.sqrt(hd))
        self.values = nn.Parameter(torch.randn(heads, slots, hd) / math.sqrt(slots))
        if not tied:
            self.keys2 = nn.Parameter(torch.randn(heads, slots, hd) / math.sqrt(hd))
            self.values2 = nn.Parameter(torch.randn(heads, slots, hd) / math.sqrt(slots))
        if projections:
            self.q = nn.Linear(dim, dim, bias=bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=bias)
            self.out = nn.Linear(dim, dim, bias=bias)
            self.out.residual_out = True
        self.norms = nn.ModuleList([RMSNorm(dim) for _ in self.READS]) if norm else None

    def init_cache(self) -> KVCache:
        return KVCache()

    def temperatures(self) -> torch.Tensor:
        """(3, heads, 1, 1): the persistent, context and swapped reads' temperatures."""
        return self.log_temp.exp() if self.learn_temperature else self.temp

    def swapped_memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of the third read: the first read's values and keys when tied, its
        own keys and values otherwise."""
        return (self.values, self.keys) if self.tied else (self.keys2, self.values2)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y.shape
        return y.transpose(1, 2).reshape(B, T, self.dim)

    def _read_input(self, q: torch.Tensor, i: int) -> torch.Tensor:
        return self.norms[i](q) if self.norms is not None else q

    def persistent_read(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        temp: torch.Tensor) -> torch.Tensor:
        """mem(q, keys, values, temp) per head: q (B, T, dim) -> (B, T, dim)."""
        h = self._heads(q)
        return self._merge(mem(h, keys.to(h.dtype), values.to(h.dtype), temp.to(h.dtype)))

    def context_read(self, q: torch.Tensor, x: torch.Tensor, *, positions: torch.Tensor,
                     cache: KVCache | None, mask: torch.Tensor | None, temp: torch.Tensor) -> torch.Tensor:
        """mem(q, X, X) over the (causal) context X = ``x`` (the block's input), with the
        context's positional scheme; through projections when the block has them."""
        if self.projections:
            qh = self._heads(self.q(q))
            k, v = (self._heads(t) for t in self.kv(x).chunk(2, dim=-1))
        else:
            qh, k = self._heads(q), self._heads(x)
            v = k
        pos = self.position
        if pos.uses_rotate:
            qh, k = pos.rotate(qh, k, positions, positions, x=x) if pos.uses_input \
                else pos.rotate(qh, k, positions, positions)
        k_pos = positions
        fresh = cache is None or len(cache) == 0
        if cache is not None:
            k, v, k_pos = cache.update(k, v, positions)
        p = self.dropout if self.training else 0.0
        plain = not (pos.uses_bias or pos.needs_scores or pos.attend is not None)
        if plain and mask is None and (fresh or not self.causal):  # the fused causal kernel, no mask
            y = F.scaled_dot_product_attention(qh / temp.to(qh.dtype), k, v, dropout_p=p, scale=1.0,
                                               is_causal=self.causal)
            y = self._merge(y)
            return self.out(y) if self.projections else y
        allowed = allowed_mask(positions, k_pos, causal=self.causal, key_mask=mask)
        if not plain:
            # softmax(q·kᵀ/temp + bias): the queries carry 1/temp, the scores' 1/√D is undone
            qh = qh * (math.sqrt(self.head_dim) / temp.to(qh.dtype))
            y = explicit_attention(pos, qh, k, v, positions, k_pos, allowed=allowed,
                                   scale=1.0 / math.sqrt(self.head_dim), p=p)
        else:
            y = F.scaled_dot_product_attention(qh / temp.to(qh.dtype), k, v, attn_mask=allowed,
                                               dropout_p=p, scale=1.0)
        y = self._merge(y)
        return self.out(y) if self.projections else y

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        t = self.temperatures()
        r1 = self.persistent_read(self._read_input(x, 0), self.keys, self.values, t[0])
        q = x + r1
        r2 = self.context_read(self._read_input(q, 1), self._read_input(x, 1), positions=positions,
                               cache=cache, mask=mask, temp=t[1])
        q = q + r2
        r3 = self.persistent_read(self._read_input(q, 2), *self.swapped_memory(), t[2])
        return r1 + r2 + r3  # the block's update: q_out − x
