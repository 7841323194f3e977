"""Hierarchical transformer: a full-resolution stream plus streams compressed 2×, 4×, …,
each with its own blocks, merged into the prediction stream at every layer.

After lucidrains' "simple-hierarchical-transformer" experiment (the idea of the hourglass
transformer, Nawrot et al., 2021, with convolutional compression and per-layer merging):

    x = Embed(ids)                                   (B, T, D_e), D_e = max(dims)
    s⁰ = P x;  sʰ = Compress_h(x)                    stream h: ⌈T/stride_h⌉ tokens, token j
                                                     summarises positions [j·s−c+1, j·s]
    for each layer:  zʰ = Block_{l,h}(sʰ)            local/full/no attention, token shift, FFN
                     s⁰ = z⁰ + Merge_l(z⁰, z¹, …)    (all streams with ``merge_all``)
    logits = Head(N(s⁰));  every stream h also predicts the token after its window (aux loss)

Causality: fine position i reads stream token ⌊i/s⌋, whose window ends at ⌊i/s⌋·s ≤ i, and a
coarse token j predicts the token at j·s + 1, which no input of it has seen. What differs from
the peer: ``use_flash_attn`` selects the fused kernel for real; every stream has a KV cache
(bounded for local windows; strided streams emit a token when its group completes), so
generation costs one step per token; the main loss is always the fine stream's cross-entropy
and auxiliary terms are named and weighted separately.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archlab.catalog import BuildContext
from archlab.catalog.families import AUTO, check_int, model_kwargs, resolve_levels
from archlab.models.lm import IGNORE_INDEX, ModelOutput, init_embedding, init_weights
from archlab.nn.compress import new_groups
from archlab.nn.hierarchy import HierarchyMerge, StreamBlock, StreamState
from archlab.registry import COMPRESSOR, FFN, MIXER, NORM, POSITION, ConfigError, PartConfig


@dataclass
class HierarchicalCache:
    """Decoding state: per layer and stream the block state, per stream the last c − 1 fine
    embeddings (the compressor's window), per layer the merge's last projection of each
    stream's latest token, and the number of fine positions consumed."""

    states: list[list[StreamState]]
    tails: list
    lasts: list
    offset: int = 0


class HierarchicalLM(nn.Module):
    """The model; ``forward`` speaks archlab's protocol (:class:`ModelOutput`). Per-hierarchy
    arguments take a scalar (for all) or a tuple with one entry per hierarchy."""

    def __init__(
        self, *, num_tokens: int, dim: Any = 512, depth: int = 6, seq_len: int = 2048, heads: Any = 8,
        dim_head: Any = None, ff_mult: Any = 4.0, hierarchies: Any = 1, hierarchical_stride: Any = 1,
        window_sizes: Any = AUTO, compressor: str = "conv", merge_all: bool = False, token_shift: bool = True,
        use_flash_attn: bool = True, aux_loss_weight: float = 0.1, dim_embed: int | None = None,
        ffn: Any = "gelu", norm: Any = "rms", rope_base: float | None = 10000.0, rope_fraction: float = 1.0,
        position: Any = None,
        tie_embeddings: bool = False, dropout: float = 0.0, init_std: float = 0.02, init: str = "fan_in",
        vq_codes: int = 512, vq_dim: int = 32, vq_beta: float = 0.25, vq_weight: float = 1.0, names: Callable[[str], str] = str,
    ) -> None:
        super().__init__()
        self.levels = resolve_levels(hierarchies=hierarchies, dim=dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult,
                                     stride=hierarchical_stride, window_sizes=window_sizes, seq_len=seq_len, name=names)
        if compressor not in COMPRESSOR:
            raise ConfigError(f"{names('compressor')}: '{compressor}' is not allowed; allowed: {', '.join(COMPRESSOR.kinds())}")
        if aux_loss_weight < 0 or vq_weight < 0:
            raise ConfigError(f"{names('aux_loss_weight')}/{names('vq_weight')}: weights must be ≥ 0")
        check_int(names("depth"), depth, 1)
        L, H = self.levels, len(self.levels)
        D = dim_embed if dim_embed is not None else max(lv.dim for lv in L)
        check_int(names("dim_embed"), D, 1)
        self.depth, self.seq_len, self.num_tokens, self.dim_embed = depth, seq_len, num_tokens, D
        self.merge_all, self.aux_loss_weight, self.vq_weight = merge_all, aux_loss_weight, vq_weight
        self.compressor_kind = compressor
        ffn_cfg = FFN.parse(ffn, names("ffn"))
        norm_cfg = NORM.parse(norm, names("norm"))
        if norm_cfg.placement.kind != "pre":
            raise ConfigError(f"{names('norm')}.placement: the hierarchical family is pre-norm only; allowed: pre")

        pos_cfg = stream_position(position, rope_base, rope_fraction, names("position"))

        def ctx(d: int, heads: int = 1, head_dim: int | None = None, position: Any = None) -> BuildContext:
            return BuildContext(dim=d, heads=heads, kv_heads=heads, head_dim=head_dim or d, max_seq_len=seq_len,
                                dropout=dropout, init_std=init_std, position=position, depth=depth)

        def make_norm(d: int) -> nn.Module:
            return NORM.build(norm_cfg, ctx(d))

        self.embed = nn.Embedding(num_tokens, D)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.to_fine = nn.Identity() if D == L[0].dim else nn.Linear(D, L[0].dim, bias=False)
        self.compressors = nn.ModuleList(
            COMPRESSOR.build(PartConfig(kind=compressor), dim_in=D, dim_out=lv.dim, factor=lv.factor, stride=lv.stride,
                             heads=lv.heads, vq_codes=vq_codes, vq_dim=vq_dim, vq_beta=vq_beta, seed=i)
            for i, lv in enumerate(L[1:], 1)
        )
        # One positional scheme per stream, shared by its layers (one table, one set of parameters,
        # as the flat LM shares its scheme), at the stream's axial positions 0, 1, 2, …
        self.positions = nn.ModuleList(
            POSITION.build(pos_cfg, ctx(lv.dim, lv.heads, lv.dim_head)) for lv in L
        )
        if self.positions[0].uses_embed:
            raise ConfigError(f"{names('position')}.kind: '{pos_cfg.kind}' adds to the embeddings, which the streams "
                              "do not share; allowed: a scheme acting in attention (rope and its variants, alibi, "
                              "t5, relative, dynamic, cope, none)")
        self.layers = nn.ModuleList()
        for _ in range(depth):
            row = nn.ModuleList()
            for h, lv in enumerate(L):
                attn = None
                if lv.window != 0:
                    # window None: full causal attention; an int: the sliding window (mixer registry)
                    kind = "attention" if lv.window is None else {"kind": "local", "window": lv.window}
                    mixer = MIXER.parse(kind, names("window_sizes"))
                    attn = MIXER.build(mixer, ctx(lv.dim, lv.heads, lv.dim_head, self.positions[h]))
                    attn.fused = use_flash_attn
                ff = FFN.build(dataclasses.replace(ffn_cfg, mult=lv.ff_mult), ctx(lv.dim))
                row.append(StreamBlock(dim=lv.dim, attn=attn, ffn=ff, norm=make_norm, axial=lv.axial,
                                       shift=token_shift, dropout=dropout))
            self.layers.append(row)
        self.merges = nn.ModuleList()
        if H > 1:
            out = sum(lv.dim for lv in L) if merge_all else L[0].dim
            for _ in range(depth):
                self.merges.append(HierarchyMerge(dims=[lv.dim for lv in L], strides=[lv.stride for lv in L],
                                                  dim_out=out, hidden=2 * out, norm=make_norm))
        self.norm = make_norm(L[0].dim)
        self.head = nn.Linear(L[0].dim, num_tokens, bias=False)
        # Coarse streams predict the token after their window (no head when the weight is 0).
        n_aux = H - 1 if aux_loss_weight > 0 else 0
        self.aux_norms = nn.ModuleList(make_norm(lv.dim) for lv in L[1:1 + n_aux])
        self.aux_heads = nn.ModuleList(nn.Linear(lv.dim, num_tokens, bias=False) for lv in L[1:1 + n_aux])
        init_weights(self, init_std, depth, init)
        init_embedding(self.embed.weight, init_std, init)
        if tie_embeddings:
            if D != L[0].dim:
                raise ConfigError(f"{names('tie_embeddings')}: the head (width {L[0].dim}) can share the embedding "
                                  f"only when {names('dim_embed')} is {L[0].dim}, got {D}; untie or set it")
            self.head.weight = self.embed.weight

    # ------------------------------------------------------------------ decoding state

    def init_cache(self) -> HierarchicalCache:
        return HierarchicalCache(
            states=[[blk.init_state() for blk in row] for row in self.layers],
            tails=[None] * len(self.levels), lasts=[None] * self.depth,
        )

    # ------------------------------------------------------------------ forward

    def _streams(self, ids: torch.Tensor, cache: HierarchicalCache | None) -> tuple[list, list, dict]:
        """Every stream's final tokens (new ones only, with a cache), their first indices, and
        the compressors' auxiliary losses."""
        B, n = ids.shape
        i0 = cache.offset if cache is not None else 0
        x = self.drop(self.embed(ids))
        streams, j0s, aux = [self.to_fine(x)], [i0], {}
        for h, (lv, comp) in enumerate(zip(self.levels[1:], self.compressors), 1):
            tail = cache.tails[h] if cache is not None else None
            if tail is None:  # the left padding of the causal window
                tail = x.new_zeros(B, lv.factor - 1, x.shape[-1])
            ext = torch.cat([tail, x], dim=1)
            if cache is not None:
                cache.tails[h] = ext[:, ext.shape[1] - (lv.factor - 1):]
            z, extra = comp(ext, i0)
            streams.append(z)
            j0s.append(new_groups(i0, n, lv.stride)[0])
            if extra is not None and cache is None:
                aux[f"vq_x{lv.factor}"] = extra
        # Axial positions of every stream, one tensor per stream shared by all layers (RoPE reuses its tables).
        pos = [None if cache is not None else torch.arange(-(-s.shape[1] // lv.axial), device=ids.device)
               for s, lv in zip(streams, self.levels)]
        for li, row in enumerate(self.layers):
            zs = [
                blk(s, n0=j0, state=cache.states[li][h] if cache is not None else None, positions=pos[h])
                if s.shape[1] else s
                for h, (blk, s, j0) in enumerate(zip(row, streams, j0s))
            ]
            if self.merges:
                pooled, lasts = self.merges[li](zs, i0=i0, n=n, j0s=j0s,
                                                lasts=cache.lasts[li] if cache is not None else None)
                if cache is not None:
                    cache.lasts[li] = lasts
                if self.merge_all:
                    parts = pooled.split([lv.dim for lv in self.levels], dim=-1)
                    # stream token j receives the pooled value at its end position j·s (≥ everything it saw)
                    zs = [z + p[:, j0 * lv.stride - i0::lv.stride][:, : z.shape[1]]
                          for z, p, j0, lv in zip(zs, parts, j0s, self.levels)]
                else:
                    zs[0] = zs[0] + pooled
            streams = zs
        if cache is not None:
            cache.offset += n
        return streams, j0s, aux

    def forward(self, ids: torch.Tensor, *, targets: torch.Tensor | None = None,
                cache: HierarchicalCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> ModelOutput:
        """ids (B, n) at positions offset … offset+n−1 -> fine logits (B, n, V); with targets
        (B, n) the fine NLL (``nll``), and ``loss`` = nll + aux_loss_weight·Σ coarse NLLs
        + vq_weight·Σ VQ losses. ``aux`` names the unweighted terms: ``nll_x{c}``, ``vq_x{c}``."""
        if positions is not None or mask is not None:
            raise ValueError("the hierarchical family takes contiguous sequences: no positions or padding mask")
        i0 = cache.offset if cache is not None else 0
        streams, j0s, aux = self._streams(ids, cache)
        logits = self.head(self.norm(streams[0]))
        if targets is None:
            return ModelOutput(logits=logits)
        nll = _ce(logits, targets)
        loss = nll
        for h, (lv, norm, head) in enumerate(zip(self.levels[1:], self.aux_norms, self.aux_heads), 1):
            z = streams[h]
            if not z.shape[1]:
                continue
            ends = torch.arange(j0s[h], j0s[h] + z.shape[1], device=ids.device) * lv.stride - i0
            aux[f"nll_x{lv.factor}"] = _ce(head(norm(z)), targets.index_select(1, ends))
            loss = loss + self.aux_loss_weight * aux[f"nll_x{lv.factor}"]
        for k, v in aux.items():
            if k.startswith("vq_"):
                loss = loss + self.vq_weight * v
        return ModelOutput(logits=logits, loss=loss, nll=nll, aux=aux)

    @torch.no_grad()
    def stream_predictions(self, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stream with a head: (logits (B, m, V), the index in ``ids`` of the token each
        row predicts). A row must not depend on ``ids`` at or after that index (tested)."""
        streams, j0s, _ = self._streams(ids, None)
        T, dev = ids.shape[1], ids.device
        out = [(self.head(self.norm(streams[0])), torch.arange(1, T + 1, device=dev))]
        for h, (lv, norm, head) in enumerate(zip(self.levels[1:], self.aux_norms, self.aux_heads), 1):
            ends = torch.arange(streams[h].shape[1], device=dev) * lv.stride
            out.append((head(norm(streams[h])), ends + 1))
        return out


def stream_position(position: Any, rope_base: float | None, rope_fraction: float, where: str) -> PartConfig:
    """The streams' positional scheme: ``position`` (a kind or ``{kind: …}``) when given, else
    the peer-style arguments: RoPE of ``rope_base`` on ``rope_fraction`` of each head, or none."""
    if position is not None:
        return POSITION.parse(position, where)
    if not rope_base:
        return POSITION.parse("none", where)
    return POSITION.parse({"kind": "rope", "base": rope_base, "fraction": rope_fraction}, where)


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX)


class HierarchicalTransformer(HierarchicalLM):
    """The peer's argument names (simple-hierarchical-transformer) over the same module, with
    its ``return_loss`` convenience; ``forward`` always returns a :class:`ModelOutput`::

        model = HierarchicalTransformer(num_tokens=256, dim=(128, 256), depth=4, hierarchies=(1, 2))
        out = model(ids, return_loss=True)   # ids (B, T+1): out.loss, out.nll, out.aux {"nll_x2": …}
        logits = model(ids).logits           # (B, T, V)
    """

    def forward(self, ids: torch.Tensor, *, return_loss: bool = False, **kw: Any) -> ModelOutput:
        if not return_loss:
            return super().forward(ids, **kw)
        if "targets" in kw or "cache" in kw:
            raise ValueError("return_loss takes ids (B, T+1) and predicts ids[:, 1:]: pass no targets or cache")
        return super().forward(ids[:, :-1], targets=ids[:, 1:], **kw)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, **kw: Any) -> torch.Tensor:
        """Continue ``prompt`` (B, T) with cached decoding; see :func:`archlab.models.generate`."""
        from archlab.models.generation import generate

        return generate(self, prompt, max_new_tokens=max_new_tokens, **kw)


def from_config(model_cfg: Any) -> HierarchicalLM:
    """The model of a validated ModelConfig with ``family: hierarchical``."""
    return HierarchicalLM(**model_kwargs(model_cfg, model_cfg.family_config()))
