"""The archlab decoder-only language model, read top to bottom.

tokens -> embedding (+ absolute position signal, if the scheme has one) -> depth × Block
(norm policy + token mixer + feed-forward, each chosen by name, per layer) -> final norm ->
LM head (tied to the embedding by default) -> logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from archlab.catalog import BuildContext
from archlab.nn.block import Block
from archlab.nn.init import Initializer
from archlab.nn.residual import Stream
from archlab.registry import FFN, INIT, MIXER, NORM, POSITION, RESIDUAL, PartConfig

IGNORE_INDEX = -100  # targets with this value are not counted (prompt / padding tokens)


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None  # what training minimises: nll + weighted auxiliary terms
    nll: torch.Tensor | None = None  # mean next-token negative log-likelihood (nats) over counted targets
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # named extra terms, for logging


@dataclass
class ModelCache:
    """Per-layer decoding state plus the number of positions already consumed."""

    layers: list
    offset: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        for c in self.layers:
            c.reorder(index)


def context_for(cfg, *, causal: bool = True, position=None) -> BuildContext:
    return BuildContext(
        dim=cfg.dim, heads=cfg.heads, kv_heads=cfg.resolved_kv_heads(), head_dim=cfg.resolved_head_dim(),
        max_seq_len=cfg.max_seq_len, causal=causal, bias=cfg.bias, dropout=cfg.dropout,
        init_std=cfg.init_std, position=position, depth=cfg.depth,
    )


def build_blocks(cfg, *, causal: bool, shared_position: nn.Module) -> nn.ModuleList:
    """One Block per layer from the resolved per-layer configs. Layers without their own
    ``position`` share the model's scheme instance (one table, one set of parameters)."""
    blocks = []
    for i, lc in enumerate(cfg.layer_configs()):
        ctx = context_for(cfg, causal=causal)
        ctx.layer = i
        ctx.position = POSITION.build(lc.position, ctx) if lc.position is not None else shared_position
        ffn = FFN.build(lc.ffn, ctx)  # None: no feed-forward sublayer (kind 'none')
        blocks.append(Block(
            mixer=MIXER.build(lc.mixer, ctx), ffn=ffn,
            norm1=NORM.build(lc.norm, ctx), norm2=NORM.build(lc.norm, ctx) if ffn is not None else None,
            residual1=RESIDUAL.build(lc.norm.placement, ctx),
            residual2=RESIDUAL.build(lc.norm.placement, ctx) if ffn is not None else None,
            dropout=cfg.dropout,
        ))
    return nn.ModuleList(blocks)


def initializer(rule: str) -> Initializer:
    """The registered initialiser ``model.init`` names (``fan_in``, ``fixed``, ...)."""
    return INIT.build(PartConfig(kind=rule))


def matrix_std(fan_in: int, *, rule: str, std: float, depth: int, residual_out: bool = False) -> float:
    """The std of a weight matrix whose matmul reads ``fan_in`` inputs, under ``rule``."""
    return initializer(rule).matrix_std(fan_in, std=std, depth=depth, residual_out=residual_out)


def init_weights(model: nn.Module, std: float, depth: int, rule: str = "fixed") -> None:
    """Linear weights by ``rule``'s :meth:`~archlab.nn.init.Initializer.matrix_std`, biases zero."""
    initializer(rule).linears(model, std, depth)


def init_embedding(weight: torch.Tensor, std: float, rule: str = "fixed") -> None:
    """A token-embedding table (V, D) by ``rule`` (treated as the tied head's matrix, fan-in D)."""
    initializer(rule).embedding(weight, std)


class LM(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.dim
        self.embed = nn.Embedding(V, D)
        self.position = POSITION.build(cfg.position, context_for(cfg))
        self.blocks = build_blocks(cfg, causal=True, shared_position=self.position)
        # Post-norm blocks end normalised already; pre-norm needs a final norm before the head
        # (the last block's last policy decides: Mix-LN ends pre-norm unless α = 1).
        last = self.blocks[-1]
        final = (last.residual2 or last.residual1).final_norm
        self.norm = NORM.build(cfg.layers.default.norm, context_for(cfg)) if final else nn.Identity()
        # a Stream is carried through the blocks only when some part looks back or is controlled
        self.uses_stream = any(b.uses_stream for b in self.blocks)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.head = nn.Linear(D, V, bias=False)
        init_weights(self, cfg.init_std, cfg.depth, cfg.init)
        init_embedding(self.embed.weight, cfg.init_std, cfg.init)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # Parts with auxiliary training losses (e.g. an orthogonality penalty), found once so a
        # model without any pays nothing per step; a plain list, not registered submodules.
        self._aux_parts = [m for m in self.modules() if m is not self and callable(getattr(m, "aux_losses", None))]

    def collect_aux(self) -> dict[str, torch.Tensor]:
        """Sum of every part's ``aux_losses()`` (already weighted), by name."""
        aux: dict[str, torch.Tensor] = {}
        for m in self._aux_parts:
            for name, value in m.aux_losses().items():
                aux[name] = aux[name] + value if name in aux else value
        return aux

    def init_cache(self) -> ModelCache:
        return ModelCache([b.init_cache() for b in self.blocks])

    def forward(
        self,
        ids: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: ModelCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """ids (B, T) -> logits (B, T, V); with targets (B, T) also the mean NLL.

        ``positions`` default to offset + 0..T−1 (offset = tokens already in ``cache``).
        ``mask`` (B, T_total) marks real tokens (False: padding) across cache and new tokens.
        """
        B, T = ids.shape
        if positions is None:
            start = cache.offset if cache is not None else 0
            positions = torch.arange(start, start + T, device=ids.device)
        x = self.embed(ids)
        if self.position.uses_embed:
            x = self.position.embed(x, positions)
        x = self.drop(x)
        stream = Stream() if self.uses_stream else None
        for i, block in enumerate(self.blocks):
            x = block(x, positions=positions, cache=cache.layers[i] if cache is not None else None, mask=mask,
                      stream=stream)
        if cache is not None:
            cache.offset += T
        logits = self.head(self.norm(x))
        if targets is None:
            return ModelOutput(logits=logits)
        flat = logits.reshape(-1, logits.shape[-1])
        if flat.dtype in (torch.float16, torch.bfloat16):  # the loss in at least fp32
            flat = flat.float()
        nll = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX)
        aux = self.collect_aux() if self._aux_parts else {}
        loss = nll + sum(aux.values()) if aux else nll
        return ModelOutput(logits=logits, loss=loss, nll=nll, aux=aux)


