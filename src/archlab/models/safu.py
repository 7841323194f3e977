"""A SAFU-style model (family ``safu``): self-attentive feed-forward units, as a reconstruction.

The papers behind it (Williams et al., arXiv 2311.07510 and 2311.11012) do not publish all
their equations; what follows is our reading, documented in docs/warm_start.md and tested:

* Token vectors X come from an embedding meant to hold non-negative codes (bit-cipher codes;
  a cold start gets the codes in id order, ``train.warm_start`` in frequency order).
* Three context reads of the current token's vector x_t, none with projections: the
  similarities s_u = x_t · x_u to each vector of a context, laid out by slot, are mixed by a
  learnt slot matrix W (a = softmax(s · W) over the filled slots), and the read is c = a · X.
  - **block**: the fixed-position block of ``block`` tokens containing t (slot = position mod
    block; only positions ≤ t are filled);
  - **radial**: the last ``radius`` tokens (slot = offset t − u);
  - **document**: every token of the window so far, a = softmax(s / temperature) (no slots).
* Each read feeds a softmax hidden layer h_k = softmax(U_k c_k + b_k); the output layer reads
  the three hidden distributions: logits = O [h_block; h_radial; h_document] + b.

The document read is quadratic in the window as written. Its similarity cache makes it linear:
the similarity of two tokens depends only on their types, so with G = E Eᵀ the read is
Σ_w n_w exp(G[x_t, w]/τ) E_w / Σ_w n_w exp(G[x_t, w]/τ) over the running type counts n. The
model uses that form when its embedding is frozen (``freeze_embeddings``) and when decoding
with a cache; both forms give the same outputs (tests/test_warm_start.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archlab.models.lm import IGNORE_INDEX, ModelOutput, init_weights
from archlab.nn import warm as W


@dataclass
class SAFUCache:
    """Decoding state: the last max(block, radius) − 1 tokens and their positions (what the
    block and radial reads can still see), the type counts of everything read (the document
    read's similarity cache), and the number of positions consumed."""

    tail: torch.Tensor | None = None  # (B, L) ids
    tail_pos: torch.Tensor | None = None  # (L,)
    counts: torch.Tensor | None = None  # (B, V)
    offset: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        if self.tail is not None:
            self.tail = self.tail.index_select(0, index)
        if self.counts is not None:
            self.counts = self.counts.index_select(0, index)


def slot_read(S: torch.Tensor, keys: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor, mix: torch.Tensor,
              kind: str) -> torch.Tensor:
    """One slotted read. S (B, Tq, Tk) similarities, keys (B, Tk, d), positions of queries and
    keys, ``mix`` (n, n) the slot matrix W; ``kind`` block or radial. Returns (B, Tq, d)."""
    n = mix.shape[0]
    pq, pk = pos_q[:, None], pos_k[None, :]
    if kind == "block":
        valid = (pk <= pq) & (torch.div(pk, n, rounding_mode="floor") == torch.div(pq, n, rounding_mode="floor"))
        slot = (pk % n).expand_as(valid)
    else:
        off = pq - pk
        valid = (off >= 0) & (off < n)
        slot = off.clamp(0, n - 1)
    B = S.shape[0]
    idx = slot.expand(B, *slot.shape)
    s = torch.zeros(B, S.shape[1], n, dtype=S.dtype, device=S.device).scatter_add(-1, idx, S * valid)
    filled = torch.zeros(slot.shape[0], n, device=S.device).scatter_add(-1, slot, valid.float()) > 0
    logits = (s @ mix).masked_fill(~filled, float("-inf"))
    a = torch.softmax(logits, -1)
    A = a.gather(-1, idx) * valid
    return A @ keys


class SAFU(nn.Module):
    family = "safu"
    nonnegative_embedding = True  # warm starts write codes as they are (no projection)

    def __init__(self, cfg) -> None:
        super().__init__()
        opts = cfg.family_config()
        self.cfg = cfg
        V = cfg.vocab_size
        d = self.code_width = opts.width if opts.width is not None else cfg.dim
        self.block, self.radius, self.temperature = opts.block, opts.radius, opts.temperature
        self.embed = nn.Embedding(V, d)
        self.mix_block = nn.Parameter(torch.eye(opts.block))
        self.mix_radial = nn.Parameter(torch.eye(opts.radius))
        self.hidden = nn.ModuleList(nn.Linear(d, d) for _ in range(3))
        self.output = nn.Linear(3 * d, V)
        init_weights(self, cfg.init_std, 1, cfg.init)
        with torch.no_grad():  # the codes in id order: non-negative, distinct, one-hot for the first d ids
            self.embed.weight.copy_(W.bit_cipher(np.zeros(V), d).to(self.embed.weight.dtype))
        self.embed.weight.requires_grad_(not opts.freeze_embeddings)

    def init_cache(self) -> SAFUCache:
        return SAFUCache()

    @property
    def uses_similarity_cache(self) -> bool:
        return not self.embed.weight.requires_grad

    def _document_counts(self, ids: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
        """The document read through the type counts (linear in the window)."""
        E = self.embed.weight
        V = E.shape[0]
        G = E @ E.T
        g = G[ids]  # (B, T, V)
        g = (g - g.max(-1, keepdim=True).values) / self.temperature
        counts = F.one_hot(ids, V).to(E.dtype).cumsum(1)
        if before is not None:
            counts = counts + before[:, None, :]
        w = counts * g.exp()
        return (w @ E) / w.sum(-1, keepdim=True)

    def reads(self, ids: torch.Tensor, *, positions: torch.Tensor | None = None,
              cache: SAFUCache | None = None) -> list[torch.Tensor]:
        """The block, radial and document reads (B, T, d) of every position of ``ids``."""
        B, T = ids.shape
        start = cache.offset if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=ids.device)
        keys, pos_k = ids, positions
        if cache is not None and cache.tail is not None:
            keys, pos_k = torch.cat([cache.tail, ids], 1), torch.cat([cache.tail_pos, positions])
        E = self.embed.weight
        xq, xk = E[ids], E[keys]
        S = xq @ xk.transpose(1, 2)
        c_block = slot_read(S, xk, positions, pos_k, self.mix_block, "block")
        c_radial = slot_read(S, xk, positions, pos_k, self.mix_radial, "radial")
        if cache is not None or self.uses_similarity_cache:
            c_doc = self._document_counts(ids, cache.counts if cache is not None else None)
        else:
            causal = pos_k[None, :] <= positions[:, None]
            c_doc = torch.softmax((S / self.temperature).masked_fill(~causal, float("-inf")), -1) @ xk
        if cache is not None:
            keep = max(self.block, self.radius) - 1
            cache.tail, cache.tail_pos = keys[:, keys.shape[1] - keep:], pos_k[pos_k.shape[0] - keep:]
            add = F.one_hot(ids, E.shape[0]).to(E.dtype).sum(1)
            cache.counts = add if cache.counts is None else cache.counts + add
            cache.offset += T
        return [c_block, c_radial, c_doc]

    def hiddens(self, reads: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.softmax(layer(c), -1) for layer, c in zip(self.hidden, reads)], -1)

    def forward(self, ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: SAFUCache | None = None,
                mask: torch.Tensor | None = None) -> ModelOutput:
        if mask is not None and not bool(mask.all()):
            raise ValueError("family safu: padded batches are not supported (every row must be real tokens)")
        logits = self.output(self.hiddens(self.reads(ids, positions=positions, cache=cache)))
        if targets is None:
            return ModelOutput(logits=logits)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                              ignore_index=IGNORE_INDEX)
        return ModelOutput(logits=logits, loss=nll, nll=nll)

    # ------------------------------------------------------------------ warm start

    @torch.no_grad()
    def closed_form_warm_start(self, stats, *, layers: list[str], smoothing: float) -> dict:
        """Layer by layer in closed form (nn/warm.py), reads computed by the model as it stands:
        ``hidden``: U_k from F = Σ c_k yᵀ, y the next token's code (the embedding row, clamped
        at 0 and normalised to sum 1), K the mean L1 norm of c_k; ``output``: O from
        F = Σ h e(next)ᵀ over the three hidden distributions (each sums to 1: K = 3)."""
        was_training = self.training
        self.eval()
        E = self.embed.weight
        d, V = self.code_width, E.shape[0]
        info: dict = {}
        try:
            if "hidden" in layers:
                Fk = [torch.zeros(d, d, dtype=torch.float64, device=E.device) for _ in range(3)]
                mass, n = [0.0, 0.0, 0.0], 0
                for ids in stats.windows():
                    ids = ids.to(E.device)
                    y = E[ids[:, 1:]].clamp(min=0).to(torch.float64)
                    y = (y / y.sum(-1, keepdim=True).clamp_min(1e-12)).reshape(-1, d)
                    for k, c in enumerate(self.reads(ids)):
                        x = c[:, :-1].reshape(-1, d).to(torch.float64)
                        Fk[k] += x.T @ y
                        mass[k] += float(x.abs().sum())
                    n += y.shape[0]
                Ks = [max(1.0, m / max(n, 1)) for m in mass]
                for layer, F_, K in zip(self.hidden, Fk, Ks):
                    layer.weight.copy_(W.closed_form(F_, K, smoothing).T.to(layer.weight.dtype))
                    layer.bias.zero_()
                info["hidden_K"] = Ks
            if "output" in layers:
                Fo = torch.zeros(V, 3 * d, dtype=torch.float64, device=E.device)  # Fᵀ, filled by next token
                mass, n = 0.0, 0
                for ids in stats.windows():
                    ids = ids.to(E.device)
                    h = self.hiddens(self.reads(ids))[:, :-1].reshape(-1, 3 * d).to(torch.float64)
                    Fo.index_add_(0, ids[:, 1:].reshape(-1), h)
                    mass, n = mass + float(h.sum()), n + h.shape[0]
                K = max(1.0, mass / max(n, 1))
                self.output.weight.copy_(W.closed_form(Fo.T, K, smoothing).T.to(self.output.weight.dtype))
                self.output.bias.zero_()
                info["output_K"] = K
        finally:
            self.train(was_training)
        return info


def from_config(model_cfg) -> SAFU:
    return SAFU(model_cfg)
