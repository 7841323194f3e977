"""Positional schemes. Each acts at up to three seams: ``embed``, ``rotate``, ``bias``."""

from archlab.nn.positional.absolute import LearnedAbsolute, NoPosition, Sinusoidal
from archlab.nn.positional.base import PositionalScheme
from archlab.nn.positional.bias import ALiBi, T5RelativeBias
from archlab.nn.positional.rope import RotaryEmbedding

__all__ = ["PositionalScheme", "NoPosition", "LearnedAbsolute", "Sinusoidal", "RotaryEmbedding", "ALiBi",
           "T5RelativeBias"]
