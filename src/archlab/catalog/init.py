"""Initialisers by kind (``model.init``): the std of weight matrices and token embeddings."""

from __future__ import annotations

from archlab.nn.init import FanIn, Fixed
from archlab.registry import INIT, PartConfig


@INIT.register("fan_in", PartConfig, "N(0, 1/(3·fan_in)): PyTorch's nn.Linear variance; residual outputs ÷√(2·depth)")
def _fan_in(cfg: PartConfig, ctx=None):
    return FanIn()


@INIT.register("fixed", PartConfig, "N(0, model.init_std) (GPT-2); residual outputs ÷√(2·depth)")
def _fixed(cfg: PartConfig, ctx=None):
    return Fixed()
