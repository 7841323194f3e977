"""Echo: a Whisper-shaped speech recogniser built from archlab's registered parts.

    features (B, n_mels, F)  log-mel, F ≤ 2·n_audio_ctx frames
    x = GELU(Conv1d_k3(features)); x = GELU(Conv1d_k3,stride2(x))      (B, F/2, d_audio)
    x = N(Block_L(… Block_1(x)))                non-causal self-attention + feed-forward
    y = Embed(tokens)                           (B, T, d_text)
    y = DecoderBlock_L(… (y, memory=x))         causal self-attention, cross-attention, feed-forward
    logits = N(y) · Embedᵀ                      the output projection is the embedding (tied)

Attention is archlab's: the mixers, positional schemes, feed-forwards and norms come from the
registries by kind, so every rotary variant (rotations before RoPE, learnable knobs, multi-scale
bases), every bias (relative, dynamic, ALiBi, T5), local + global attention and convolution +
attention plug into Echo exactly as into the LM. Each layer has its own scheme instance (the
seed rotates per layer). The seed's ``max_rel_dist`` adds a clipped relative bias of that reach
to every attention (stacked with the rotary scheme:
:class:`~archlab.nn.positional.stack.PositionStack`); ``cross_attention`` decides whether
cross-attention sees positions too (decoder positions against frame positions).
``checkpointing`` recomputes each block's activations in the backward pass
(``torch.utils.checkpoint``): the same gradients for less peak memory.

The options object is any object with the :class:`archlab.hf.echo.EchoConfig` attributes (this
floor does not import transformers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from archlab.catalog import BuildContext
from archlab.models.lm import IGNORE_INDEX, ModelOutput
from archlab.nn.block import Block
from archlab.nn.mixers.cross_attention import CrossAttention
from archlab.nn.positional.stack import PositionStack
from archlab.registry import FFN, MIXER, NORM, POSITION, RESIDUAL, ConfigError, PartConfig


@dataclass
class EchoCache:
    """Decoding state: per decoder layer the self-attention cache and the cross-attention's
    memory keys/values, and the number of tokens consumed."""

    self_layers: list
    cross_layers: list
    offset: int = 0

    @property
    def layers(self) -> list:
        """The per-layer self-attention states (what advances with the tokens)."""
        return self.self_layers

    def reorder(self, index: torch.Tensor) -> None:
        for c in (*self.self_layers, *self.cross_layers):
            c.reorder(index)


def _part(registry, value: Any, where: str, **fill: Any) -> PartConfig:
    """A registry part config from a kind or mapping; ``fill`` sets fields it has (e.g. base)."""
    cfg = registry.parse(value, where)
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in fill.items() if k in names and v is not None})


def _context(c: Any, *, dim: int, heads: int, causal: bool, max_len: int, depth: int) -> BuildContext:
    return BuildContext(dim=dim, heads=heads, kv_heads=heads, head_dim=dim // heads, max_seq_len=max_len,
                        causal=causal, bias=False, dropout=c.dropout, init_std=c.init_std, depth=depth)


def layer_position(c: Any, ctx: BuildContext, where: str, *, relative: bool = True) -> nn.Module:
    """One layer's scheme: the configured one (unless it only adds to the input embedding, which
    :func:`input_position` does), stacked with a clipped relative bias of reach ``max_rel_dist``
    (> 0). Every layer has its own instance (its own angles and bias table)."""
    main = POSITION.build(_part(POSITION, c.position, where, base=c.base), ctx)
    parts = [] if main.uses_embed else [main]
    if relative and c.max_rel_dist:
        parts.append(POSITION.build(POSITION.parse({"kind": "relative", "max_rel_dist": c.max_rel_dist}, where), ctx))
    if not parts:
        return POSITION.build(POSITION.parse("none", where), ctx)
    return parts[0] if len(parts) == 1 else PositionStack(parts)


def input_position(c: Any, ctx: BuildContext, where: str) -> nn.Module | None:
    """The configured scheme when it adds a signal to the input embedding (absolute kinds)."""
    main = POSITION.build(_part(POSITION, c.position, where, base=c.base), ctx)
    return main if main.uses_embed else None


@torch.no_grad()
def init_parameter(module: nn.Module, name: str, p: torch.Tensor, *, init_std: float) -> None:
    """The seed's initialisation of one parameter: token embeddings N(0, init_std); linear and
    convolution weights Xavier-uniform, their biases 0; norm gains 1 and biases 0; anything else
    (positional schemes: a relative-bias table N(0, init_std), Givens angles 0) keeps its own."""
    if isinstance(module, nn.Embedding):
        nn.init.normal_(p, std=init_std)
    elif isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.xavier_uniform_(p) if name == "weight" else nn.init.zeros_(p)
    elif p.dim() == 1 and name in ("weight", "bias") and "Norm" in type(module).__name__:
        nn.init.ones_(p) if name == "weight" else nn.init.zeros_(p)


def _recompute(block: nn.Module, x: torch.Tensor, kw: dict) -> torch.Tensor:
    """A block call for ``torch.utils.checkpoint``: the position tensors are copied, so that the
    schemes' per-forward memos (keyed on the positions tensor) miss and the recomputation
    saves exactly the tensors the first pass saved."""
    return block(x, **{k: v.clone() if k.endswith("positions") and v is not None else v for k, v in kw.items()})


class DecoderBlock(nn.Module):
    """y ← y + SelfAttn(N₁y); y ← y + CrossAttn(N₂y, memory); y ← y + FFN(N₃y) (pre-norm)."""

    def __init__(self, *, mixer: nn.Module, cross: CrossAttention, ffn: nn.Module, norms: list[nn.Module],
                 residual: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        self.mixer, self.cross, self.ffn = mixer, cross, ffn
        self.norm1, self.norm_cross, self.norm2 = norms
        self.residual = residual
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, y, *, positions, memory, memory_positions, cache=None, cross_cache=None, memory_mask=None):
        y = self.residual(y, lambda h: self.drop(self.mixer(h, positions=positions, cache=cache)), self.norm1)
        y = self.residual(y, lambda h: self.drop(self.cross(h, positions=positions, memory=memory,
                                                           memory_positions=memory_positions, cache=cross_cache,
                                                           memory_mask=memory_mask)), self.norm_cross)
        return self.residual(y, self.ffn, self.norm2)


class EchoEncoder(nn.Module):
    def __init__(self, c: Any) -> None:
        super().__init__()
        d, H, L = c.n_audio_state, c.n_audio_head, c.n_audio_layer
        self.n_ctx, self.checkpointing = c.n_audio_ctx, c.checkpointing
        ctx = _context(c, dim=d, heads=H, causal=False, max_len=c.n_audio_ctx, depth=L)
        self.conv1 = nn.Conv1d(c.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.position = input_position(c, ctx, "position")
        mixer, ffn, norm = (_part(MIXER, c.encoder_mixer, "encoder_mixer"), _part(FFN, c.ffn, "ffn"),
                            _part(NORM, c.norm, "norm"))
        blocks = []
        for _ in range(L):
            bctx = dataclasses.replace(ctx, position=layer_position(c, ctx, "position"))
            blocks.append(Block(mixer=MIXER.build(mixer, bctx), ffn=FFN.build(ffn, bctx), norm1=NORM.build(norm, bctx),
                                norm2=NORM.build(norm, bctx), residual1=RESIDUAL.build(PartConfig(kind="pre"), bctx),
                                residual2=RESIDUAL.build(PartConfig(kind="pre"), bctx), dropout=c.dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = NORM.build(norm, ctx)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, n_mels, F) -> memory (B, ⌈F/2⌉, d_audio)."""
        if features.dim() != 3 or features.shape[1] != self.conv1.in_channels:
            raise ValueError(f"input_features must be (batch, {self.conv1.in_channels} mel bins, frames), "
                             f"got {tuple(features.shape)}")
        x = F.gelu(self.conv2(F.gelu(self.conv1(features)))).transpose(1, 2)
        if x.shape[1] > self.n_ctx:
            raise ValueError(f"input_features: {features.shape[-1]} frames give {x.shape[1]} encoder positions, "
                             f"more than n_audio_ctx={self.n_ctx} (at most {2 * self.n_ctx} frames)")
        positions = torch.arange(x.shape[1], device=x.device)
        if self.position is not None:
            x = self.position.embed(x, positions)
        for block in self.blocks:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(_recompute, block, x, dict(positions=positions), use_reentrant=False)
            else:
                x = block(x, positions=positions)
        return self.norm(x)


class EchoDecoder(nn.Module):
    def __init__(self, c: Any) -> None:
        super().__init__()
        d, H, L = c.n_text_state, c.n_text_head, c.n_text_layer
        self.n_ctx, self.checkpointing = c.n_text_ctx, c.checkpointing
        ctx = _context(c, dim=d, heads=H, causal=True, max_len=c.n_text_ctx, depth=L)
        self.embed = nn.Embedding(c.vocab_size, d)
        self.position = input_position(c, ctx, "position")
        # cross-attention: positions of both sides when cross_attention is set (bidirectional
        # distances: a token may precede or follow a frame), none otherwise
        xctx = dataclasses.replace(ctx, causal=False, max_seq_len=max(c.n_text_ctx, c.n_audio_ctx))
        mixer, ffn, norm = (_part(MIXER, c.decoder_mixer, "decoder_mixer"), _part(FFN, c.ffn, "ffn"),
                            _part(NORM, c.norm, "norm"))
        blocks = []
        for _ in range(L):
            bctx = dataclasses.replace(ctx, position=layer_position(c, ctx, "position"))
            xpos = (layer_position(c, xctx, "position") if c.cross_attention
                    else POSITION.build(POSITION.parse("none", "position"), xctx))
            cross = CrossAttention(dim=d, heads=H, position=xpos, dim_memory=c.n_audio_state, dropout=c.dropout)
            cross.out.residual_out = True
            blocks.append(DecoderBlock(mixer=MIXER.build(mixer, bctx), cross=cross, ffn=FFN.build(ffn, bctx),
                                       norms=[NORM.build(norm, bctx) for _ in range(3)],
                                       residual=RESIDUAL.build(PartConfig(kind="pre"), bctx), dropout=c.dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = NORM.build(norm, ctx)

    def init_cache(self) -> EchoCache:
        return EchoCache([b.mixer.init_cache() for b in self.blocks], [b.cross.init_cache() for b in self.blocks])

    def forward(self, ids: torch.Tensor, memory: torch.Tensor | None, *, cache: EchoCache | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) after ``cache.offset`` earlier tokens -> logits (B, T, V)."""
        T = ids.shape[1]
        start = cache.offset if cache is not None else 0
        if start + T > self.n_ctx:
            raise ValueError(f"decoder input: {start + T} tokens exceed n_text_ctx={self.n_ctx}")
        positions = torch.arange(start, start + T, device=ids.device)
        mem_pos = None if memory is None else torch.arange(memory.shape[1], device=ids.device)
        y = self.embed(ids)
        if self.position is not None:
            y = self.position.embed(y, positions)
        for i, block in enumerate(self.blocks):
            kw = dict(positions=positions, memory=memory, memory_positions=mem_pos, memory_mask=memory_mask)
            if cache is not None:
                y = block(y, cache=cache.self_layers[i], cross_cache=cache.cross_layers[i], **kw)
            elif self.checkpointing and self.training and torch.is_grad_enabled():
                y = checkpoint(_recompute, block, y, kw, use_reentrant=False)
            else:
                y = block(y, **kw)
        if cache is not None:
            cache.offset += T
        return self.norm(y) @ self.embed.weight.t()


class EchoModel(nn.Module):
    """Encoder + decoder; ``forward`` speaks archlab's protocol (:class:`ModelOutput`)."""

    def __init__(self, c: Any) -> None:
        super().__init__()
        for name in ("n_audio_state", "n_text_state"):
            d, h = getattr(c, name), getattr(c, name.replace("state", "head"))
            if d % h:
                raise ConfigError(f"{name}: {d} is not divisible by {name.replace('state', 'head')}={h}")
        self.encoder = EchoEncoder(c)
        self.decoder = EchoDecoder(c)
        self.eot_id = int(getattr(c, "eos_token_id", 0) or 0)  # what padded label slots read as

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.decoder.embed

    @property
    def n_text_ctx(self) -> int:
        """Decoder positions (start token included)."""
        return self.decoder.n_ctx

    def init_cache(self) -> EchoCache:
        return self.decoder.init_cache()

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder(features)

    def fast_decoder(self, memory: torch.Tensor, *, capacity: int):
        """The lean greedy-decoding path over ``memory`` (archlab.models.echo_fastdecode), or
        None where this model's parts need the generic one."""
        from archlab.models.echo_fastdecode import EchoFastDecoder

        return EchoFastDecoder.build(self, memory, capacity=capacity)

    def decode(self, ids: torch.Tensor, memory: torch.Tensor, cache: EchoCache | None = None) -> torch.Tensor:
        return self.decoder(ids, memory, cache=cache)

    def forward(self, features: torch.Tensor | None, ids: torch.Tensor | None = None, *,
                targets: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                cache: EchoCache | None = None) -> ModelOutput:
        """``memory`` (the encoder output) is computed from ``features`` unless given or cached.
        Without ``ids``, ``targets`` are whole label rows (B, L + 1), [start, text…, end,
        −100…] as the trainer's speech batches hold them: the decoder reads ``targets[:, :-1]``
        (padding read as the end token) and is scored on ``targets[:, 1:]``."""
        if ids is None:
            if targets is None:
                raise ValueError("EchoModel: give decoder ids, or label rows as targets")
            ids, targets = teacher_forcing(targets, pad_id=self.eot_id)
        if memory is None and features is not None:
            memory = self.encoder(features)
        logits = self.decoder(ids, memory, cache=cache)
        if targets is None:
            return ModelOutput(logits=logits)
        return ModelOutput(logits=logits, loss=(nll := token_nll(logits, targets)), nll=nll)


def teacher_forcing(labels: torch.Tensor, *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label rows (B, L + 1) -> decoder inputs (B, L) (ignored slots read as ``pad_id``) and
    targets (B, L)."""
    ids = labels[:, :-1]
    return torch.where(ids == IGNORE_INDEX, torch.full_like(ids, pad_id), ids), labels[:, 1:]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the counted targets (half-precision logits scored in float32)."""
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat.float() if flat.dtype in (torch.float16, torch.bfloat16) else flat,
                           targets.reshape(-1), ignore_index=IGNORE_INDEX)


def from_config(model_cfg: Any) -> EchoModel:
    """Family ``echo``: an EchoModel for a validated ModelConfig, in the seed's initialisation
    (:func:`init_parameter`)."""
    from archlab.catalog.families import echo_namespace

    ns = echo_namespace(model_cfg, model_cfg.family_config())
    model = EchoModel(ns)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            init_parameter(module, name, p, init_std=ns.init_std)
    return model


@torch.no_grad()
def greedy_decode(model: nn.Module, features: torch.Tensor | None, prompt: torch.Tensor, *, max_new_tokens: int,
                  eos_token_id: int | None = None, use_cache: bool = True, fast: bool = True,
                  memory: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy transcription: ``prompt`` (B, P) start tokens continued by argmax until every row
    has produced ``eos_token_id`` (rows that finished repeat it) or ``max_new_tokens``. ``model``
    speaks the recogniser protocol: ``encode(features)``, ``init_cache()``, ``decode(ids,
    memory, cache)`` -> logits (EchoModel; the Whisper baseline of archlab.models.whisper).
    With the cache and ``fast``, a model's ``fast_decoder(memory, capacity=)`` is used when it
    offers one that accepts its parts (EchoModel: archlab.models.echo_fastdecode). ``memory``:
    the encoder's output when the caller has it already (``features`` is then not read)."""
    was = model.training
    model.eval()
    try:
        if memory is None:
            memory = model.encode(features)
        ids, done = prompt, torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        build = getattr(model, "fast_decoder", None) if use_cache and fast else None
        fd = build(memory, capacity=prompt.shape[1] + max(max_new_tokens - 1, 0)) if build is not None else None
        if fd is not None:
            return _greedy_fast(fd, prompt, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
        cache = model.init_cache() if use_cache else None
        step_in = ids
        for _ in range(max_new_tokens):
            logits = model.decode(step_in if use_cache else ids, memory, cache)[:, -1]
            nxt = logits.argmax(-1)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            step_in = nxt[:, None]
            if eos_token_id is not None and bool(done.all()):
                break
        return ids
    finally:
        model.train(was)


def _greedy_fast(fd: Any, prompt: torch.Tensor, *, max_new_tokens: int, eos_token_id: int | None) -> torch.Tensor:
    """greedy_decode's loop on a fast decoder (one ``step(tokens)`` per position)."""
    ids, done = prompt, torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for t in range(prompt.shape[1]):
        logits = fd.step(prompt[:, t])
    for i in range(max_new_tokens):
        nxt = logits.argmax(-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if (eos_token_id is not None and bool(done.all())) or i == max_new_tokens - 1:
            break
        logits = fd.step(nxt)
    return ids
