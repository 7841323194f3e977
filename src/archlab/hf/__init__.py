"""Hugging Face ``transformers`` interop: archlab models as ``PreTrainedModel`` s.

``import archlab.hf`` is the one, explicit registration step: afterwards ``AutoConfig`` and
``AutoModelForCausalLM`` know model type ``"archlab"`` (``AutoConfig.register`` /
``AutoModelForCausalLM.register``, see :mod:`archlab.hf.registration`). ``import archlab``
alone imports neither transformers nor torch and registers nothing.

* :class:`ArchlabConfig` (``model_type = "archlab"``) carries the archlab ``ModelConfig`` as a
  plain nested dict under ``archlab`` in ``config.json`` (:mod:`.configuration`).
* :class:`ArchlabForCausalLM` wraps :class:`archlab.models.lm.LM` (parameters live under
  ``model.``) with HF's ``forward``/``generate``/``save_pretrained``/``from_pretrained``
  (:mod:`.modeling`); :class:`ArchlabLogitsWarper` is archlab's sampling rule as a processor.
* :class:`ArchlabCache` is the ``transformers.Cache`` facade over archlab's ``ModelCache``
  (:mod:`.cache`).
* :class:`EchoConfig` / :class:`Echo` (``model_type = "echo"``, ``AutoModelForSpeechSeq2Seq``):
  the Echo speech recogniser (:mod:`.echo`).
* :func:`export_run` turns a trained run into a folder ``from_pretrained`` loads offline
  (:mod:`.export`).

Requires ``transformers>=5`` (``pip install 'archlab[hf]'``); an ``ImportError`` says so otherwise.
"""

from __future__ import annotations

from archlab.hf.support import transformers_problem

_problem = transformers_problem()
if _problem is not None:
    raise ImportError(f"archlab.hf {_problem}")

from archlab.hf.cache import ArchlabCache  # noqa: E402
from archlab.hf.configuration import ArchlabConfig  # noqa: E402
from archlab.hf.echo import Echo, EchoConfig  # noqa: E402
from archlab.hf.echo_processing import EchoFeatureExtractor, save_echo  # noqa: E402
from archlab.hf.export import export_run  # noqa: E402
from archlab.hf.modeling import ArchlabForCausalLM, ArchlabLogitsWarper  # noqa: E402
from archlab.hf.registration import register  # noqa: E402

register()

__all__ = ["ArchlabCache", "ArchlabConfig", "Echo", "EchoConfig", "EchoFeatureExtractor", "save_echo", "ArchlabForCausalLM", "ArchlabLogitsWarper", "export_run", "register"]
