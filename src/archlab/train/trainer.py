"""The training loop.

A run folder holds ``config.yaml`` (the resolved config), ``tokenizer.json``,
``checkpoint.safetensors`` (model, optimiser, RNG, step; written atomically),
``metrics.jsonl`` (one JSON record per log/eval event), ``summary.json`` at the end, and
``tb/`` when TensorBoard is installed.

Resume is exact: the data sampler is a pure function of (seed, step), the schedule a pure
function of the step, and the checkpoint restores weights, optimiser moments and the RNG.
On resume ``metrics.jsonl`` is cut back to the checkpoint's step, so the steps trained again
are not logged twice. A step whose loss or gradient is not finite is skipped (no update) and
reported; ``train.max_bad_steps`` such steps in a row stop the run, leaving the last good
checkpoint.

One process writes a run folder at a time (:class:`~archlab.train.runlock.RunLock`, held from
construction to the end of :meth:`Trainer.fit`). Ctrl-C (SIGINT) and SIGTERM (timeout, SLURM,
Kubernetes) end the current step, save a checkpoint at it and raise :class:`Interrupted`.

What the user sees goes through ``log`` (stderr by default; stdout is left to the caller's
result): a header before the first step, then a progress bar on a terminal or, in a log file,
one plain line every ``train.log_every`` steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import yaml

from archlab.atomic import write_text_atomic
from archlab.config import Config
from archlab.data import load_tokenizer
from archlab.data.tokenizer import check_tokenizer
from archlab.models import build_model
from archlab.models.counting import count_parameters
from archlab.models.lm import IGNORE_INDEX
from archlab.registry import METHOD, ConfigError, PartConfig
from archlab.train import distributed
from archlab.train.checkpoint import CHECKPOINT, folder_checkpoint, load_checkpoint, save_checkpoint
from archlab.train.dynamics import build_controllers
from archlab.train.objectives import objective_for
from archlab.train.optim import build_optimizer, lr_at
from archlab.train.runlock import RunLock, check_run_folder, trim_metrics
from archlab.train.runtime import autocast_factory, peak_memory_mb, pick_device, seed_everything


class TrainingStopped(RuntimeError):
    """The run stopped itself (too many non-finite steps); the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after checkpointing the current step. A KeyboardInterrupt,
    so code that handles Ctrl-C handles SIGTERM too; ``signum`` lets a CLI exit 128 + signum."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def log_to_stderr(line: str) -> None:
    """The default ``log``: stderr, flushed, so a redirected log file is current and stdout
    stays clean for the summary JSON that ``archlab train`` prints."""
    print(line, file=sys.stderr, flush=True)


# Signals that stop a run cleanly: Ctrl-C, and what schedulers and `timeout` send first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Callback(Protocol):
    """Hook run after every optimiser step (learning-dynamics controllers and the like)."""

    name: str

    def after_step(self, trainer: "Trainer", step: int, record: dict[str, Any]) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def setup_tokenizer(cfg: Config, run_dir: Path, *, log: Callable[[str], None] | None = None,
                    resume: bool = False):
    """The run's tokenizer (its objective's: bytes, a BPE trained on the train split, or a
    synthetic task's word vocabulary); saved with the run. ``log`` announces a BPE training (None:
    silent). A resumed BPE run must find its own: a BPE trained again need not give the ids its
    weights learnt."""
    objective = objective_for(cfg)
    saved = run_dir / "tokenizer.json"
    if resume and not saved.exists() and not objective.can_rebuild_tokenizer(cfg):
        raise ConfigError(f"--resume: {saved} is missing; the run's BPE tokenizer cannot be trained again "
                          "to the same ids, so restore it or start a new run")
    if saved.exists():
        return check_tokenizer(load_tokenizer(run_dir), kind=objective.tokenizer_kind(cfg),
                               model_vocab=cfg.model.vocab_size, where=str(saved))
    tok = objective.new_tokenizer(cfg, log=log)
    tok.save(run_dir)
    return tok


class Trainer:
    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = log_to_stderr,
        quiet: bool = False,
        callbacks: list[Callback] | None = None,
    ) -> None:
        """``progress``: a bar when stderr is a terminal (else, or when False, plain lines every
        ``train.log_every`` steps). ``quiet``: neither header nor step lines, for callers that
        show their own progress (``archlab compare``); warnings still go to ``log``. Raises :class:`ConfigError` when another process holds ``out_dir``."""
        self.cfg = cfg
        self.dir = Path(out_dir)
        self.resume = resume
        self.progress = progress
        self.log = log
        self.quiet = quiet
        self.callbacks = list(callbacks or [])
        self.step = 0
        self.best_val = math.inf
        self.elapsed = 0.0  # wall-clock seconds of this run so far, across resumes
        self.train_time = 0.0  # of which spent in training steps
        self.resumed_from: int | None = None
        self.saved_step: int | None = None  # step of the checkpoint on disk, if any
        self._stop_signal: int | None = None
        self._bar = None
        self.tb = None
        self._lock = RunLock(self.dir)
        try:
            self._setup()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Release the run folder (done by :meth:`fit` as it returns or raises)."""
        self._lock.release()
        if self.tb is not None:
            self.tb.flush()

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.objective = objective_for(cfg)
        self.device = pick_device(t.device)
        self.dist = distributed.setup(self.device.type)
        self.rank, self.world = self.dist.rank, self.dist.world
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if t.batch % (self.world * t.grad_accum):
            raise ConfigError(f"train.batch: {t.batch} must be divisible by ranks × grad_accum = "
                              f"{self.world} × {t.grad_accum}")
        if self.resume and not self.dir.is_dir():
            check_run_folder(self.dir, self.cfg, resume=True)  # refused before the lock would create it
        refused: ConfigError | None = None
        if self.dist.main:  # one lock per run folder: rank 0 is its only writer
            try:
                self._lock.acquire()
            except ConfigError as e:
                refused = e
        # Every rank learns the outcome, so none is left waiting at the next barrier.
        if not distributed.all_true(refused is None, self.dist, self.device):
            raise refused or ConfigError(f"--out {self.dir}: in use by another archlab process")
        check_run_folder(self.dir, self.cfg, resume=self.resume)
        distributed.barrier(self.dist)
        self.autocast = autocast_factory(t.precision, self.device)
        seed_everything(t.seed)
        # Rank 0 trains/saves the tokenizer and fills the corpus cache; the others then read them.
        for turn in (True, False):
            if self.dist.main == turn:
                self.tokenizer = setup_tokenizer(cfg, self.dir, log=None if self.quiet else self.log,
                                                 resume=self.resume)
                self.streams = self.objective.prepare(cfg, self.tokenizer, self.dir)
            distributed.barrier(self.dist)
        self.model = build_model(cfg.model).to(self.device)
        self.warm = None  # what train.warm_start did (tokens read, seconds); restored on resume
        if t.warm_start is not None and t.warm_start.parts and not self.resume:
            from archlab.train.warm import warm_start

            # before the optimiser is built: a part may fix a parameter (requires_grad False)
            self.warm = warm_start(self.model, cfg, self.objective.warm_tokens(self.streams, t.warm_start.tokens))
            self.elapsed = self.warm["seconds"]  # the statistics pass counts in the run's wall time
        self.optimizer = build_optimizer(self.model, t, self.device)
        self.method = METHOD.build(PartConfig(kind=t.method))  # how each micro-batch's gradient is obtained
        # Controllers change the model between steps, so they run before other callbacks (which
        # then see, save or stop at the step's final state); resume restores them below.
        self.callbacks = [*build_controllers(t.dynamics, self.model), *self.callbacks]
        self.forward = self.model
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.forward = torch.compile(self.forward)
        self.total_steps = t.total_steps()
        micro = t.batch // (t.grad_accum * self.world)  # rows per rank per micro-step
        self.sampler = self.objective.sampler(self.streams["train"], cfg, ignore_index=IGNORE_INDEX,
                                              rank=self.rank, world=self.world)
        self.micro = micro
        if self.resume:
            # a compressed checkpoint (archlab compress) resumes too; the next save is plain
            state = load_checkpoint(folder_checkpoint(self.dir), model=self.model, optimizer=self.optimizer)
            self.step = int(state["step"])
            self.resumed_from = self.saved_step = self.step
            self.best_val = float(state.get("best_val", math.inf))
            self.elapsed = float(state.get("elapsed", 0.0))
            self.train_time = float(state.get("train_time", 0.0))
            self.warm = state.get("warm_start")
            for cb in self.callbacks:
                cb.load_state_dict(state.get("callbacks", {}).get(cb.name, {}))
        if self.dist.main:
            # Steps after the checkpoint (or all of them, for a fresh start) are trained again.
            trim_metrics(self.dir / "metrics.jsonl", self.step)
            if self.resume:
                self._write_metrics({"event": "resume", "step": self.step})
            elif self.warm is not None:
                self._write_metrics({"event": "warm_start", "step": 0, "warm_tokens": self.warm["tokens"],
                                     "warm_seconds": self.warm["seconds"]})
            write_text_atomic(self.dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.n_params = count_parameters(self.model)
        if t.tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"))
            except Exception:  # tensorboard not installed: metrics.jsonl only
                self.tb = None

    # ------------------------------------------------------------------ records

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.step * self.cfg.train.batch * self.cfg.train.seq_len,
            "best_val": self.best_val,
            "elapsed": self.elapsed,
            "train_time": self.train_time,
            "config": self.cfg.to_dict(),
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            "warm_start": self.warm,
        }

    def save(self) -> Path | None:
        if not self.dist.main:
            return None
        path = save_checkpoint(self.dir / CHECKPOINT, model=self.model, optimizer=self.optimizer, state=self.state())
        self.saved_step = self.step
        return path

    @property
    def val_metrics(self) -> tuple[str, ...]:
        """What :meth:`evaluate` reports (the objective's: loss and bpb, or loss and error rates)."""
        return self.objective.val_metrics

    def evaluate(self, split: str = "validation", max_tokens: int | None = None) -> dict[str, float]:
        """Held-out metrics (the objective's) on the first ``max_tokens`` targets (default
        ``train.eval_tokens``; 0: all)."""
        t = self.cfg.train
        limit = max_tokens if max_tokens is not None else (t.eval_tokens or None)
        return self.objective.evaluate(self.model, self.streams[split], self.cfg, tokenizer=self.tokenizer,
                                       batch_size=self.micro, limit=limit, device=self.device,
                                       autocast=self.autocast)

    # ------------------------------------------------------------------ loop

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimiser step (with accumulation). Returns the record; ``skipped`` if not finite."""
        t = self.cfg.train
        frac = self.train_time / t.seconds if t.seconds else None
        lr = lr_at(step, lr=t.lr, warmup=t.warmup, total=self.total_steps, min_ratio=t.min_lr_ratio,
                   time_fraction=frac)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        x, y = self.sampler.batch(step)
        x, y = x.to(self.device), y.to(self.device)
        total, finite = 0.0, True
        aux: dict[str, float] = {}
        for i in range(t.grad_accum):
            xs, ys = x[i * self.micro:(i + 1) * self.micro], y[i * self.micro:(i + 1) * self.micro]
            last_micro = i == t.grad_accum - 1
            # DDP: all-reduce gradients only on the last micro-step of the accumulation.
            sync = contextlib.nullcontext() if last_micro or not self.dist.enabled else self.ddp.no_sync()
            with sync:
                out, finite = self.method.micro_step(self, xs, ys, accum=t.grad_accum)
                if not finite:
                    break
            total += float(out.nll.detach()) / t.grad_accum
            for k, v in out.aux.items():
                aux[k] = aux.get(k, 0.0) + float(v.detach()) / t.grad_accum
        grad_norm = math.nan
        if finite:
            params = [p for p in self.model.parameters() if p.grad is not None]
            clip = t.grad_clip if t.grad_clip > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip, foreach=True))
            finite = math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            total = distributed.mean(total, self.dist, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "loss": total if finite else math.nan, "lr": lr, "grad_norm": grad_norm}
        rec.update(aux)
        if not finite:
            rec["skipped"] = True
        return rec

    def _evaluate_and_record(self, elapsed: float) -> dict[str, float]:
        """The periodic evaluation at the current step, written to metrics.jsonl."""
        ev = self.evaluate()
        self.best_val = min(self.best_val, ev["loss"])
        self.elapsed = elapsed
        t = self.cfg.train
        self._write_metrics({"step": self.step, "tokens": self.step * t.batch * t.seq_len,
                             "elapsed": self.elapsed, "train_time": self.train_time,
                             **{f"val_{k}": ev[k] for k in self.val_metrics}})
        return ev

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # asked twice: stop now; the last checkpoint stays intact
            raise Interrupted(signum, f"interrupted again by {signal.Signals(signum).name}; "
                                      f"not saved beyond the last checkpoint")
        self._stop_signal = signum  # acted on after the current step, which is then saved

    def _install_signal_handlers(self) -> dict[int, Any]:
        old = {}
        for sig in STOP_SIGNALS:
            try:
                old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                break
        return old

    def _say(self, line: str) -> None:
        """A line for the user; through the bar when one is drawn, so it does not tear it."""
        if self._bar is not None and self.log is log_to_stderr:
            self._bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def header(self) -> list[str]:
        """What this run is about to do, for the lines printed before the first step."""
        t = self.cfg.train
        per_step = t.batch * t.seq_len
        precision = "fp32" if self.autocast is contextlib.nullcontext else "bf16 autocast"
        ranks = f", {self.world} processes" if self.world > 1 else ""
        where = (f"resuming {self.dir} at step {self.resumed_from}" if self.resumed_from is not None
                 else f"new run in {self.dir}")
        if t.steps is not None:
            budget = f"train.steps={t.steps}: {t.steps:,} step{'s' if t.steps != 1 else ''}, {t.steps * per_step:,} tokens"
        elif t.tokens is not None:
            budget = f"train.tokens={t.tokens:,}: {self.total_steps:,} step{'s' if self.total_steps != 1 else ''} ({self.total_steps * per_step:,} tokens)"
        else:
            budget = (f"train.seconds={t.seconds:g}: as many steps as {t.seconds:g} s of training allow "
                      "(evaluation not counted)")
        return [
            f"archlab train: {where}",
            f"  device {self.device} ({precision}{ranks}), {self.n_params:,} parameters",
            f"  {t.batch} sequences x {t.seq_len} tokens = {per_step:,} tokens per step",
            f"  budget {budget}",
        ]

    def _step_line(self, rec: dict[str, Any], last_val: dict[str, float] | None) -> str:
        t = self.cfg.train
        where = (f"step {self.step}/{self.total_steps}" if self.total_steps is not None
                 else f"step {self.step} ({self.train_time:.0f}/{t.seconds:g} s)")
        parts = [where, f"loss {rec['loss']:.4f}", f"lr {rec['lr']:.2e}"]
        if "tokens_per_s" in rec:
            parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
        if last_val is not None:
            key = self.val_metrics[1]  # bpb, or a task's error rate
            parts.append(f"val_{key} {last_val[key]:.4f}")
        return "  ".join(parts)

    def _stop_message(self, bad: int) -> str:
        if self.saved_step is None:
            kept = "no checkpoint was saved yet"
        else:
            kept = f"last good checkpoint (step {self.saved_step}) kept in {self.dir / CHECKPOINT}"
        return f"{bad} non-finite steps in a row at step {self.step}; stopped, {kept}"

    def budget_done(self) -> bool:
        t = self.cfg.train
        if self.total_steps is not None:
            return self.step >= self.total_steps
        return self.train_time >= t.seconds

    def fit(self) -> dict[str, Any]:
        """Train to the budget (or from a resumed step), evaluate, write summary.json; returns it.
        Releases the run folder however it ends."""
        try:
            if self.dist.main:
                self._lock.acquire()  # again, for a second fit() after the first released it
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        t = self.cfg.train
        tokens_per_step = t.batch * t.seq_len
        main = self.rank == 0
        show = main and not self.quiet
        if show:
            for line in self.header():
                self.log(line)
        # A bar only on a terminal: redirected to a file its frames are one endless line.
        if self.progress and show and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                             file=sys.stderr)
        lines = show and self._bar is None
        old_handlers = self._install_signal_handlers()
        bad, last_val = 0, None
        session_start, session_train, session_tokens = time.perf_counter(), 0.0, 0
        elapsed0 = self.elapsed
        t_log, tok_log = time.perf_counter(), 0
        rate = None  # tokens/s over the last logging interval
        eval_at = set(t.eval_at)
        if self.step == 0 and 0 in eval_at and self.dist.main:  # the curve from the initial weights
            self._evaluate_and_record(elapsed0)
        try:
            while not self.budget_done():
                t0 = time.perf_counter()
                rec = self.train_step(self.step)
                dt = time.perf_counter() - t0
                self.step += 1
                self.train_time += dt
                session_train += dt
                session_tokens += tokens_per_step
                tok_log += tokens_per_step
                self.elapsed = elapsed0 + time.perf_counter() - session_start
                last = self.budget_done()
                if rec.get("skipped"):
                    bad += 1
                    self._say(f"step {self.step}: non-finite loss or gradient; step skipped ({bad} in a row)")
                    self._write_metrics({**rec, "event": "skipped"})
                    if bad >= t.max_bad_steps:
                        raise TrainingStopped(self._stop_message(bad))
                else:
                    bad = 0
                for cb in self.callbacks:
                    cb.after_step(self, self.step, rec)
                logged = self.step % t.log_every == 0 or last
                if logged:
                    now = time.perf_counter()
                    rate = tok_log / max(now - t_log, 1e-9)
                    rec.update(tokens=self.step * tokens_per_step, step_time=dt, tokens_per_s=rate,
                               elapsed=self.elapsed, peak_mem_mb=peak_memory_mb(self.device))
                    t_log, tok_log = now, 0
                    self._write_metrics(rec)
                if (self.step % t.eval_every == 0 or last or self.step in eval_at) and self.dist.main:
                    last_val = self._evaluate_and_record(elapsed0 + time.perf_counter() - session_start)
                    t_log = time.perf_counter()  # evaluation time is not training throughput
                if logged and lines:
                    self._say(self._step_line(rec, last_val))
                if self.step % t.ckpt_every == 0 or last or self._stop_signal is not None:
                    self.save()
                if self._bar is not None:
                    post = {"loss": f"{rec['loss']:.3f}", "lr": f"{rec['lr']:.2e}"}
                    if rate is not None:
                        post["tok/s"] = f"{rate:,.0f}"
                    if last_val is not None:
                        key = self.val_metrics[1]
                        post[f"val_{key}"] = f"{last_val[key]:.3f}"
                    self._bar.set_postfix(post, refresh=False)
                    self._bar.update(1)
                if self._stop_signal is not None:  # the message is the exception's: the CLI prints it
                    name = signal.Signals(self._stop_signal).name
                    raise Interrupted(self._stop_signal, f"interrupted by {name}: checkpoint saved at step "
                                                         f"{self.step} in {self.dir / CHECKPOINT}; continue with --resume")
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self.tb is not None:
                self.tb.flush()
        if last_val is None:  # nothing left to train (a finished run resumed), or not rank 0
            last_val = self.evaluate() if self.dist.main else dict.fromkeys(self.val_metrics, math.nan)
        summary = {
            "steps": self.step, "tokens": self.step * tokens_per_step, "parameters": self.n_params,
            **{f"final_val_{k}": last_val[k] for k in self.val_metrics if k != "bits_per_token"},
            "best_val_loss": min(self.best_val, last_val["loss"]), "wall_time": self.elapsed,
            "train_time": self.train_time,
            "tokens_per_s": session_tokens / session_train if session_train > 0 else None,
            "peak_mem_mb": peak_memory_mb(self.device), "unit": getattr(self.tokenizer, "unit", "byte"),
            "warm_start_tokens": self.warm["tokens"] if self.warm else 0,
            "warm_start_seconds": self.warm["seconds"] if self.warm else 0.0,
        }
        if self.rank == 0:
            write_text_atomic(self.dir / "summary.json", json.dumps(summary, indent=2))
        # The ranks leave together: none exits while rank 0 still evaluates and writes.
        distributed.barrier(self.dist)
        return summary
