"""A synthetic task (counting, selective copy, flip-flop, ...): answer-only loss and error rates,
in distribution and on the task's out-of-distribution splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from archlab.data.taskdata import TaskSampler, build_task_data, check_task_lengths
from archlab.registry import ConfigError
from archlab.train.objectives.base import Objective
from archlab.train.taskeval import evaluate_task

_SCORES = ("error", "token_error", "loss")


class TaskObjective(Objective):
    kind = "task"
    val_metrics = ("loss", "error", "token_error")
    primary = "error"

    def handles(self, data_cfg) -> bool:
        return data_cfg.corpus == "task"

    def tokenizer_kind(self, cfg) -> str:
        return "task"

    def new_tokenizer(self, cfg, *, log: Callable[[str], None] | None) -> Any:
        return build_task_data(cfg.data.task).tokenizer

    def prepare(self, cfg, tokenizer: Any, run_dir: Path) -> Mapping[str, Any]:
        task = build_task_data(cfg.data.task)
        if tokenizer.fingerprint() != task.tokenizer.fingerprint():
            raise ConfigError(f"data.task: the run's tokenizer.json in {run_dir} is not this task's vocabulary")
        check_task_lengths(task, seq_len=cfg.train.seq_len, max_seq_len=cfg.model.max_seq_len)
        return task.splits

    def sampler(self, train: Any, cfg, *, ignore_index: int, rank: int, world: int) -> Any:
        t = cfg.train  # answer-only targets, padded to train.seq_len
        return TaskSampler(train, width=t.seq_len, batch_size=t.batch, seed=t.seed, ignore_index=ignore_index,
                           rank=rank, world_size=world)

    def evaluate(self, model: Any, split: Any, cfg, *, tokenizer: Any, batch_size: int, limit: int | None,
                 device: Any, autocast: Any) -> dict[str, float]:
        """The limit is in padded token slots: the first ``ceil(limit / train.seq_len)`` examples."""
        n = None if limit is None else -(-limit // cfg.train.seq_len)
        return evaluate_task(model, split, batch_size=batch_size, max_examples=n, device=device, autocast=autocast)

    @staticmethod
    def _task(exp) -> Any:
        return exp.variants[exp.baseline].data.task

    def metric_names(self, exp) -> list[str]:
        """The error rates and answer loss on ``eval.split`` and, suffixed ``@ood_*``, on each OOD split."""
        return [*_SCORES] + [f"{m}@{s}" for s in self._task(exp).ood_splits() for m in _SCORES]

    def check_experiment(self, exp, ev: dict, path: Path) -> None:
        """A task experiment scores whole splits (no token cap, no window lengths); every variant's
        lengths are checked against the data now, before the first run."""
        for key in ("max_tokens", "seq_lens"):
            if key in ev:
                raise ConfigError(f"{path}: eval.{key}: not used by a task experiment (whole splits are scored; "
                                  "the OOD splits come with the task)")
        exp.eval_max_tokens = None
        data = build_task_data(self._task(exp))
        for name, cfg in exp.variants.items():
            try:
                check_task_lengths(data, seq_len=cfg.train.seq_len, max_seq_len=cfg.model.max_seq_len)
            except ConfigError as e:
                raise ConfigError(f"{path}: variants.{name}: {e}") from None

    def experiment_metrics(self, exp, trainer) -> tuple[dict[str, Any], dict[str, Any]]:
        """error, token_error and loss on ``eval.split`` (in distribution) and ``<metric>@<split>``
        on every OOD split, each split scored whole."""
        metrics: dict[str, float] = {}
        for split in [exp.eval_split, *self._task(exp).ood_splits()]:
            ev = evaluate_task(trainer.model, trainer.streams[split], batch_size=trainer.micro, device=trainer.device,
                               autocast=trainer.autocast)
            suffix = "" if split == exp.eval_split else f"@{split}"
            metrics.update({f"{k}{suffix}": ev[k] for k in _SCORES})
            metrics[f"examples{suffix}"] = ev["examples"]
        return metrics, {}

    def cli_eval(self, run, *, split: str, batch: int, max_tokens: int | None, seq_len: int | None,
                 progress: bool) -> tuple[dict[str, Any], str]:
        """Error rates and answer loss on one split (any of the task's splits, scored whole)."""
        data = build_task_data(run.cfg.data.task)
        if split not in data.splits:
            raise ConfigError(f"--split: '{split}' is not a split of task '{data.kind}'; "
                              f"allowed: {', '.join(data.splits)}")
        if max_tokens is not None or seq_len is not None:
            raise ConfigError("--max-tokens / --seq-len: not used for a task run (whole splits are scored)")
        res = evaluate_task(run.model, data.splits[split], batch_size=batch, progress=progress)
        return res, ("{split}: error {error:.4f}  token error {token_error:.4f}  answer loss "
                     "{loss:.4f} nats  ({examples} examples, step {step})")
