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
``with`` block ends, even on an error. Nothing changes in the forward pass. :func:`splice`
is the one that does change it: the site's output is replaced by ``fn(output)`` (a sparse
autoencoder's reconstruction, zeros for an ablation), and the rest of the model reads that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

_ALIASES = {"final": "norm"}


def _path(site: str) -> str:
    if site in _ALIASES:
        return _ALIASES[site]
    return site[: -len(".out")] if site.endswith(".out") else site


def site_module(model: nn.Module, site: str) -> nn.Module:
    """The submodule behind ``site``; ``KeyError`` naming a few sites that exist otherwise."""
    path = _path(site)
    known = dict(model.named_modules())
    if not path or path not in known:
        examples = ", ".join(s for s in sites(model)[:8])
        raise KeyError(f"capture: no site {site!r} in {type(model).__name__}; sites include {examples}, ...")
    return known[path]


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
    modules = {site: site_module(model, site) for site in names}
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


@contextlib.contextmanager
def splice(model: nn.Module, site: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the ``with`` block, every forward pass replaces the output of ``site`` (a tensor)
    by ``fn(output)``, of the same shape; the downstream modules read the replacement."""
    module = site_module(model, site)

    def hook(mod: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"splice: site {site!r} returns {type(output).__name__}, not a tensor")
        new = fn(output)
        if new.shape != output.shape:
            raise ValueError(f"splice: replacement for {site!r} is {tuple(new.shape)}, "
                             f"the site's output {tuple(output.shape)}")
        return new.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


__all__ = ["Captured", "capture", "site_module", "sites", "splice"]
