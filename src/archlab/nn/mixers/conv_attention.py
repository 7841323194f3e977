"""Attention with a parallel depthwise convolution branch, in one token mixer.

    c_t[d] = Σ_{j=0}^{k−1} w[d, j] · x_{t+j−p}[d]          (depthwise: one filter per channel)
    sum:   y = Attn(x) + c
    gate:  y = g ⊙ Attn(x) + (1 − g) ⊙ c,   g = σ(a), a ∈ R^dim learned, a = 0 at init

Causal (decoder) p = k − 1: the filter sees the current token and the k − 1 before it
(left zero padding). Non-causal (encoder) p = ⌊(k − 1)/2⌋: the filter is centred, seeing
⌊(k − 1)/2⌋ tokens before and ⌈(k − 1)/2⌉ after (an even kernel leans one token to the
future). The convolution gives every layer a cheap, exactly local, order-aware view
(what attention has to learn from a positional scheme) while attention keeps global
mixing. Related hybrids put the convolution in sequence with attention (Conformer, Gulati
et al., 2020) or on the q/k/v projections (Primer's multi-dconv-head attention, So et al.,
2021); here it is a parallel branch reduced to its core: no extra projections, k·dim
(+ dim for the gate) parameters per layer. The gate is per channel: σ(a_d) decides, for
channel d, how much of the output comes from attention rather than the convolution.

Decoding: the branch needs the last k − 1 inputs, kept in :class:`ConvAttentionCache`
beside the attention's KV cache, so stepping with a cache reproduces the full forward.
Padding (``mask`` False) inputs are zeroed before the convolution, which makes a left-padded
row behave like the unpadded row with its implicit zero history.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from archlab.nn.cache import KVCache
from archlab.nn.mixers.attention import Attention


class ConvAttentionCache:
    """Decoding state of one :class:`ConvAttention` layer: the attention's KV cache and the
    last k − 1 (masked) inputs of the convolution, (B, k − 1, dim); None before the first call."""

    def __init__(self, attn: KVCache) -> None:
        self.attn = attn
        self.conv: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.attn)

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search / HF cache reordering)."""
        self.attn.reorder(index)
        if self.conv is not None:
            self.conv = self.conv.index_select(0, index)


class ConvAttention(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        attention: Attention,
        kernel: int = 4,
        combine: Literal["sum", "gate"] = "sum",
        causal: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if kernel < 1:
            raise ValueError(f"kernel must be ≥ 1, got {kernel}")
        if combine not in ("sum", "gate"):
            raise ValueError(f"combine '{combine}'; allowed: sum, gate")
        self.attn = attention
        self.uses_stream = bool(getattr(attention, "uses_stream", False))  # PID-controlled attention
        self.kernel = kernel
        self.combine = combine
        self.causal = causal
        # Small taps (the catalog passes the residual-output scale): at init the branch adds a
        # perturbation of the size of attention's output, not a copy of the normalised input.
        self.weight = nn.Parameter(torch.randn(dim, kernel) * init_std)  # (dim, k): w[d, j]
        self.gate = nn.Parameter(torch.zeros(dim)) if combine == "gate" else None

    def init_cache(self) -> ConvAttentionCache:
        return ConvAttentionCache(self.attn.init_cache())

    def conv(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """Depthwise convolution of x (B, T, D) -> (B, T, D). Causal: ``history`` (B, k − 1, D)
        holds the inputs before x (zeros when None); non-causal: centred zero padding."""
        k = self.kernel
        B, _, D = x.shape
        if self.causal:
            if history is None:
                history = x.new_zeros(B, k - 1, D)
            xp = torch.cat([history, x], dim=1)
        else:
            xp = F.pad(x, (0, 0, (k - 1) // 2, k // 2))
        w = self.weight.to(x.dtype).unsqueeze(1)  # (D, 1, k) for groups=D
        return F.conv1d(xp.transpose(1, 2), w, groups=D).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        cache: ConvAttentionCache | None = None,
        mask: torch.Tensor | None = None,
        stream=None,
    ) -> torch.Tensor:
        if cache is not None and not self.causal:
            raise ValueError("a non-causal conv_attention sees later tokens and cannot decode with a cache")
        extra = {"stream": stream} if self.uses_stream else {}
        a = self.attn(x, positions=positions, cache=cache.attn if cache is not None else None, mask=mask, **extra)
        T = x.shape[1]
        xc = x if mask is None else x * mask[:, -T:, None].to(x.dtype)
        history = cache.conv if cache is not None else None
        c = self.conv(xc, history)
        if cache is not None and self.kernel > 1:
            past = xc if history is None else torch.cat([history, xc], dim=1)
            if past.shape[1] < self.kernel - 1:  # fewer tokens so far than the filter's reach
                past = torch.cat([past.new_zeros(past.shape[0], self.kernel - 1 - past.shape[1], past.shape[2]),
                                  past], dim=1)
            cache.conv = past[:, -(self.kernel - 1):]
        if self.gate is None:
            return a + c
        g = torch.sigmoid(self.gate).to(x.dtype)
        return g * a + (1 - g) * c
