"""Token mixers. All share ``forward(x, *, positions, cache=None, mask=None) -> y`` and
``init_cache() -> cache`` for stepwise decoding."""

from archlab.nn.mixers.attention import Attention

__all__ = ["Attention"]
