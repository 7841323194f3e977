"""Activation capture at named sites: what the analysis tools (sparse autoencoders, probes)
read from a model while it runs.

A site is a submodule's output, named by its dotted path in the model: ``embed``, ``blocks.N``
(the residual stream after block N), ``blocks.N.mixer``, ``blocks.N.ffn``, ``norm`` (the stream
the head reads), ``head`` (the logits); and for the hierarchical family its own paths. Aliases
``blocks.N.out`` = ``blocks.N`` and ``final`` = ``norm`` read more plainly.

    with capture(model, ["blocks.1.out", "blocks.1.mixer"]) as acts:
        model(ids)
    acts["blocks.1.out"]   # (B, T, D), detached, one tensor per forward call (a list if several)

Capture uses ``register_forward_hook`` (public PyTorch API); the hooks are removed when the
``with`` block ends, even on an error. Nothing changes in the forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

_ALIASES = {"final": "norm"}


def _path(site: str) -> str:
    if site in _ALIASES:
        return _ALIASES[site]
    return site[: -len(".out")] if site.endswith(".out") else site


def sites(model: nn.Module) -> list[str]:
    """The site names ``model`` offers: every submodule's dotted path (the model itself excluded)."""
    return [name for name, _ in model.named_modules() if name]


class Captured(dict):
    """``{site: tensor}`` after one forward call, ``{site: [tensor, ...]}`` after several."""


@contextlib.contextmanager
def capture(model: nn.Module, names: Iterable[str], *, detach: bool = True) -> Iterator[Captured]:
    """Record the outputs of the named sites for every forward pass inside the ``with`` block.
    Unknown names raise ``KeyError`` listing a few that exist."""
    names = list(names)
    modules: dict[str, nn.Module] = {}
    known = dict(model.named_modules())
    for site in names:
        path = _path(site)
        if not path or path not in known:
            examples = ", ".join(s for s in sites(model)[:8])
            raise KeyError(f"capture: no site {site!r} in {type(model).__name__}; sites include {examples}, ...")
        modules[site] = known[path]
    out = Captured()
    seen: dict[str, list[torch.Tensor]] = {site: [] for site in names}

    def hook_for(site: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = output if isinstance(output, torch.Tensor) else getattr(output, "logits", output)
            if isinstance(t, torch.Tensor):
                seen[site].append(t.detach() if detach else t)
        return hook

    handles = [mod.register_forward_hook(hook_for(site)) for site, mod in modules.items()]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
        for site, ts in seen.items():
            if ts:
                out[site] = ts[0] if len(ts) == 1 else ts


__all__ = ["Captured", "capture", "sites"]
