"""``EchoConfig`` and ``Echo``: the Echo speech recogniser as a ``transformers`` model.

The seed's usage works as written::

    config = EchoConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=1024, n_audio_head=16, n_audio_layer=24,
        vocab_size=51865, n_text_ctx=448, n_text_state=1024, n_text_head=16, n_text_layer=20, max_rel_dist=15,
        cross_attention=True, checkpointing=True, base=10000, bos_token_id=50257, eos_token_id=50257,
        pad_token_id=50257, decoder_start_token_id=50258, is_encoder_decoder=True, init_std=0.02)
    model = Echo(config)
    model.apply_initialization()
    model.save_pretrained("./models/echo2")
    model = Echo.from_pretrained("./models/echo2")

The computation is :class:`archlab.models.echo.EchoModel` (under ``self.model``), built from
archlab's registries; this class adds the HF config, ``save_pretrained``/``from_pretrained``
and the Auto-class registration (``import archlab.hf``: ``AutoModelForSpeechSeq2Seq``).

Echo's default recipe (every field below; all overridable): Givens rotations before RoPE
(``position={"kind": "givens_rope"}``, base ``base``) stacked with a clipped relative bias of
reach ``max_rel_dist`` in the self-attention of encoder and decoder; positions in
cross-attention too (``cross_attention=True``); full attention in both stacks
(``encoder_mixer``/``decoder_mixer``: any mixer kind, e.g. ``{"kind": "conv_attention"}``,
``{"kind": "local", "window": 64}`` in the decoder); GELU MLP ×4; LayerNorm; pre-norm.

Private transformers hooks used, each because no public API does the job (as in
:mod:`archlab.hf.modeling`): ``get_init_context`` (build on the real device: the schemes compute
constant buffers in their constructors) and ``_init_weights`` (a no-op while constructing, so
``Echo(config)`` holds exactly what :meth:`Echo.apply_initialization` gives; after a load it
initialises only what the checkpoint lacked, by the same rule).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.configuration_utils import PreTrainedConfig
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.modeling_utils import PreTrainedModel

from archlab.hf.cache import ArchlabCache
from archlab.hf.modeling import CACHE_ARG
from archlab.models.echo import EchoModel, greedy_decode, init_parameter
from archlab.models.lm import IGNORE_INDEX


class EchoConfig(PreTrainedConfig):
    """The seed's field names (Whisper's: ``n_mels``, ``n_audio_*``, ``n_text_*``) plus the
    component choices, as archlab part configs (a kind string or ``{"kind": ..., knobs}``)."""

    model_type = "echo"
    attribute_map = {"hidden_size": "n_text_state", "num_hidden_layers": "n_text_layer",
                     "num_attention_heads": "n_text_head", "max_target_positions": "n_text_ctx",
                     "max_source_positions": "n_audio_ctx", "num_mel_bins": "n_mels"}

    def __init__(self, n_mels: int = 80, n_audio_ctx: int = 1500, n_audio_state: int = 384, n_audio_head: int = 6,
                 n_audio_layer: int = 4, vocab_size: int = 51865, n_text_ctx: int = 448, n_text_state: int = 384,
                 n_text_head: int = 6, n_text_layer: int = 4, max_rel_dist: int = 15, cross_attention: bool = True,
                 checkpointing: bool = False, base: float = 10000.0, init_std: float = 0.02, dropout: float = 0.0,
                 position: Any = None, encoder_mixer: Any = "attention", decoder_mixer: Any = "attention",
                 ffn: Any = None, norm: Any = "layer", bos_token_id: int = 50257, eos_token_id: int = 50257,
                 pad_token_id: int = 50257, decoder_start_token_id: int = 50258, is_encoder_decoder: bool = True,
                 **kwargs: Any) -> None:
        self.n_mels, self.n_audio_ctx, self.n_audio_state = n_mels, n_audio_ctx, n_audio_state
        self.n_audio_head, self.n_audio_layer = n_audio_head, n_audio_layer
        self.vocab_size, self.n_text_ctx, self.n_text_state = vocab_size, n_text_ctx, n_text_state
        self.n_text_head, self.n_text_layer = n_text_head, n_text_layer
        self.max_rel_dist, self.cross_attention, self.checkpointing = max_rel_dist, cross_attention, checkpointing
        self.base, self.init_std, self.dropout = base, init_std, dropout
        self.position = position if position is not None else {"kind": "givens_rope"}
        self.encoder_mixer, self.decoder_mixer = encoder_mixer, decoder_mixer
        self.ffn = ffn if ffn is not None else {"kind": "gelu", "mult": 4.0}
        self.norm = norm
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         decoder_start_token_id=decoder_start_token_id, is_encoder_decoder=is_encoder_decoder,
                         **kwargs)


class _EncoderView:
    """The encoder as ``generate`` calls it: keywords in, a ``BaseModelOutput`` out (not a
    module of its own, so the state dict has the encoder once)."""

    main_input_name = "input_features"

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder

    def forward(self, input_features: torch.Tensor, **kwargs: Any) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self.encoder(input_features))

    __call__ = forward


class Echo(PreTrainedModel, GenerationMixin):
    """Echo over :class:`~archlab.models.echo.EchoModel`; see the module docstring."""

    config_class = EchoConfig
    base_model_prefix = "model"
    main_input_name = "input_features"
    _no_split_modules = ["Block", "DecoderBlock"]
    _is_stateful = True  # the decoder cache cannot be cropped: no assisted decoding

    def __init__(self, config: EchoConfig) -> None:
        super().__init__(config)
        self.model = EchoModel(config)
        # generate() without max_new_tokens (as pipelines call it) may use the whole decoder context
        self.generation_config.max_length = config.n_text_ctx
        self._constructing = True
        try:
            self.post_init()
        finally:
            self._constructing = False
        self.apply_initialization()
        for mod in self.modules():  # so that after a load _init_weights sees what the checkpoint lacked
            mod.__dict__.pop("_is_hf_initialized", None)

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def apply_initialization(self) -> "Echo":
        """The seed's scheme: token embeddings N(0, init_std); linear and convolution weights
        Xavier-uniform, their biases 0; norm gains 1 and biases 0. Positional schemes keep their
        own initialisation (a relative-bias table N(0, init_std), Givens angles 0: plain RoPE)."""
        for module in self.model.modules():
            for name, p in module.named_parameters(recurse=False):
                self._init_parameter(module, name, p)
        return self

    def _init_parameter(self, module: nn.Module, name: str, p: torch.Tensor) -> None:
        init_parameter(module, name, p, init_std=self.config.init_std)

    @classmethod
    def get_init_context(cls, *args: Any, **kwargs: Any) -> list:
        contexts = super().get_init_context(*args, **kwargs)
        return [c for c in contexts if not (isinstance(c, torch.device) and c.type == "meta")]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if getattr(self, "_constructing", False):
            return
        for name, p in module.named_parameters(recurse=False):
            if not getattr(p, "_is_hf_initialized", False):
                self._init_parameter(module, name, p)

    # ------------------------------------------------------------------ forward

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the first forward creates an ArchlabCache over an EchoCache

    def get_encoder(self) -> _EncoderView:
        return _EncoderView(self.model.encoder)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.decoder.embed

    def forward(self, input_features: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, encoder_outputs: Any = None, cache: ArchlabCache | None = None,
                use_cache: bool | None = None, **kwargs: Any) -> Seq2SeqLMOutput:
        """Logits (B, T, V) of ``decoder_input_ids`` given the audio (``input_features`` or a
        precomputed ``encoder_outputs``). With ``labels`` (B, T) and no ``decoder_input_ids``
        the decoder reads the labels shifted right after ``decoder_start_token_id``; label −100
        is not counted (as in transformers). ``use_cache`` (default: in eval mode) returns an
        :class:`~archlab.hf.cache.ArchlabCache` to pass back with the next tokens only."""
        if cache is None and "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        unknown = set(kwargs) - {"return_dict", "attention_mask", "decoder_attention_mask", "output_attentions",
                                 "output_hidden_states", "decoder_position_ids"}
        if unknown:
            raise TypeError(f"Echo.forward: unexpected arguments {sorted(unknown)}")
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Echo.forward needs decoder_input_ids or labels")
            start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
            decoder_input_ids = torch.cat([start, labels[:, :-1].masked_fill(labels[:, :-1] == IGNORE_INDEX,
                                                                             self.config.pad_token_id)], dim=1)
        if use_cache is None:
            use_cache = not self.training and labels is None
        if use_cache and cache is None:
            cache = ArchlabCache(self.model.init_cache(), factory=self.model.init_cache)
        memory = encoder_outputs[0] if encoder_outputs is not None else None
        if memory is None and input_features is not None and not (use_cache and cache.offset):
            memory = self.model.encoder(input_features)  # (a continued cache holds the memory's keys already)
        out = self.model(None, decoder_input_ids, targets=labels, memory=memory,
                         cache=cache.model_cache if use_cache else None)
        if use_cache:
            cache._batch_size, cache._device = decoder_input_ids.shape[0], decoder_input_ids.device
        return Seq2SeqLMOutput(loss=out.loss, logits=out.logits, encoder_last_hidden_state=memory,
                               **{CACHE_ARG: cache if use_cache else None})

    @torch.no_grad()
    def transcribe_ids(self, input_features: torch.Tensor, *, max_new_tokens: int = 64,
                       prompt: torch.Tensor | None = None) -> torch.Tensor:
        """archlab's own greedy decoder (KV-cached): token ids after the start token(s)."""
        if prompt is None:
            prompt = torch.full((input_features.shape[0], 1), self.config.decoder_start_token_id,
                                device=input_features.device)
        return greedy_decode(self.model, input_features, prompt, max_new_tokens=max_new_tokens,
                             eos_token_id=self.config.eos_token_id)
