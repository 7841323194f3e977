"""Token mixers. All keep the protocol of :mod:`archlab.nn.mixers.base`:
``forward(x, *, positions, cache=None, mask=None) -> y`` and ``init_cache() -> cache`` (a cache
with ``len`` and ``reorder``) for stepwise decoding."""

from archlab.nn.kernels.sliding_window import sliding_window_attention
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.base import MixerCache, TokenMixer
from archlab.nn.mixers.conv_attention import ConvAttention
from archlab.nn.mixers.local import LocalAttention

__all__ = ["Attention", "ConvAttention", "LocalAttention", "MixerCache", "TokenMixer", "sliding_window_attention"]
