"""Warm starts (``train.warm_start``): one streaming pass over the start of the training split,
then each part overwrites the weights it names (docs/warm_start.md).

Order: the parts that set the token embedding first, then the closed form (which reads the
model as the embedding left it). Everything is a pure function of the tokens read and
``train.seed`` (the projections' generator), so every rank of a DDP run computes the same
weights and a run started again starts from the same point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from archlab.catalog.warm import WARM, ClosedFormConfig
from archlab.nn import warm as W
from archlab.registry import ConfigError


@dataclass
class Statistics:
    """The tokens of the statistics pass, with what more than one part needs."""

    tokens: np.ndarray
    vocab: int
    seq_len: int
    batch: int
    generator: torch.Generator

    def counts(self) -> np.ndarray:
        return W.token_counts(self.tokens, self.vocab)

    def windows(self):
        """Non-overlapping (B, seq_len) windows of the tokens, in order (a short tail is dropped)."""
        n = (len(self.tokens) // self.seq_len) * self.seq_len
        t = torch.as_tensor(np.asarray(self.tokens[:n], dtype=np.int64)).view(-1, self.seq_len)
        yield from t.split(self.batch)

    def bigram_counts(self) -> torch.Tensor:
        """(V, V) counts of (token, next token) pairs."""
        t = np.asarray(self.tokens, dtype=np.int64)
        flat = np.bincount(t[:-1] * self.vocab + t[1:], minlength=self.vocab * self.vocab)
        return torch.from_numpy(flat.astype(np.float64)).view(self.vocab, self.vocab)


def _embedding(model: nn.Module) -> nn.Embedding:
    emb = getattr(model, "embed", None)
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(f"train.warm_start: {type(model).__name__} has no token embedding to set")
    return emb


def code_width(cfg, model: nn.Module, vocab: int) -> int:
    """The code bits: the part's width, else the model's own (a model whose embedding must
    hold the codes as they are, such as SAFU's, names it ``code_width``), else ⌊log2 V⌋ + 1."""
    if cfg.width is not None:
        return int(cfg.width)
    return int(getattr(model, "code_width", 0) or W.default_width(vocab))


def set_embedding(model: nn.Module, table: torch.Tensor, *, scale: float, train: bool,
                  generator: torch.Generator) -> None:
    """Write (V, w) ``table`` into the model's embedding: into its first w columns (zeros after)
    for a model that keeps non-negative codes (``nonnegative_embedding``), else through
    :func:`~archlab.nn.warm.to_width`; rows rescaled together so their mean norm is ``scale`` ×
    that of the table ``model.init`` drew (the scale the rest of the network was drawn for)."""
    emb = _embedding(model)
    V, D = emb.weight.shape
    if getattr(model, "nonnegative_embedding", False):
        if table.shape[1] > D:
            raise ConfigError(f"train.warm_start: codes of width {table.shape[1]} do not fit the embedding "
                              f"width {D}; lower the width")
        out = torch.zeros(V, D, dtype=torch.float64)
        out[:, :table.shape[1]] = table
    else:
        out = W.to_width(table.to(torch.float64), D, generator)
    drawn = emb.weight.detach().to(torch.float64).norm(dim=1).mean()
    norms = out.norm(dim=1)
    mean = norms[norms > 0].mean() if bool((norms > 0).any()) else torch.tensor(1.0, dtype=torch.float64)
    with torch.no_grad():
        emb.weight.copy_((out * (scale * drawn / mean)).to(emb.weight.dtype))
    emb.weight.requires_grad_(train)


class BitCipherPart:
    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module, stats: Statistics) -> dict[str, Any]:
        b = code_width(self.cfg, model, stats.vocab)
        codes = W.bit_cipher(stats.counts(), b)
        set_embedding(model, codes, scale=self.cfg.scale, train=self.cfg.train, generator=stats.generator)
        return {"width": b}


class CooccurrencePart:
    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module, stats: Statistics) -> dict[str, Any]:
        c = self.cfg
        b = code_width(c, model, stats.vocab)
        codes = W.bit_cipher(stats.counts(), b)
        vec = W.cooccurrence(stats.tokens, codes, c.radius, c.combine)
        if c.self_code:
            vec = torch.cat([codes / codes.norm(dim=1, keepdim=True), vec], 1)
        set_embedding(model, vec, scale=c.scale, train=c.train, generator=stats.generator)
        return {"width": b, "vector_width": vec.shape[1]}


class ClosedFormPart:
    def __init__(self, cfg: ClosedFormConfig) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module, stats: Statistics) -> dict[str, Any]:
        hook = getattr(model, "closed_form_warm_start", None)
        layers = self.cfg.resolved_layers(getattr(model, "family", "lm"))
        if hook is not None:  # a model with softmax layers of its own (SAFU) sets them itself
            return hook(stats, layers=layers, smoothing=self.cfg.smoothing)
        F = stats.bigram_counts()
        logp = W.closed_form(F, K=1.0, smoothing=self.cfg.smoothing)  # (V, V): log P(next | current)
        info: dict[str, Any] = {}
        if "embed" in layers:
            centred = logp - logp.mean(1, keepdim=True)
            u, s, _ = torch.linalg.svd(centred, full_matrices=False)
            D = _embedding(model).weight.shape[1]
            set_embedding(model, u[:, :D] * s[:D], scale=1.0, train=True, generator=stats.generator)
            info["embed_rank"] = min(D, len(s))
        if "head" in layers:
            info.update(self._head(model, stats, logp))
        return info

    def _head(self, model: nn.Module, stats: Statistics, logp: torch.Tensor) -> dict[str, Any]:
        """The head as (read the current token off the head's input) ∘ (the closed-form layer):
        X minimises Σ_t ‖z_t X − e(x_t)‖² + ridge·(tr G / D)·‖X‖² over the statistics tokens
        (z_t what the head reads at position t, as the model now computes it), and the head's
        matrix becomes (X · log P)ᵀ, so its logits at init are ≈ log P(next | current)."""
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear) or head.bias is not None:
            raise ConfigError("train.warm_start: closed_form needs the model's bias-free linear head")
        device = head.weight.device
        D, V = head.in_features, stats.vocab
        G = torch.zeros(D, D, dtype=torch.float64, device=device)
        A = torch.zeros(V, D, dtype=torch.float64, device=device)
        seen: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for ids in stats.windows():
                    ids = ids.to(device)
                    seen.clear()
                    model(ids)
                    z = seen[-1].reshape(-1, D).to(torch.float64)
                    G += z.T @ z
                    A.index_add_(0, ids.reshape(-1), z)
        finally:
            handle.remove()
            model.train(was_training)
        lam = self.cfg.ridge * float(torch.diagonal(G).mean()) + 1e-12
        X = torch.linalg.solve(G + lam * torch.eye(D, dtype=G.dtype, device=device), A.T)  # (D, V)
        with torch.no_grad():
            head.weight.copy_((X @ logp.to(device)).T.to(head.weight.dtype))
        return {"ridge": lam}


def bit_cipher_part(cfg, ctx=None) -> BitCipherPart:
    return BitCipherPart(cfg)


def cooccurrence_part(cfg, ctx=None) -> CooccurrencePart:
    return CooccurrencePart(cfg)


def closed_form_part(cfg, ctx=None) -> ClosedFormPart:
    return ClosedFormPart(cfg)


def warm_start(model: nn.Module, cfg, tokens: np.ndarray) -> dict[str, Any]:
    """Apply ``cfg.train.warm_start`` to ``model`` from ``tokens`` (the statistics pass's).
    Returns what was done: tokens read, seconds, and each part's details."""
    ws = cfg.train.warm_start
    t0 = time.perf_counter()
    tokens = np.asarray(tokens[:ws.tokens])
    if len(tokens) < 2:
        raise ConfigError(f"train.warm_start.tokens: the statistics pass needs at least 2 tokens, got {len(tokens)}")
    micro = max(1, cfg.train.batch // cfg.train.grad_accum)
    stats = Statistics(tokens=tokens, vocab=cfg.model.vocab_size, seq_len=min(cfg.train.seq_len, len(tokens)),
                       batch=micro, generator=torch.Generator().manual_seed(cfg.train.seed + 7919))
    parts = [WARM.parse(p, "train.warm_start.parts") for p in ws.parts]
    parts.sort(key=lambda p: p.kind == "closed_form")  # last: it reads the model as the embedding left it
    done = {}
    for p in parts:
        done[p.kind] = WARM.build(p).apply(model, stats)
    return {"tokens": int(len(tokens)), "seconds": time.perf_counter() - t0, "parts": done}
