"""Positional schemes. Each acts at up to three seams: ``embed``, ``rotate``, ``bias``."""

from archlab.nn.positional.absolute import LearnedAbsolute, NoPosition, Sinusoidal
from archlab.nn.positional.base import PositionalScheme
from archlab.nn.positional.bias import ALiBi, T5RelativeBias
from archlab.nn.positional.cope import ContextualPosition
from archlab.nn.positional.learned_sinusoidal import LearnedSinusoidal
from archlab.nn.positional.relative import ClippedRelativeBias, DynamicPositionBias
from archlab.nn.positional.rope import RotaryEmbedding
from archlab.nn.positional.rotations import (
    ConditionalRotary,
    GivensRounds,
    OrthogonalMatrix,
    RotatedRotary,
)

__all__ = [
    "ALiBi", "ClippedRelativeBias", "ConditionalRotary", "ContextualPosition", "DynamicPositionBias", "GivensRounds", "LearnedAbsolute",
    "LearnedSinusoidal", "NoPosition", "OrthogonalMatrix", "PositionalScheme", "RotaryEmbedding", "RotatedRotary",
    "Sinusoidal", "T5RelativeBias",
]
