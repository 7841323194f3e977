"""The token-mixer protocol every mixer kind implements (attention, local attention,
convolution + attention; retention and memory reads later).

A mixer maps the stream ``x`` (B, T, D) to (B, T, D), mixing information across positions:

* ``forward(x, *, positions, cache=None, mask=None)``: ``positions`` (T,) or (B, T) are the
  absolute positions of the T tokens; ``cache`` (from :meth:`init_cache`) holds what earlier
  decoding steps left, and the call appends to it; ``mask`` (B, Tk) marks the keys that exist
  (left padding).
* ``init_cache()``: an empty per-layer decoding state.

A cache holds the state of earlier tokens for one layer: ``len(cache)`` is the number of
tokens it has seen and ``reorder(index)`` keeps the batch rows ``index`` (beam search, HF's
cache reordering). The property tests (causality, cache = recomputation, gradients) hold every
registered mixer to this contract; :func:`is_mixer` checks the shape of it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class MixerCache(Protocol):
    def __len__(self) -> int: ...

    def reorder(self, index: torch.Tensor) -> None: ...


@runtime_checkable
class TokenMixer(Protocol):
    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache: MixerCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def init_cache(self) -> MixerCache: ...


def is_mixer(module: object) -> bool:
    """Whether ``module`` has the token-mixer methods and its fresh cache the cache methods."""
    return isinstance(module, TokenMixer) and isinstance(module.init_cache(), MixerCache)
