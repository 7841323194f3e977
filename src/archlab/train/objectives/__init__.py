"""Objectives: what a run optimises and how it is evaluated, one module per kind.

An objective gives the trainer, the lab and the CLI everything that depends on the kind of
data, so none of them branches on it: the tokenizer, the data splits and the batch sampler, the
held-out evaluation and the names of its metrics (all lower-is-better), the per-run result of
an experiment, and what ``archlab eval`` prints. ``objective_for(cfg)`` returns the registered
objective that handles ``cfg.data``; the built-in ones are ``lm`` (next-token prediction on a
text corpus, bits per byte), ``task`` (a synthetic task, answer-only loss and error rates) and
``speech`` (speech → text, word and character error rates of greedy transcriptions).

A new objective is one module with a subclass of
:class:`~archlab.train.objectives.base.Objective` and one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from archlab.train.objectives.base import Objective
from archlab.train.objectives.lm import LMObjective
from archlab.train.objectives.speech import SpeechObjective
from archlab.train.objectives.task import TaskObjective

#: The registered objectives, asked in this order which one handles a data section.
OBJECTIVES: dict[str, Objective] = {o.kind: o for o in (TaskObjective(), SpeechObjective(), LMObjective())}


def objective_for(cfg) -> Objective:
    """The objective of a config (its ``data`` section decides)."""
    for objective in OBJECTIVES.values():
        if objective.handles(cfg.data):
            return objective
    raise AssertionError(f"no objective handles data.corpus '{cfg.data.corpus}'")  # config validation prevents it


__all__ = ["OBJECTIVES", "Objective", "objective_for"]
