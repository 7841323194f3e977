"""Model families, assembled from registered parts."""

from __future__ import annotations

from torch import nn

from archlab.models.generation import generate
from archlab.models.hierarchical import HierarchicalLM, HierarchicalTransformer
from archlab.models.lm import LM, ModelCache, ModelOutput
from archlab.registry import FAMILY

__all__ = [
    "LM", "HierarchicalLM", "HierarchicalTransformer", "ModelCache", "ModelOutput", "build_model", "generate",
]


def build_model(model_cfg) -> nn.Module:
    """The model of ``model_cfg.family`` (a validated :class:`archlab.config.ModelConfig`)."""
    return FAMILY.entry(model_cfg.family, "model.family").build(model_cfg)
