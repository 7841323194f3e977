"""``archlab compare``: every variant × seed through the normal trainer, then statistics and
a report.

Layout of ``--out DIR``: ``DIR/<variant>/seed<k>/`` is an ordinary run folder (metrics,
checkpoint, summary) plus ``result.json`` once that run is finished and evaluated;
``DIR/results.json`` collects everything (rewritten atomically after each run, so partial
progress is visible); ``DIR/report.md``, ``DIR/report.html`` and ``DIR/plots/`` at the end.

Re-running the same command skips finished runs and resumes an interrupted one from its
checkpoint; the trainer refuses to resume a run whose config no longer matches. A finished
run's ``result.json`` records a fingerprint (resolved config, evaluation settings, archlab and
torch versions): a re-run whose experiment gives another fingerprint is refused before any
training, naming the changed keys (``--rerun-stale`` trains those runs again). Under
``torchrun`` every rank trains each run (DDP) and rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

import archlab
from archlab.atomic import write_text_atomic
from archlab.config import parse_config
from archlab.environment import machine_info, versions
from archlab.lab.experiment import Experiment, load_experiment
from archlab.registry import ConfigError, flatten
from archlab.train import Trainer
from archlab.train.checkpoint import CHECKPOINT


def _atomic_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=float))


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """Validation points from metrics.jsonl (step, tokens, elapsed and every ``val_*`` metric
    of the run's objective); after a resume the later record of a step wins."""
    points: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if "val_loss" in r:
                points[r["step"]] = {k: v for k, v in r.items()
                                     if k in ("step", "tokens", "elapsed") or k.startswith("val_")}
    return [points[s] for s in sorted(points)]


def early_metrics(exp: Experiment, cfg, curve: list[dict[str, float]]) -> dict[str, float]:
    """``<metric>@<p>%``: the trainer's periodic evaluation (``curve``, :func:`read_curve`) at each
    ``eval.fractions`` step."""
    if not exp.eval_fractions:
        return {}
    by_step = {p["step"]: p for p in curve}
    out = {}
    for label, step in exp.fraction_steps(cfg).items():
        point = by_step.get(step, {})
        for m in exp.objective.val_metrics[:2]:
            out[f"{m}@{label}"] = point.get(f"val_{m}", float("nan"))
    return out


# --------------------------------------------------------------------------- stale runs


def run_fingerprint(exp: Experiment, variant: str, seed: int) -> dict[str, Any]:
    """What a finished run's result depends on: its resolved config, how it is evaluated, and
    the code that trains it (archlab's version, torch's release)."""
    return {
        "config": exp.config_for(variant, seed).to_dict(),
        "eval": {"split": exp.eval_split, "max_tokens": exp.eval_max_tokens, "seq_lens": list(exp.eval_seq_lens)},
        "versions": {"archlab": archlab.__version__, "torch": torch.__version__.split("+")[0]},
    }


def fingerprint_digest(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two fingerprints (none when ``old`` is None).

    The old config is first read by today's code, so a knob added to archlab after the run was
    made counts as changed only if the experiment now sets it away from its default (the run
    was made with the behaviour its default keeps)."""
    if not old:
        return []
    if isinstance(old.get("config"), dict):
        try:
            old = {**old, "config": parse_config(old["config"], require_budget=False).to_dict()}
        except ConfigError:
            pass  # a key that no longer exists: compared as recorded
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def stale_runs(exp: Experiment, out: Path) -> list[tuple[Path, list[str]]]:
    """Finished runs under ``out`` whose recorded fingerprint is not the experiment's now (or
    that record none: made before fingerprints), with the keys that changed."""
    stale = []
    for variant in exp.variants:
        for seed in exp.seeds:
            done = out / variant / f"seed{seed}" / "result.json"
            if not done.exists():
                continue
            try:
                res = json.loads(done.read_text())
            except (OSError, ValueError):
                res = {}
            fp = run_fingerprint(exp, variant, seed)
            if res.get("fingerprint") != fingerprint_digest(fp):
                keys = changed_keys(res.get("fingerprint_of"), fp)
                if keys or not res.get("fingerprint_of"):  # only knobs added since, at their defaults: same run
                    stale.append((done.parent, keys))
    return stale


def check_stale(exp: Experiment, out: Path, *, rerun_stale: bool, log: Callable[[str], None]) -> None:
    """Refuse (one line) to reuse runs finished under other settings; ``rerun_stale`` deletes
    them so they are trained again."""
    stale = stale_runs(exp, out)
    if not stale:
        return
    if not rerun_stale:
        where, keys = stale[0]
        what = f"changed: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}" if keys else \
            "it records no fingerprint (made by an older archlab)"
        raise ConfigError(f"{out}: {len(stale)} finished run(s) were made under other settings ({where.relative_to(out)} "
                          f"{what}); use a new --out, or --rerun-stale to train them again")
    for where, _ in stale:
        log(f"{where}: stale (other settings), training it again")
        shutil.rmtree(where)


class _StepBar:
    """Trainer callback advancing the experiment-wide progress bar by one step."""

    name = "progress"

    def __init__(self, bar) -> None:
        self.bar = bar

    def after_step(self, trainer, step, record) -> None:
        self.bar.update(1)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _stamp(result: dict, exp: Experiment, variant: str, seed: int) -> dict:
    fp = run_fingerprint(exp, variant, seed)
    result.update(fingerprint=fingerprint_digest(fp), fingerprint_of=fp)
    return result


def run_one(exp: Experiment, variant: str, seed: int, run_dir: Path, *, callbacks=(), log=print) -> dict:
    """Train (or resume) one run, evaluate it on the experiment's split, write result.json."""
    cfg = exp.config_for(variant, seed)
    trainer = Trainer(cfg, run_dir, resume=(run_dir / CHECKPOINT).exists(), progress=False, log=log,
                      quiet=True, callbacks=list(callbacks))
    summary = trainer.fit()
    if not trainer.dist.main:  # under torchrun only rank 0 evaluates and writes
        return {"variant": variant, "seed": seed, "status": "done-on-other-rank"}
    metrics, extra = exp.objective.experiment_metrics(exp, trainer)
    primary = f"final_val_{exp.objective.primary}"
    curve = read_curve(run_dir)
    result = {
        "variant": variant, "seed": seed, "dir": str(run_dir.relative_to(run_dir.parents[1])), "status": "done",
        "parameters": summary["parameters"], "tokens": summary["tokens"], "steps": summary["steps"], **metrics,
        primary: summary[primary], "best_val_loss": summary["best_val_loss"],
        "tokens_per_s": summary["tokens_per_s"], "wall_time": summary["wall_time"],
        "train_time": summary["train_time"], "peak_mem_mb": summary["peak_mem_mb"],
        "curve": curve, **extra, **early_metrics(exp, cfg, curve),
        "warm_start_tokens": summary.get("warm_start_tokens", 0),
        "warm_start_seconds": summary.get("warm_start_seconds", 0.0),
    }
    _atomic_json(run_dir / "result.json", _stamp(result, exp, variant, seed))
    return result


def run_compare(
    experiment: str | Path, out: str | Path, *, command: str | None = None, progress: bool = True,
    log: Callable[[str], None] = print, report: bool = True, rerun_stale: bool = False, jobs: int = 1,
) -> dict:
    """Train every variant × seed not finished yet, then statistics and the report. Runs
    finished under other settings (config, evaluation, code version) are refused before any
    training, or with ``rerun_stale`` trained again. ``jobs`` > 1 trains the unfinished runs in
    that many worker processes (:mod:`archlab.lab.jobs`), the cores shared among them."""
    from archlab.lab.jobs import check_jobs

    check_jobs(jobs)
    exp = load_experiment(experiment)
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun: every rank trains, rank 0 reports
    if not main:
        progress, report, log = False, False, (lambda s: None)
    out = Path(out)
    if main or not rerun_stale:  # only rank 0 deletes stale runs
        check_stale(exp, out, rerun_stale=rerun_stale, log=log)
    out.mkdir(parents=True, exist_ok=True)
    plan = [(v, s) for v in exp.variants for s in exp.seeds]
    steps_each = {v: exp.variants[v].train.total_steps() for v in exp.variants}
    from archlab.train.runtime import pick_device

    device = str(pick_device(exp.variants[exp.baseline].train.device))
    results: dict[str, Any] = {
        "experiment": {
            "name": exp.name, "file": str(exp.path), "baseline": exp.baseline, "metric": exp.metric,
            "also": exp.also, "eval_seq_lens": exp.eval_seq_lens,
            "budget": exp.budget, "seeds": exp.seeds, "eval_split": exp.eval_split,
            "eval_max_tokens": exp.eval_max_tokens, "variants": {v: exp.overrides[v] for v in exp.variants},
            "command": command or " ".join(["archlab", "compare", str(experiment), "--out", str(out)]),
            "versions": versions(), "machine": machine_info(device),
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "description": exp.description,
            "stats": {"correction": exp.correction, "level": exp.level},  # report rebuilds give the same verdicts
        },
        "runs": [],
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(steps_each[v] or 0 for v, _ in plan) or None
        bar = tqdm(total=total, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    done_runs: dict[int, dict] = {}

    def record(i: int, res: dict) -> None:  # runs in plan order, whatever order they finish in
        done_runs[i] = {k: v for k, v in res.items() if k != "fingerprint_of"}  # in result.json
        results["runs"] = [done_runs[j] for j in sorted(done_runs)]
        if main:
            _atomic_json(out / "results.json", results)

    def say(line: str) -> None:
        (bar.write if bar is not None else log)(line)

    def trained(i: int, res: dict) -> None:  # one finished training run, either path
        variant, seed = plan[i]
        say(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: {exp.metric} {res[exp.metric]:.4f}, "
            f"{res['tokens_per_s'] or 0:.0f} tokens/s")
        record(i, res)

    todo = []
    try:
        for i, (variant, seed) in enumerate(plan):
            run_dir = out / variant / f"seed{seed}"
            done = run_dir / "result.json"
            label = f"[{i + 1}/{len(plan)}] {variant} seed {seed}"
            if done.exists():
                res = json.loads(done.read_text())
                if bar is not None and steps_each[variant]:
                    bar.update(steps_each[variant])
                log(f"{label}: finished earlier, skipped")
                record(i, res)
            elif jobs > 1:
                todo.append((i, variant, seed, str(run_dir)))
            else:
                if bar is not None:
                    bar.set_description(f"{variant} s{seed} ({i + 1}/{len(plan)})")
                cbs = [_StepBar(bar)] if bar is not None and steps_each[variant] else []
                if bar is not None and (run_dir / CHECKPOINT).exists() and steps_each[variant]:
                    from archlab.train.checkpoint import read_checkpoint

                    bar.update(int(read_checkpoint(run_dir / CHECKPOINT)[1]["state"]["step"]))
                trained(i, run_one(exp, variant, seed, run_dir, callbacks=cbs, log=say))
        if todo:
            from archlab.lab.jobs import run_parallel, threads_per_job

            threads = threads_per_job(jobs)
            say(f"training {len(todo)} runs in {min(jobs, len(todo))} worker processes, "
                f"{threads} thread{'s' if threads > 1 else ''} each")
            if bar is not None:
                bar.set_description(f"{min(jobs, len(todo))} workers")

            def finished(i: int, res: dict) -> None:
                variant, seed = plan[i]
                if bar is not None and steps_each[variant]:
                    bar.update(steps_each[variant])
                trained(i, res)

            run_parallel(run_one, exp.path, todo, jobs=jobs, on_result=finished, threads=threads)
    finally:
        if bar is not None:
            bar.close()
    results["experiment"]["total_time"] = time.perf_counter() - t0
    if not main:
        return results
    from archlab.stats import summarize

    stats = {"correction": exp.correction, "level": exp.level}
    results["variants"] = summarize(results, **stats)
    results["also"] = {m: summarize(results, metric=m, **stats) for m in exp.also}  # each metric its own family
    _atomic_json(out / "results.json", results)
    if report:
        from archlab.lab.report import write_report

        write_report(results, out)
    return results
