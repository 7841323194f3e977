"""Initialisers of a model's weight matrices and token embeddings (``model.init``).

An initialiser gives the std of a weight matrix from the number of inputs its matmul reads
(``fan_in``), the model depth and whether its output feeds the residual stream; biases start at
zero. Outputs that feed the residual stream are divided by √(2·depth) (GPT-2), so the stream's
variance does not grow with depth. Other parameters (norm gains, positional tables) keep the
initialisation their own module chose.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Initializer:
    kind: str = ""

    def base_std(self, fan_in: int, std: float) -> float:
        raise NotImplementedError

    def matrix_std(self, fan_in: int, *, std: float, depth: int, residual_out: bool = False) -> float:
        s = self.base_std(fan_in, std)
        return s / math.sqrt(2 * depth) if residual_out else s

    def linears(self, model: nn.Module, std: float, depth: int) -> None:
        """Every ``nn.Linear`` of ``model``: weights N(0, matrix_std²), biases zero."""
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                s = self.matrix_std(mod.in_features, std=std, depth=depth,
                                    residual_out=getattr(mod, "residual_out", False))
                nn.init.normal_(mod.weight, std=s)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def embedding(self, weight: torch.Tensor, std: float) -> None:
        """A token-embedding table (V, D), treated as the matrix of the LM head it may be tied to
        (fan-in D)."""
        nn.init.normal_(weight, std=self.matrix_std(weight.shape[1], std=std, depth=1))


class FanIn(Initializer):
    """N(0, 1/(3·fan_in)): the variance of PyTorch's own ``nn.Linear`` default (kaiming-uniform
    with a = √5, i.e. U(±1/√fan_in)) that x-transformers keeps, as a normal. It scales with
    width, so every layer's pre-activations start at the same scale whatever the width."""

    kind = "fan_in"

    def base_std(self, fan_in: int, std: float) -> float:
        return 1.0 / math.sqrt(3.0 * fan_in)


class Fixed(Initializer):
    """N(0, std) whatever the width (GPT-2's 0.02)."""

    kind = "fixed"

    def base_std(self, fan_in: int, std: float) -> float:
        return std
