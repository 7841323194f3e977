"""Residual policies: how a block adds a sublayer's output to the residual stream.

A policy is called as ``policy(x, f, norm)`` with the stream ``x``, the sublayer ``f`` (a
callable on a tensor) and that sublayer's norm; it holds no parameters of its own here (a
learned residual, such as LAuReL's, would). ``final_norm`` says whether the stream still needs a
norm after the last block (pre-norm) or ends normalised (post-norm).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ResidualPolicy(nn.Module):
    kind: str = ""
    final_norm: bool = True

    def forward(self, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], norm: nn.Module) -> torch.Tensor:
        raise NotImplementedError


class PreNorm(ResidualPolicy):
    """x + f(N(x)) (GPT-2 and most decoders since)."""

    kind = "pre"
    final_norm = True

    def forward(self, x, f, norm):
        return x + f(norm(x))


class PostNorm(ResidualPolicy):
    """N(x + f(x)) (the original Transformer)."""

    kind = "post"
    final_norm = False

    def forward(self, x, f, norm):
        return norm(x + f(x))
