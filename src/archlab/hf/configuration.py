"""``ArchlabConfig``: the archlab model config inside a ``transformers`` config.

The archlab :class:`~archlab.config.ModelConfig` is the single source of truth. It is kept as
a plain nested dict (``registry.to_dict`` form) in the field ``archlab``, so ``config.json``
round-trips it exactly and needs no archlab code to be read. The usual HF attribute names
(``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``tie_word_embeddings`` ...) are
*derived* from it on every construction, because transformers itself reads some of them
(``tie_word_embeddings`` decides weight tying on load); editing them has no effect on the
model: change ``archlab`` instead.

Two more archlab fields, both written by :func:`archlab.hf.export.export_run` and absent (None)
for a model that was not exported from a run: ``archlab_tokenizer`` (``"bytes"``/``"bpe"``, how
the model was tokenised) and ``archlab_run``, what ``archlab eval``/``generate`` need beyond the
model to open the folder as a run (:func:`archlab.train.run.load_run`): the run's ``data`` and
``train`` config sections as plain dicts, and its progress (``state``: step, tokens).
"""

from __future__ import annotations

import copy
from typing import Any

from transformers.configuration_utils import PreTrainedConfig

# Vocabulary of archlab's default (byte) tokenizer: what archlab itself fills in when a model
# config leaves vocab_size unset (config._validate), so a bare ArchlabConfig() builds a model.
_DEFAULT_VOCAB = 256


def _model_config(raw: dict[str, Any]):
    """Typed archlab ModelConfig from a (possibly partial) plain dict.

    Keys, types, part kinds and layer overrides are checked by archlab's registry parsing.
    Not ``parse_config``: its cross-checks involve the *training* config (e.g. a learned
    position table against ``train.seq_len``), which an exported model no longer has.
    """
    from archlab.config import ModelConfig
    from archlab.registry import from_dict

    cfg = from_dict(ModelConfig, copy.deepcopy(raw), "archlab")
    cfg.layer_configs()  # parses layers.overrides, raising a ConfigError on bad selectors/keys
    return cfg


def _normalise(raw: Any) -> dict[str, Any]:
    """Any accepted form (None, partial dict, ModelConfig, full archlab Config) -> the full,
    parsed plain dict that config.json stores."""
    from archlab.config import Config, ModelConfig
    from archlab.registry import to_dict

    if raw is None:
        raw = {}
    if isinstance(raw, Config):
        raw = raw.model
    if isinstance(raw, ModelConfig):
        raw = to_dict(raw)
    if not isinstance(raw, dict):
        raise TypeError(f"ArchlabConfig.archlab: expected a dict or ModelConfig, got {type(raw).__name__}")
    raw = dict(raw)
    if raw.get("vocab_size") is None:
        raw["vocab_size"] = _DEFAULT_VOCAB
    return to_dict(_model_config(raw))


class ArchlabConfig(PreTrainedConfig):
    """Hugging Face config of an archlab language model.

    ``ArchlabConfig(archlab={...})`` accepts a partial model dict (missing keys take archlab's
    defaults), a :class:`~archlab.config.ModelConfig` or a whole archlab ``Config``; it is
    parsed by archlab's own config code (one-line ``ConfigError`` on mistakes).
    """

    model_type = "archlab"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache output: 5.24+ name, older name

    # The archlab ModelConfig, as a plain nested dict (source of truth).
    archlab: dict[str, Any] | None = None
    # The exported run's tokenizer kind and data/train config + progress (module docstring).
    archlab_tokenizer: str | None = None
    archlab_run: dict[str, Any] | None = None
    # Derived mirrors under HF's conventional names (recomputed from `archlab` in __post_init__).
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = True
    # Generic HF fields.
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.archlab = _normalise(self.archlab)
        if self.archlab_run is not None and not isinstance(self.archlab_run, dict):
            raise TypeError(f"ArchlabConfig.archlab_run: expected a dict or None, got {type(self.archlab_run).__name__}")
        m = self.archlab
        self.vocab_size = m["vocab_size"]
        self.hidden_size = m["dim"]
        self.num_hidden_layers = m["depth"]
        self.num_attention_heads = m["heads"]
        self.num_key_value_heads = m["kv_heads"] or m["heads"]
        self.head_dim = m["head_dim"] or m["dim"] // m["heads"]
        self.max_position_embeddings = m["max_seq_len"]
        self.tie_word_embeddings = bool(m["tie_embeddings"])
        super().__post_init__(**kwargs)

    @classmethod
    def from_archlab(cls, model_config: Any, **kwargs: Any) -> "ArchlabConfig":
        """From an archlab ``ModelConfig`` (or ``Config``, or plain dict)."""
        return cls(archlab=_normalise(model_config), **kwargs)

    def archlab_model_config(self):
        """The :class:`archlab.config.ModelConfig` this config describes."""
        return _model_config(self.archlab)


__all__ = ["ArchlabConfig"]
