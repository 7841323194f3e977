"""What a part's builder is told about the model it goes into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class BuildContext:
    dim: int
    heads: int
    kv_heads: int
    head_dim: int
    max_seq_len: int
    causal: bool = True  # False for encoders: attention and biases are bidirectional
    bias: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    position: Any = None  # the PositionalScheme the layer's attention uses
    depth: int = 1
    layer: int = 0  # the index of the block being built (Mix-LN picks post- or pre-norm by it)
