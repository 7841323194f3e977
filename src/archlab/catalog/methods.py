"""Training methods by kind (``train.method``): how a step obtains its gradient. The methods
are built by :mod:`archlab.train.methods` (declared here so the config validates the name
without importing the trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archlab.registry import METHOD, ConfigError, PartConfig

METHOD.declare("backprop", PartConfig, "the exact gradient by backpropagation", build="archlab.train.methods:Backprop")
METHOD.declare("forward_gradient", PartConfig,
               "a gradient estimate from forward-mode directional derivatives along seeded perturbations "
               "(no backward pass); train.forward_gradient holds its knobs",
               build="archlab.train.methods:ForwardGradient")


@dataclass
class ForwardGradientConfig:
    """``train.forward_gradient`` (read when ``train.method: forward_gradient``; docs/forward_gradient.md).

    Each micro-batch draws ``perturbations`` directions ν_k (regenerated from ``seed``, the step,
    the micro-batch and k; never stored), computes d_k = ∇L·ν_k by one forward-mode pass each,
    and sets the gradient to ``scaled``: (1/K) Σ d_k ν_k (Baydin et al. 2022: unbiased for
    E[ν νᵀ] = I), or ``sign_median``: (1/K) Σ α_k ν_k with α_k = sign(d_k) where |d_k| is at
    least the median of the |d|, else 0 (noise_step's estimator)."""

    perturbations: int = 16
    distribution: Literal["rademacher", "gaussian", "ternary"] = "rademacher"
    density: float = 1.0  # ternary: the fraction of non-zero entries (each ±1)
    estimator: Literal["scaled", "sign_median"] = "scaled"
    seed: int = 0
    replay: str | None = None  # a forward_gradient.jsonl of an earlier run: take its scalars instead of computing them

    def check(self, where: str = "train.forward_gradient") -> None:
        if self.perturbations < 1:
            raise ConfigError(f"{where}.perturbations: must be ≥ 1, got {self.perturbations}")
        if not 0 < self.density <= 1:
            raise ConfigError(f"{where}.density: must be in (0, 1], got {self.density}")
        if self.density != 1.0 and self.distribution != "ternary":
            raise ConfigError(f"{where}.density: only read when distribution is ternary "
                              f"(distribution is {self.distribution}); leave it out")
        if self.seed < 0:
            raise ConfigError(f"{where}.seed: must be ≥ 0, got {self.seed}")
