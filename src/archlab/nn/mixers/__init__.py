"""Token mixers. All share ``forward(x, *, positions, cache=None, mask=None) -> y`` and
``init_cache() -> cache`` for stepwise decoding."""

from archlab.nn.kernels.sliding_window import sliding_window_attention
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.conv_attention import ConvAttention
from archlab.nn.mixers.local import LocalAttention

__all__ = ["Attention", "ConvAttention", "LocalAttention", "sliding_window_attention"]
