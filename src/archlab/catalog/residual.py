"""Residual policies by kind (``norm.placement`` of a layer): where the norm sits around each
sublayer's residual update."""

from __future__ import annotations

from archlab.catalog.context import BuildContext
from archlab.nn.residual import PostNorm, PreNorm
from archlab.registry import RESIDUAL, PartConfig


@RESIDUAL.register("pre", PartConfig, "pre-norm: x + f(N(x))")
def _pre(cfg: PartConfig, ctx: BuildContext):
    return PreNorm()


@RESIDUAL.register("post", PartConfig, "post-norm: N(x + f(x)) (the original Transformer)")
def _post(cfg: PartConfig, ctx: BuildContext):
    return PostNorm()
