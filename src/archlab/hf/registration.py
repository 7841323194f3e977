"""Registration of archlab's model types with transformers' Auto classes, on their public API.

One row per model class: its ``model_type``, its config class and the Auto class that builds it
(``AutoModelForCausalLM`` for the LM,
``AutoModelForSpeechSeq2Seq`` for Echo). :func:`register` is what ``import archlab.hf`` runs; it is
idempotent, and nothing in ``archlab.hf`` calls back into it.
"""

from __future__ import annotations

import importlib

# (model_type, "module:ConfigClass", Auto class name in transformers, "module:ModelClass")
MODELS: tuple[tuple[str, str, str, str], ...] = (
    ("archlab", "archlab.hf.configuration:ArchlabConfig", "AutoModelForCausalLM",
     "archlab.hf.modeling:ArchlabForCausalLM"),
    ("echo", "archlab.hf.echo:EchoConfig", "AutoModelForSpeechSeq2Seq", "archlab.hf.echo:Echo"),
)


# ("module:ConfigClass", "module:FeatureExtractorClass") for AutoFeatureExtractor
FEATURE_EXTRACTORS: tuple[tuple[str, str], ...] = (
    ("archlab.hf.echo:EchoConfig", "archlab.hf.echo_processing:EchoFeatureExtractor"),
)


def _load(ref: str) -> type:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def register() -> None:
    """Make ``AutoConfig`` and each row's Auto model class know archlab's model types."""
    import transformers

    for model_type, config_ref, auto_name, model_ref in MODELS:
        config_cls, model_cls = _load(config_ref), _load(model_ref)
        transformers.AutoConfig.register(model_type, config_cls, exist_ok=True)
        getattr(transformers, auto_name).register(config_cls, model_cls, exist_ok=True)
    for config_ref, extractor_ref in FEATURE_EXTRACTORS:
        transformers.AutoFeatureExtractor.register(_load(config_ref), _load(extractor_ref), exist_ok=True)
    from archlab.hf.echo_processing import register_pipeline

    register_pipeline()


__all__ = ["FEATURE_EXTRACTORS", "MODELS", "register"]
