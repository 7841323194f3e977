"""Hugging Face ``transformers`` interop: archlab models as ``PreTrainedModel`` s.

* :class:`ArchlabConfig` (``model_type = "archlab"``) carries the archlab ``ModelConfig`` as a
  plain nested dict under ``archlab`` in ``config.json``.
* :class:`ArchlabForCausalLM` wraps :class:`archlab.models.lm.LM` (parameters live under
  ``model.``) with HF's ``forward``/``generate``/``save_pretrained``/``from_pretrained``.
* :class:`ArchlabCache` is the ``transformers.Cache`` facade over archlab's ``ModelCache``.
* :func:`export_run` turns a trained run into a folder ``from_pretrained`` loads offline.

Nothing here imports ``transformers`` until one of these names is used (module-level
``__getattr__``), so ``import archlab`` stays fast. The Auto classes learn about
``"archlab"`` lazily after ``import archlab`` (see :mod:`archlab.hf._hook` for how and why);
:func:`register` does it eagerly.

Requires ``transformers>=5`` (``pip install 'archlab[hf]'``).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ArchlabConfig": "archlab.hf.configuration",
    "ArchlabForCausalLM": "archlab.hf.modeling",
    "ArchlabCache": "archlab.hf.modeling",
    "ArchlabLogitsWarper": "archlab.hf.modeling",
    "export_run": "archlab.hf.export",
    "register": "archlab.hf._hook",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> object:  # no `typing` import: keep `import archlab` lean
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'archlab.hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
