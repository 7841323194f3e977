"""Cross-attention: queries from the stream, keys and values from a memory (an encoder's output).

softmax(q·kᵀ/√d + bias)·v with every memory position visible (no causal mask), on
:class:`~archlab.nn.mixers.attention.Attention`'s ``attend`` (the fused kernel, biases, the
explicit path). A positional scheme, when given, sees query positions (the decoder's) and key
positions (the memory's): rotations then encode their offset, biases their signed distance.
The memory's keys and values are computed once per memory and kept in a :class:`MemoryCache`
for decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.cache import _RowCache
from archlab.nn.mixers.attention import Attention, fold_rows, fold_worthwhile, hooked
from archlab.nn.positional.base import PositionalScheme


class MemoryCache(_RowCache):
    """The memory's keys/values (B, Hk, S, D) and positions, once computed; ``len`` is S."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class CrossAttention(Attention):
    """Attention of the stream over ``memory`` (B, S, dim_memory) at ``memory_positions`` (S,)."""

    def __init__(self, *, dim: int, heads: int, position: PositionalScheme, dim_memory: int | None = None,
                 kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False,
                 dropout: float = 0.0) -> None:
        if position.uses_input:
            raise ValueError("cross-attention cannot use a rotation predicted from the hidden state "
                             "(the keys come from another stream)")
        super().__init__(dim=dim, heads=heads, position=position, kv_heads=kv_heads, head_dim=head_dim,
                         causal=False, bias=bias, dropout=dropout)
        del self.qkv
        hd = self.head_dim
        self.q = nn.Linear(dim, heads * hd, bias=bias)
        self.kv = nn.Linear(dim_memory or dim, 2 * self.kv_heads * hd, bias=bias)

    def init_cache(self) -> MemoryCache:
        return MemoryCache()

    def _fold(self, x: torch.Tensor, proj: nn.Linear, positions: torch.Tensor) -> torch.Tensor | None:
        """The scheme's fixed first rotation when ``proj``'s call on ``x`` should absorb it."""
        pos = self.position
        if not pos.uses_rotate or not fold_worthwhile(x) or hooked(proj):
            return None
        return pos.pre_rotation(positions)

    def memory_kv(self, memory: torch.Tensor, M: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory's keys and values (B, Hk, S, D); with M (G, D, D) the keys come out
        multiplied by it (folded into the weights)."""
        B, S, _ = memory.shape
        if M is None:
            kv = self.kv(memory)
        else:
            W, b = self.kv.weight, self.kv.bias
            nk = self.kv_heads * self.head_dim
            wk, bk = fold_rows(W[:nk], None if b is None else b[:nk], M, self.kv_heads)
            kv = F.linear(memory, torch.cat([wk, W[nk:]]), None if b is None else torch.cat([bk, b[nk:]]))
        k, v = kv.view(B, S, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, memory: torch.Tensor | None = None,
                memory_positions: torch.Tensor | None = None, cache: MemoryCache | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``memory`` may be omitted when ``cache`` already holds it. ``memory_mask`` (B, S):
        False marks padding frames."""
        B, T, _ = x.shape
        pos = self.position
        Mq = self._fold(x, self.q, positions)
        if Mq is None:
            q = self.q(x)
        else:
            q = F.linear(x, *fold_rows(self.q.weight, self.q.bias, Mq, self.heads))
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        if cache is not None and cache.k is not None:
            k, v, k_pos = cache.k, cache.v, cache.pos
        else:
            if memory is None:
                raise ValueError("cross-attention needs the memory on its first call")
            Mk = self._fold(memory, self.kv, positions)
            k, v = self.memory_kv(memory, Mk)
            k_pos = memory_positions if memory_positions is not None else torch.arange(memory.shape[1], device=x.device)
            if pos.uses_rotate:  # the keys rotate once, at their own positions (q and k rotate independently)
                turn = pos.rotate if Mk is None else pos.rotate_rest
                _, k = turn(q[:, :, :1], k, positions[..., :1], k_pos)
            if cache is not None:
                cache.k, cache.v, cache.pos = k, v, k_pos
        if pos.uses_rotate:
            turn = pos.rotate if Mq is None else pos.rotate_rest
            q, _ = turn(q, k[:, :, :1], positions, k_pos[..., :1])
        y = self.attend(q, k, v, positions, k_pos, mask=memory_mask)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))
