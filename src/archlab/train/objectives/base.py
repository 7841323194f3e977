"""The objective protocol (see :mod:`archlab.train.objectives`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping


class Objective:
    """What a run optimises and how it is scored. Subclasses set the class attributes and
    implement every method; the trainer, ``archlab compare`` and ``archlab eval`` call only these."""

    kind: str = ""
    #: Metrics of the trainer's periodic evaluation (``val_<name>`` in metrics.jsonl), loss first.
    val_metrics: tuple[str, ...] = ()
    #: The headline metric of a run's summary (``final_val_<name>``) and an experiment's default.
    primary: str = ""
    #: What the model reads: "tokens" (it can continue a prompt: archlab generate) or "audio".
    inputs: str = "tokens"

    def tokenizer_kind(self, cfg) -> str:
        """The tokenizer kind a run folder of this objective holds (``check_tokenizer``'s ``kind``)."""
        raise NotImplementedError

    def handles(self, data_cfg) -> bool:
        """Whether this objective trains on the data section ``data_cfg``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- training

    def new_tokenizer(self, cfg, *, log: Callable[[str], None] | None) -> Any:
        """A fresh tokenizer for a run with no ``tokenizer.json`` yet."""
        raise NotImplementedError

    def can_rebuild_tokenizer(self, cfg) -> bool:
        """Whether a resumed run whose ``tokenizer.json`` is gone may build it again (same ids)."""
        return True

    def prepare(self, cfg, tokenizer: Any, run_dir: Path) -> Mapping[str, Any]:
        """The run's data splits by name (``train``, ``validation``, ``test``, any others),
        checked against the config (one-line ``ConfigError`` otherwise)."""
        raise NotImplementedError

    def warm_tokens(self, streams: Mapping[str, Any], n: int) -> Any:
        """The first ``n`` tokens of the train split as a 1-D array: what ``train.warm_start``'s
        statistics pass reads. Objectives without a token stream refuse warm starts in the config."""
        raise NotImplementedError(f"objective '{self.kind}' has no token stream for train.warm_start")

    def sampler(self, train: Any, cfg, *, ignore_index: int, rank: int, world: int) -> Any:
        """The batch sampler over the train split: ``.batch(step) -> (inputs, targets)``."""
        raise NotImplementedError

    def evaluate(self, model: Any, split: Any, cfg, *, tokenizer: Any, batch_size: int, limit: int | None,
                 device: Any, autocast: Any) -> dict[str, float]:
        """The trainer's periodic metrics (:attr:`val_metrics`, and more) on the first ``limit``
        target tokens of ``split`` (None: all)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- experiments

    def metric_names(self, exp) -> list[str]:
        """Every metric a run of experiment ``exp`` reports (all lower-is-better)."""
        raise NotImplementedError

    def check_experiment(self, exp, ev: dict, path: Path) -> None:
        """Refuse what an experiment file cannot ask of this objective (its ``eval`` section)."""

    def experiment_metrics(self, exp, trainer) -> tuple[dict[str, Any], dict[str, Any]]:
        """A finished run's metrics for ``result.json``: (the headline ones, the extra ones)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- archlab eval

    def cli_eval(self, run, *, split: str, batch: int, max_tokens: int | None, seq_len: int | None,
                 progress: bool) -> tuple[dict[str, Any], str]:
        """``archlab eval``: the metrics of a loaded run on ``split`` and the line that shows them
        (a ``str.format`` template over the metrics, ``split`` and ``step``)."""
        raise NotImplementedError
