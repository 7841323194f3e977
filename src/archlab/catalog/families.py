"""Model families by kind (``model.family``): the knobs of each family and their validation.

The models themselves are built by ``models/`` (declared here with ``FAMILY.declare`` so the
config validates a family and its ``family_options`` without importing the model code).
``hierarchical``'s options, their resolution into per-stream levels and the checks that name
the offending config key live here; :mod:`archlab.models.hierarchical` builds the streams.
The speech families (``echo``, ``whisper``; ``inputs = "audio"``: they train on corpus
``speech``) map the model section onto the recogniser's dimensions here too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from archlab.catalog.context import BuildContext
from archlab.registry import COMPRESSOR, FAMILY, FFN, MIXER, POSITION, ConfigError, PartConfig, to_dict

AUTO = "auto"


@dataclass(frozen=True)
class Level:
    """One hierarchy, resolved: compression factor, stride, width and attention shape."""

    factor: int
    stride: int
    dim: int
    heads: int
    dim_head: int
    ff_mult: float
    window: int | None  # None: full causal attention; 0: no attention

    @property
    def axial(self) -> int:
        return self.factor // self.stride


def _per_level(name: str, value: Any, n: int, hierarchies: tuple) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{name}: {len(value)} values for {n} hierarchies {list(hierarchies)}; "
                              f"give one value for all or exactly {n}")
        return list(value)
    return [value] * n


def require_ffn(m: Any, family: str) -> None:
    """Families whose blocks always have a feed-forward refuse ``ffn: none``."""
    if m.layers.default.ffn.kind == "none":
        raise ConfigError(f"model.layers.default.ffn.kind: family '{family}' keeps a feed-forward in every block; "
                          f"allowed: {', '.join(k for k in FFN.kinds() if k != 'none')}")


def check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{name}: expected an integer ≥ {lo}, got {v!r}")
    return v


def resolve_levels(*, hierarchies: Any, dim: Any, heads: Any, dim_head: Any, ff_mult: Any, stride: Any,
                   window_sizes: Any, seq_len: int, name: Callable[[str], str] = str) -> list[Level]:
    """Scalars broadcast to every hierarchy; tuples must have one entry per hierarchy.
    Raises a one-line ConfigError naming the argument (``name`` maps to config keys)."""
    hs = tuple(hierarchies) if isinstance(hierarchies, (list, tuple)) else (hierarchies,)
    hs = tuple(check_int(f"{name('hierarchies')}[{i}]", h, 1) for i, h in enumerate(hs))
    if not hs or hs[0] != 1 or any(b <= a for a, b in zip(hs, hs[1:])):
        raise ConfigError(f"{name('hierarchies')}: must start with 1 (the full-resolution stream that predicts) "
                          f"and increase strictly, got {list(hs)}")
    n = len(hs)
    per = {k: _per_level(name(k), v, n, hs) for k, v in (("dim", dim), ("heads", heads), ("dim_head", dim_head),
                                                          ("ff_mult", ff_mult), ("hierarchical_stride", stride),
                                                          ("window_sizes", window_sizes))}
    levels = []
    for i, c in enumerate(hs):
        d = check_int(f"{name('dim')}[{i}]", per["dim"][i], 1)
        h = check_int(f"{name('heads')}[{i}]", per["heads"][i], 1)
        dh = per["dim_head"][i]
        if dh is None:
            if d % h:
                raise ConfigError(f"{name('heads')}[{i}]: {h} heads do not divide width {d}; set {name('dim_head')}")
            dh = d // h
        dh = check_int(f"{name('dim_head')}[{i}]", dh, 1)
        fm = per["ff_mult"][i]
        if isinstance(fm, bool) or not isinstance(fm, (int, float)) or not 0 < fm < math.inf:
            raise ConfigError(f"{name('ff_mult')}[{i}]: expected a positive finite number, got {fm!r}")
        s = check_int(f"{name('hierarchical_stride')}[{i}]", per["hierarchical_stride"][i], 1)
        if c % s or (i == 0 and s != 1):
            raise ConfigError(f"{name('hierarchical_stride')}[{i}]: stride {s} must divide the compression factor {c}"
                              + (" (the full-resolution stream has stride 1)" if i == 0 else ""))
        w = per["window_sizes"][i]
        if w == AUTO:
            w = max(1, seq_len // c // 2)  # half the stream's (axial) length
        elif w is not None:
            w = check_int(f"{name('window_sizes')}[{i}]", w, 0)
        levels.append(Level(factor=c, stride=s, dim=d, heads=h, dim_head=dh, ff_mult=float(fm), window=w))
    return levels


@dataclass
class HierarchicalConfig(PartConfig):
    """``model.family_options`` of family ``hierarchical``. ``None`` takes the value from the
    model section (dims: model.dim, heads: model.heads, dim_head: model.head_dim, ff_mult:
    model.layers.default.ffn.mult, seq_len: model.max_seq_len); lists give one per hierarchy."""

    hierarchies: int | list[int] = field(default_factory=lambda: [1, 2])
    dims: int | list[int] | None = None
    heads: int | list[int] | None = None
    dim_head: int | list[int] | None = None
    ff_mult: float | list[float] | None = None
    hierarchical_stride: int | list[int] = 1
    # int: local window; null: full causal; 0: no attention; auto: half the stream (one, or one per hierarchy)
    window_sizes: int | str | list[int | str | None] | None = AUTO
    compressor: str = "conv"
    merge_all: bool = False
    token_shift: bool = True
    use_flash_attn: bool = True
    aux_loss_weight: float = 0.1
    seq_len: int | None = None
    dim_embed: int | None = None
    vq_codes: int = 512
    vq_dim: int = 32
    vq_beta: float = 0.25
    vq_weight: float = 1.0

    def check(self, ctx: dict, where: str) -> None:
        model_kwargs(ctx["model"], self, where)


def model_kwargs(m: Any, opts: HierarchicalConfig, where: str = "model.family_options") -> dict[str, Any]:
    """Keyword arguments of :class:`HierarchicalLM` for a ModelConfig, validated (one-line
    ConfigErrors naming the config key)."""
    default = m.layers.default
    if m.layers.overrides:
        raise ConfigError("model.layers.overrides: not used by family 'hierarchical'; "
                          f"set per-hierarchy values in {where} (window_sizes, heads, ...)")
    if to_dict(default.mixer) != to_dict(MIXER.parse("attention", "mixer")) or default.position is not None:
        raise ConfigError("model.layers.default: family 'hierarchical' uses its own attention; "
                          "leave mixer (attention) and position (unset) at their defaults")
    require_ffn(m, "hierarchical")
    if m.bias:
        raise ConfigError("model.bias: biases in linear layers are not supported by family 'hierarchical'; "
                          "allowed: false")
    if m.kv_heads is not None:
        raise ConfigError("model.kv_heads: grouped-query attention is not supported by family 'hierarchical'")
    if default.ffn.kind not in ("gelu", "swiglu"):
        raise ConfigError(f"model.layers.default.ffn.kind: '{default.ffn.kind}'; allowed for family "
                          "'hierarchical': gelu, swiglu")

    model_keys = {"ffn": "model.layers.default.ffn", "norm": "model.layers.default.norm", "depth": "model.depth",
                  "tie_embeddings": "model.tie_embeddings"}

    def name(k: str) -> str:
        return model_keys.get(k) or f"{where}.{'dims' if k == 'dim' else k}"

    if opts.seq_len is not None:
        check_int(f"{where}.seq_len", opts.seq_len, 1)
    kw = dict(
        num_tokens=m.vocab_size, depth=m.depth, seq_len=opts.seq_len if opts.seq_len is not None else m.max_seq_len,
        dim=opts.dims if opts.dims is not None else m.dim,
        heads=opts.heads if opts.heads is not None else m.heads,
        dim_head=opts.dim_head if opts.dim_head is not None else m.head_dim,
        ff_mult=opts.ff_mult if opts.ff_mult is not None else default.ffn.mult,
        hierarchies=opts.hierarchies, hierarchical_stride=opts.hierarchical_stride, window_sizes=opts.window_sizes,
        compressor=opts.compressor, merge_all=opts.merge_all, token_shift=opts.token_shift,
        use_flash_attn=opts.use_flash_attn, aux_loss_weight=opts.aux_loss_weight, dim_embed=opts.dim_embed,
        ffn=default.ffn, norm=default.norm, position=m.position,
        tie_embeddings=m.tie_embeddings, dropout=m.dropout, init_std=m.init_std, init=m.init, vq_codes=opts.vq_codes,
        vq_dim=opts.vq_dim, vq_beta=opts.vq_beta, vq_weight=opts.vq_weight, names=name,
    )
    levels = resolve_levels(hierarchies=kw["hierarchies"], dim=kw["dim"], heads=kw["heads"], dim_head=kw["dim_head"],
                            ff_mult=kw["ff_mult"], stride=kw["hierarchical_stride"], window_sizes=kw["window_sizes"],
                            seq_len=kw["seq_len"], name=name)
    for i, lv in enumerate(levels):  # every stream's scheme must build at its own head width, and act in attention
        ctx = BuildContext(dim=lv.dim, heads=lv.heads, kv_heads=lv.heads, head_dim=lv.dim_head, max_seq_len=kw["seq_len"])
        try:
            scheme = POSITION.build(m.position, ctx)
        except ValueError as e:
            raise ConfigError(f"model.position: {e} (stream {i}: heads {lv.heads}, head width {lv.dim_head})") from None
        if scheme.uses_embed:
            raise ConfigError(f"model.position.kind: '{m.position.kind}' adds to the embeddings, which the streams of "
                              "family 'hierarchical' do not share; allowed: a scheme acting in attention (rope and "
                              "its variants, alibi, t5, relative, dynamic, cope, none)")
    if opts.compressor not in COMPRESSOR:
        raise ConfigError(f"{where}.compressor: '{opts.compressor}' is not allowed; allowed: {', '.join(COMPRESSOR.kinds())}")
    if opts.compressor == "attn":
        for i, lv in enumerate(levels[1:], 1):
            if lv.dim % lv.heads:
                raise ConfigError(f"{where}.heads[{i}]: attention pooling needs heads dividing the width {lv.dim}")
    for k in ("aux_loss_weight", "vq_weight", "vq_beta"):
        if getattr(opts, k) < 0:
            raise ConfigError(f"{where}.{k}: must be ≥ 0, got {getattr(opts, k)}")
    for k in ("vq_codes", "vq_dim"):
        check_int(f"{where}.{k}", getattr(opts, k), 1)
    D = opts.dim_embed if opts.dim_embed is not None else max(lv.dim for lv in levels)
    if m.tie_embeddings and D != levels[0].dim:
        raise ConfigError(f"model.tie_embeddings: the head (width {levels[0].dim}) can share the embedding only when "
                          f"{where}.dim_embed is {levels[0].dim} (default: the widest stream, {D}); "
                          "set model.tie_embeddings=false or dim_embed")
    return kw


@dataclass
class SpeechOptions(PartConfig):
    """``model.family_options`` shared by the speech families. The model section gives the text
    decoder (model.dim, model.heads, model.depth; model.max_seq_len is its context, n_text_ctx)
    and the audio encoder unless ``audio_*`` says otherwise. The features are ``n_mels`` log-mel
    bins over ``2 · n_audio_ctx`` frames (10 ms each): every utterance is padded to that."""

    inputs = "audio"  # not a field: what the family reads (config validation pairs it with corpus 'speech')

    n_mels: int = 80
    n_audio_ctx: int = 300  # encoder positions; 600 frames = 6 s of audio
    audio_dim: int | None = None
    audio_heads: int | None = None
    audio_depth: int | None = None

    def check(self, ctx: dict, where: str) -> None:
        speech_dims(ctx["model"], self, where)

    def common_checks(self, m: Any, family: str) -> None:
        if m.layers.overrides:
            raise ConfigError(f"model.layers.overrides: not used by family '{family}' (every layer is alike)")
        if m.bias:
            raise ConfigError(f"model.bias: family '{family}' sets its own biases; allowed: false")
        if m.kv_heads is not None:
            raise ConfigError(f"model.kv_heads: grouped-query attention is not supported by family '{family}'")
        if not m.tie_embeddings:
            raise ConfigError(f"model.tie_embeddings: family '{family}' always ties the output projection to "
                              "the token embedding (as Whisper); allowed: true")
        if m.init != "fan_in":
            raise ConfigError(f"model.init: family '{family}' has its own initialisation "
                              "(docs/echo.md); leave model.init unset")
        if m.layers.default.norm.placement.kind != "pre":
            raise ConfigError(f"model.layers.default.norm.placement: family '{family}' is pre-norm; allowed: pre")
        require_ffn(m, family)
        if getattr(m.layers.default.mixer, "pid", None) is not None:
            raise ConfigError(f"model.layers.default.mixer.pid: PID control across layers is built for family 'lm' "
                              f"only; leave it unset for family '{family}'")


def speech_dims(m: Any, opts: SpeechOptions, where: str) -> dict[str, int]:
    """The recogniser's dimensions in the seed's names (n_audio_state, n_text_head, ...), checked."""
    for k, lo in (("n_mels", 1), ("n_audio_ctx", 1)):
        check_int(f"{where}.{k}", getattr(opts, k), lo)
    for k in ("audio_dim", "audio_heads", "audio_depth"):
        if getattr(opts, k) is not None:
            check_int(f"{where}.{k}", getattr(opts, k), 1)
    dims = dict(n_mels=opts.n_mels, n_audio_ctx=opts.n_audio_ctx, n_audio_state=opts.audio_dim or m.dim,
                n_audio_head=opts.audio_heads or m.heads, n_audio_layer=opts.audio_depth or m.depth,
                vocab_size=m.vocab_size, n_text_ctx=m.max_seq_len, n_text_state=m.dim, n_text_head=m.heads,
                n_text_layer=m.depth)
    if dims["n_audio_state"] % dims["n_audio_head"]:
        raise ConfigError(f"{where}.audio_heads: {dims['n_audio_head']} heads do not divide the audio width "
                          f"{dims['n_audio_state']}")
    if m.head_dim is not None and m.head_dim != m.dim // m.heads:
        raise ConfigError(f"model.head_dim: the speech families use dim // heads = {m.dim // m.heads}; "
                          "leave model.head_dim unset")
    return dims


@dataclass
class EchoOptions(SpeechOptions):
    """Family ``echo`` (archlab.models.echo): attention from the registries — ``model.position``
    in every self-attention (each layer its own instance), ``model.layers.default.mixer`` (the
    encoder's non-causal, the decoder's causal), ``.ffn`` and ``.norm``. ``max_rel_dist`` > 0
    stacks a clipped relative bias of that reach on every attention; ``cross_attention``: the
    positions act in cross-attention too; ``checkpointing``: activation checkpointing."""

    max_rel_dist: int = 15
    cross_attention: bool = True
    checkpointing: bool = False

    def check(self, ctx: dict, where: str) -> None:
        echo_namespace(ctx["model"], self, where)


def echo_namespace(m: Any, opts: EchoOptions, where: str = "model.family_options") -> SimpleNamespace:
    """The options object :class:`archlab.models.echo.EchoModel` takes (EchoConfig's attributes)
    for a ModelConfig, validated in one-line ConfigErrors naming the config key."""
    opts.common_checks(m, "echo")
    check_int(f"{where}.max_rel_dist", opts.max_rel_dist, 0)
    dims = speech_dims(m, opts, where)
    d = m.layers.default
    ns = SimpleNamespace(**dims, eos_token_id=0, max_rel_dist=opts.max_rel_dist, cross_attention=bool(opts.cross_attention),
                         checkpointing=bool(opts.checkpointing), base=None, init_std=m.init_std, dropout=m.dropout,
                         position=to_dict(m.position), encoder_mixer=to_dict(d.mixer), decoder_mixer=to_dict(d.mixer),
                         ffn=to_dict(d.ffn), norm={k: v for k, v in to_dict(d.norm).items() if k != "placement"})
    for side, dim, heads, causal, n in (("encoder", ns.n_audio_state, ns.n_audio_head, False, ns.n_audio_ctx),
                                        ("decoder", ns.n_text_state, ns.n_text_head, True, ns.n_text_ctx)):
        ctx = BuildContext(dim=dim, heads=heads, kv_heads=heads, head_dim=dim // heads, max_seq_len=n, causal=causal)
        try:
            scheme = POSITION.build(m.position, ctx)
        except ValueError as e:
            raise ConfigError(f"model.position: {e} (the {side}: heads {heads}, head width {dim // heads})") from None
        try:  # one layer's mixer, built to see that it takes this side's shape (local attention is causal only)
            MIXER.build(d.mixer, dataclasses.replace(ctx, position=scheme))
        except ValueError as e:
            raise ConfigError(f"model.layers.default.mixer: {e} (the {side} of family 'echo')") from None
        if side == "decoder" and ns.cross_attention and scheme.uses_input:
            raise ConfigError(f"model.position.kind: '{m.position.kind}' predicts its rotation from the hidden state, "
                              "which cross-attention cannot do (its keys come from the audio); set "
                              f"{where}.cross_attention: false, or choose a kind without input-conditioned rotations")
    return ns


@dataclass
class WhisperOptions(SpeechOptions):
    """Family ``whisper``: transformers' own ``WhisperForConditionalGeneration`` from a
    ``WhisperConfig`` of the model section's dims (random initialisation, nothing downloaded), the
    baseline Echo is measured against. Its parts are Whisper's: sinusoidal encoder positions and
    a learned decoder table (so ``model.position.kind`` must say ``sinusoidal``), attention,
    GELU feed-forward (``model.layers.default.ffn``: gelu, its ``mult`` sets the width), LayerNorm."""

    def check(self, ctx: dict, where: str) -> None:
        whisper_kwargs(ctx["model"], self, where)


def whisper_kwargs(m: Any, opts: WhisperOptions, where: str = "model.family_options") -> dict[str, Any]:
    """Keyword arguments of :func:`archlab.models.whisper.whisper_config`, validated."""
    opts.common_checks(m, "whisper")
    d = m.layers.default
    for key, got, allowed in (("model.position.kind", m.position.kind, "sinusoidal"),
                              ("model.layers.default.mixer.kind", d.mixer.kind, "attention"),
                              ("model.layers.default.ffn.kind", d.ffn.kind, "gelu"),
                              ("model.layers.default.norm.kind", d.norm.kind, "layer")):
        if got != allowed:
            raise ConfigError(f"{key}: '{got}'; family 'whisper' is Whisper's own architecture; allowed: {allowed}")
    dims = speech_dims(m, opts, where)
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise ConfigError(f"{where}.audio_dim: {dims['n_audio_state']}; Whisper has one width for encoder and "
                          f"decoder; allowed: {dims['n_text_state']} (model.dim) or null")
    return dict(**dims, ffn_mult=float(d.ffn.mult), dropout=m.dropout, init_std=m.init_std)


@dataclass
class SAFUOptions(PartConfig):
    """Family ``safu``: a reconstruction of the self-attentive feed-forward unit model
    (docs/warm_start.md). Three context reads of the current token — its fixed-position block of
    ``block`` tokens, the last ``radius`` tokens, and the bag of the whole window so far —
    each a similarity attention without projections, each followed by a softmax hidden layer;
    the output layer reads the three hidden distributions. ``width``: the embedding (code)
    width, null: model.dim. ``freeze_embeddings``: the embedding is not trained (the regime of
    the similarity cache, which makes the document read linear in the window)."""

    width: int | None = None
    block: int = 16
    radius: int = 8
    temperature: float = 1.0  # of the document read's similarities
    freeze_embeddings: bool = False

    def check(self, ctx: dict, where: str) -> None:
        m = ctx["model"]
        for k, hi in (("block", 4096), ("radius", 4096)):
            v = getattr(self, k)
            if isinstance(v, bool) or not 1 <= v <= hi:
                raise ConfigError(f"{where}.{k}: expected an integer in 1..{hi}, got {v!r}")
        if self.width is not None and (isinstance(self.width, bool) or not 1 <= self.width <= 65536):
            raise ConfigError(f"{where}.width: expected a positive integer (or null: model.dim), got {self.width!r}")
        d = self.width if self.width is not None else m.dim
        if 2 ** min(d, 64) - 1 < m.vocab_size:
            raise ConfigError(f"{where}.width: {d} code bits give {2 ** d - 1} codes, fewer than the {m.vocab_size} "
                              f"tokens; allowed: ≥ {m.vocab_size.bit_length()}")
        if not 0 < self.temperature < 1e6:
            raise ConfigError(f"{where}.temperature: must be in (0, 1e6), got {self.temperature}")
        if m.tie_embeddings:
            raise ConfigError("model.tie_embeddings: family 'safu' reads its output from hidden distributions, "
                              "not the embedding; allowed: false")
        defaults = type(m)()  # the model section's defaults (its class is the config's; not imported here)
        for key in ("depth", "heads", "kv_heads", "head_dim", "bias", "dropout"):
            if getattr(m, key) != getattr(defaults, key):
                raise ConfigError(f"model.{key}: not used by family 'safu' (no stack of blocks, no projections); "
                                  f"leave it at {getattr(defaults, key)!r}")
        if to_dict(m.layers) != to_dict(defaults.layers) or to_dict(m.position) != to_dict(defaults.position):
            raise ConfigError("model.layers / model.position: family 'safu' has its own reads (family_options "
                              "block, radius) and no positional scheme; leave them at their defaults")


FAMILY.declare("lm", PartConfig, "decoder-only language model", build="archlab.models.lm:LM")
FAMILY.declare("hierarchical", HierarchicalConfig, "hierarchical transformer: compressed streams merged per layer",
               build="archlab.models.hierarchical:from_config")
FAMILY.declare("echo", EchoOptions, "Echo: a Whisper-shaped speech recogniser with archlab's attention (corpus speech)",
               build="archlab.models.echo:from_config")
FAMILY.declare("whisper", WhisperOptions, "transformers' WhisperForConditionalGeneration of the same dims (corpus speech)",
               build="archlab.models.whisper:from_config")
FAMILY.declare("safu", SAFUOptions, "SAFU-style model: block, radial and document reads with softmax hidden layers "
               "(a reconstruction)", build="archlab.models.safu:from_config")
