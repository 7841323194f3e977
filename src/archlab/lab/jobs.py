"""Train an experiment's runs in parallel worker processes (``archlab compare --jobs N``).

On a CPU, small models use a second core poorly inside one process (the matmuls are too small
to split well), so N one-thread processes finish an experiment sooner than one N-thread
process. Each worker is a fresh ``spawn`` process that loads the experiment file itself, trains
one run at a time through the ``run_one`` it is given (compare's) with
``torch.set_num_threads(threads)``, and sends back its result; every run folder still has a
single writer (the trainer's run lock), and the parent alone writes ``results.json``.

Signals: the workers leave the terminal's process group, so Ctrl-C reaches the parent only; the
parent then sends each busy worker one SIGTERM, which makes its trainer save a checkpoint at the
current step and stop (as a single-process run does), waits for them, and raises
:class:`~archlab.train.trainer.Interrupted`. Re-running the command resumes those runs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as _queue
import signal
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from archlab.registry import ConfigError

Task = tuple[int, str, int, str]  # (index in the plan, variant, seed, run folder)


def check_jobs(jobs: Any) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs {jobs!r}: must be an integer >= 1 (worker processes, one run each)")
    if jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--jobs > 1 cannot be combined with torchrun (there every rank trains each run together)")
    return jobs


def threads_per_job(jobs: int) -> int:
    """The cores this process may use, shared among ``jobs`` workers (at least one each)."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


def _worker(run_one: Callable, experiment: str, threads: int, tasks, results, parent: int) -> None:
    os.setpgrp()  # out of the terminal's group: Ctrl-C goes to the parent, which stops us in order
    import torch

    from archlab.lab.experiment import load_experiment
    from archlab.train.trainer import Interrupted

    torch.set_num_threads(threads)
    exp = load_experiment(experiment)
    while os.getppid() == parent:  # an orphan (parent killed outright) takes no further run
        task = tasks.get()
        if task is None:
            return
        index, variant, seed, run_dir = task
        try:
            results.put((index, "done", run_one(exp, variant, seed, Path(run_dir), log=lambda s: None)))
        except Interrupted as e:
            results.put((index, "interrupted", str(e)))
            return
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which re-raises it
            kind = "config" if isinstance(e, ConfigError) else "error"
            results.put((index, kind, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            return


def run_parallel(run_one: Callable, experiment: str | Path, tasks: Iterable[Task], *, jobs: int,
                 on_result: Callable[[int, dict], None], threads: int | None = None) -> None:
    """Train ``tasks`` on ``jobs`` worker processes, each calling ``run_one(exp, variant, seed,
    run_dir, log=...)`` (a module-level function: it is pickled by name, so this module needs no
    import of the compare runner); ``on_result(index, result)`` is called in the
    parent as each run finishes (in completion order). A worker's failure stops the others at
    their next checkpointed step and is raised here."""
    from archlab.train.trainer import Interrupted

    tasks = list(tasks)
    if not tasks:
        return
    jobs = min(jobs, len(tasks))
    threads = threads or threads_per_job(jobs)
    ctx = mp.get_context("spawn")
    task_q, result_q = ctx.Queue(), ctx.Queue()
    for t in tasks:
        task_q.put(t)
    for _ in range(jobs):
        task_q.put(None)
    procs = [ctx.Process(target=_worker, args=(run_one, str(experiment), threads, task_q, result_q, os.getpid()),
                         daemon=True) for _ in range(jobs)]
    old_term = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):
        raise Interrupted(signum)

    try:
        signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread: the caller owns the signals
        old_term = None
    for p in procs:
        p.start()
    pending, failure = len(tasks), None
    try:
        while pending:
            try:
                index, status, payload = result_q.get(timeout=1.0)
            except _queue.Empty:
                if not any(p.is_alive() for p in procs):
                    raise RuntimeError(f"compare --jobs: the worker processes exited with {pending} runs "
                                       f"unfinished (exit codes {[p.exitcode for p in procs]})") from None
                continue
            pending -= 1
            if status == "done":
                on_result(index, payload)
                continue
            failure = (status, payload)
            break
    except KeyboardInterrupt as e:
        _stop(procs)
        raise Interrupted(getattr(e, "signum", signal.SIGINT),
                          "interrupted: the runs in progress saved a checkpoint; re-run the command to resume") from None
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    if failure is not None:
        _stop(procs)
        status, payload = failure
        if status == "config":
            raise ConfigError(payload.splitlines()[0].split(": ", 1)[-1])
        if status == "interrupted":
            raise Interrupted(signal.SIGTERM, f"a worker was interrupted: {payload}")
        raise RuntimeError(f"compare --jobs: a run failed in its worker: {payload}")
    for p in procs:
        p.join()


def _stop(procs: list) -> None:
    """One SIGTERM per live worker (its trainer checkpoints and stops), then wait for all."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        p.join()
