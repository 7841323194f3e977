"""PID control of attention across layers (PIDformer: Nguyen, Uribe, Nguyen & Baraniuk, ICML
2024, "PIDformer: Transformer Meets Control Theory", arXiv 2402.15989).

Self-attention read as one forward-Euler step of a state-space model on the value field,
u^{ℓ+1} = softmax(Q Kᵀ/√d)·u^ℓ (u^ℓ the layer's values V^ℓ), smooths its solution towards a
constant across tokens (rank collapse). PIDformer adds a feedback controller with the error
e^ℓ = f − u^ℓ against a reference f tied to the input:

    out^ℓ = softmax(Q^ℓ K^ℓᵀ/√d)·V^ℓ + λ_P·e^ℓ + λ_I·Σ_{m ≤ ℓ} e^m + λ_D·(e^ℓ − e^{ℓ−1})

per head, in value space, before the output projection (the residual stream, norms and
feed-forward of the block are unchanged). Here, as in the public implementation that says it
follows the authors', the first controlled layer of a forward call sets the reference
f = β·V^0 (its own values, scaled) and is not itself corrected; every later controlled layer
is, with the sum and the previous error carried in the :class:`~archlab.nn.residual.Stream`.
The sum starts at the first layer's error e^0 = f − V^0. All λ = 0 is plain attention exactly
(tests/test_memory_residual.py). The defaults λ_P = 0.8, λ_I = 0.5, λ_D = 0.05, β = 0.1 are the
fixed constants of that implementation (not learned). Not verified against the paper's text:
that implementation averages the integral (0.3·e + 0.7·I) and lags the derivative by a layer;
this module follows the paper's sum and e^ℓ − e^{ℓ−1} (docs/memory_residual.md).

The control is per token (each position's values against its own reference), so cached
decoding needs nothing beyond the stream of the current call.
"""

from __future__ import annotations

import torch
from torch import nn


class PIDControl(nn.Module):
    def __init__(self, *, p: float = 0.8, i: float = 0.5, d: float = 0.05, beta: float = 0.1) -> None:
        super().__init__()
        self.p, self.i, self.d, self.beta = float(p), float(i), float(d), float(beta)

    def extra_repr(self) -> str:
        return f"p={self.p}, i={self.i}, d={self.d}, beta={self.beta}"

    def forward(self, y: torch.Tensor, v: torch.Tensor, state: dict) -> torch.Tensor:
        """y (B, H, T, D): attention's output before the output projection; v (B, H, T, D): this
        layer's values at the same positions; ``state``: the stream's PID record (empty at the
        first controlled layer of the call)."""
        if "ref" not in state:
            ref = self.beta * v
            e = ref - v
            state.update(ref=ref, sum=e, prev=e)
            return y
        if state["ref"].shape != v.shape:
            raise ValueError(f"PID attention: values of shape {tuple(v.shape)} cannot be controlled against the "
                             f"reference of shape {tuple(state['ref'].shape)} set by an earlier layer; "
                             "controlled layers need the same heads and head width")
        e = state["ref"] - v
        total = state["sum"] + e
        out = y + self.p * e + self.i * total + self.d * (e - state["prev"])
        state.update(sum=total, prev=e)
        return out
