"""Family ``whisper``: the plain Whisper that Echo is measured against.

``WhisperBaseline`` holds transformers' ``WhisperForConditionalGeneration`` built from a
``WhisperConfig`` of the run's dims (nothing downloaded, Whisper's own initialisation with
``model.init_std``) and speaks the recogniser protocol archlab's trainer and decoder use for
Echo: ``forward(features, targets=label rows)`` → loss, ``encode``, ``init_cache``, ``decode``.
Its vocabulary is the run's character tokenizer (0 end-of-text = padding, 1 start of
transcript); no token is suppressed. The model inside is a stock transformers model:
``model.hf.save_pretrained(...)`` gives a folder any Whisper tool loads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archlab.models.echo import teacher_forcing, token_nll
from archlab.models.lm import ModelOutput

EOT_ID, SOT_ID = 0, 1  # archlab.data.speech.text.CharTokenizer's special ids


def whisper_config(*, n_mels: int, n_audio_ctx: int, n_audio_state: int, n_audio_head: int, n_audio_layer: int,
                   vocab_size: int, n_text_ctx: int, n_text_state: int, n_text_head: int, n_text_layer: int,
                   ffn_mult: float = 4.0, dropout: float = 0.0, init_std: float = 0.02, eos_token_id: int = EOT_ID,
                   decoder_start_token_id: int = SOT_ID) -> Any:
    """A ``WhisperConfig`` of these dims (Whisper's encoder and decoder share one width)."""
    from transformers import WhisperConfig

    if n_audio_state != n_text_state:
        raise ValueError(f"Whisper has one width for encoder and decoder; got audio {n_audio_state}, "
                         f"text {n_text_state}")
    return WhisperConfig(vocab_size=vocab_size, num_mel_bins=n_mels, d_model=n_text_state,
                         encoder_layers=n_audio_layer, decoder_layers=n_text_layer,
                         encoder_attention_heads=n_audio_head, decoder_attention_heads=n_text_head,
                         encoder_ffn_dim=int(ffn_mult * n_audio_state), decoder_ffn_dim=int(ffn_mult * n_text_state),
                         max_source_positions=n_audio_ctx, max_target_positions=n_text_ctx, dropout=dropout,
                         init_std=init_std, pad_token_id=eos_token_id, bos_token_id=eos_token_id,
                         eos_token_id=eos_token_id, decoder_start_token_id=decoder_start_token_id,
                         begin_suppress_tokens=None, suppress_tokens=None)


class _Cache:
    """transformers' encoder–decoder cache plus the step offset the trainer's decoders read."""

    def __init__(self) -> None:
        from transformers import DynamicCache, EncoderDecoderCache

        self.kv = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.offset = 0


class WhisperBaseline(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import WhisperForConditionalGeneration

        self.hf = WhisperForConditionalGeneration(config)
        self.eot_id = config.eos_token_id
        self.n_frames = 2 * config.max_source_positions

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.hf.model.decoder.embed_tokens

    @property
    def n_text_ctx(self) -> int:
        """Decoder positions (start token included)."""
        return int(self.hf.config.max_target_positions)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or tuple(features.shape[1:]) != (self.hf.config.num_mel_bins, self.n_frames):
            raise ValueError(f"input_features must be (batch, {self.hf.config.num_mel_bins} mel bins, "
                             f"{self.n_frames} frames) for Whisper, got {tuple(features.shape)}")
        return self.hf.model.encoder(features).last_hidden_state

    def init_cache(self) -> _Cache:
        return _Cache()

    def decode(self, ids: torch.Tensor, memory: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        start = cache.offset if cache is not None else 0
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        out = self.hf.model.decoder(input_ids=ids, encoder_hidden_states=memory, position_ids=positions,
                                    cache=None if cache is None else cache.kv, use_cache=cache is not None)
        if cache is not None:
            cache.offset += ids.shape[1]
        return self.hf.proj_out(out.last_hidden_state)

    def forward(self, features: torch.Tensor | None, ids: torch.Tensor | None = None, *,
                targets: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                cache: _Cache | None = None) -> ModelOutput:
        """As EchoModel.forward: without ``ids``, ``targets`` are label rows [start, text…, end, −100…]."""
        if ids is None:
            if targets is None:
                raise ValueError("WhisperBaseline: give decoder ids, or label rows as targets")
            ids, targets = teacher_forcing(targets, pad_id=self.eot_id)
        if memory is None:
            memory = self.encode(features)
        logits = self.decode(ids, memory, cache)
        if targets is None:
            return ModelOutput(logits=logits)
        return ModelOutput(logits=logits, loss=(nll := token_nll(logits, targets)), nll=nll)


def from_config(model_cfg: Any) -> WhisperBaseline:
    """Family ``whisper`` for a validated ModelConfig (archlab.catalog.families.whisper_kwargs)."""
    from archlab.catalog.families import whisper_kwargs

    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("model.family: 'whisper' needs transformers (pip install -e '.[hf]')") from None
    return WhisperBaseline(whisper_config(**whisper_kwargs(model_cfg, model_cfg.family_config())))
