"""A residual block: residual policy (where the norms sit, how the update joins the stream) +
token mixer + feed-forward."""

from __future__ import annotations

import torch
from torch import nn

from archlab.nn.mixers.base import TokenMixer
from archlab.nn.residual import ResidualPolicy, Stream


class Block(nn.Module):
    """``x ← residual1(x, mixer, norm1)``, then ``x ← residual2(x, ffn, norm2)``: pre-norm
    x + f(N(x)), post-norm (original Transformer) N(x + f(x)), or any registered policy. The
    norms stay attributes of the block (state-dict keys ``norm1``/``norm2``); dropout applies to
    the mixer's output. ``ffn`` None: the block is its mixer sublayer alone (memory-read and
    all-attention blocks), with no second norm or policy.

    ``stream`` (:class:`~archlab.nn.residual.Stream`) is what the model carries from block to
    block within one forward call, for policies that look back at earlier sublayers (LAuReL-PA)
    and mixers that are controlled across layers (PID attention); the mixer gets it only when
    it declares ``uses_stream``."""

    def __init__(self, *, mixer: TokenMixer, ffn: nn.Module | None, norm1: nn.Module, norm2: nn.Module | None,
                 residual1: ResidualPolicy, residual2: ResidualPolicy | None, dropout: float = 0.0) -> None:
        super().__init__()
        self.mixer, self.ffn, self.norm1, self.norm2 = mixer, ffn, norm1, norm2
        self.residual1, self.residual2 = residual1, residual2
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mixer_stream = bool(getattr(mixer, "uses_stream", False))

    @property
    def uses_stream(self) -> bool:
        return self.mixer_stream or self.residual1.uses_stream or bool(self.residual2 and self.residual2.uses_stream)

    def init_cache(self):
        return self.mixer.init_cache()

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor, cache=None,
                mask: torch.Tensor | None = None, stream: Stream | None = None) -> torch.Tensor:
        extra = {"stream": stream} if self.mixer_stream else {}
        if stream is not None:  # the residual stream as each sublayer receives it (LAuReL-PA)
            stream.inputs.append(x)
        x = self.residual1(x, lambda h: self.drop(self.mixer(h, positions=positions, cache=cache, mask=mask, **extra)),
                           self.norm1, stream)
        if self.ffn is None:
            return x
        if stream is not None:
            stream.inputs.append(x)
        return self.residual2(x, self.ffn, self.norm2, stream)
