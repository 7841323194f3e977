"""archlab compare --jobs N: the same results as one process, in plan order, resumable, and a
SIGTERM to the parent checkpoints the runs in progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from archlab.lab.compare import run_compare
from archlab.lab.jobs import check_jobs
from archlab.registry import ConfigError
from archlab.train.checkpoint import CHECKPOINT
from tests.test_compare import write_exp

METRICS = ("bpb", "loss", "final_val_bpb", "best_val_loss", "tokens", "steps", "parameters")


def _strip(res):
    return [(r["variant"], r["seed"], *[r[k] for k in METRICS]) for r in res["runs"]]


def test_jobs_give_the_results_of_one_process(corpus, tmp_path, monkeypatch):  # noqa: F811
    exp = write_exp(tmp_path, corpus, variants="  a: {}\n  b: {model.position.kind: alibi}\n  c: {model.dim: 16}\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers get one thread each too: bit-identical arithmetic
    try:
        seq = run_compare(exp, tmp_path / "seq", progress=False, log=lambda s: None, report=False)
        lines = []
        par = run_compare(exp, tmp_path / "par", progress=False, log=lines.append, report=False, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert _strip(par) == _strip(seq)  # same numbers, same (plan) order
    assert [(r["variant"], r["seed"]) for r in par["runs"]] == [(v, s) for v in "abc" for s in (0, 1)]
    assert any("2 worker processes, 1 thread each" in line for line in lines)
    assert par["variants"]["b"]["diff"]["verdict"] == seq["variants"]["b"]["diff"]["verdict"]
    saved = json.loads((tmp_path / "par" / "results.json").read_text())
    assert _strip(saved) == _strip(seq)
    # every run folder holds its own result.json; a re-run trains nothing
    assert all((tmp_path / "par" / v / f"seed{s}" / "result.json").exists() for v in "abc" for s in (0, 1))
    again = run_compare(exp, tmp_path / "par", progress=False, log=lines.append, report=False, jobs=2)
    assert _strip(again) == _strip(seq)
    assert sum("finished earlier, skipped" in line for line in lines) == 6


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_bad_jobs_are_refused(jobs):
    with pytest.raises(ConfigError, match="--jobs"):
        check_jobs(jobs)


def test_cli_bad_jobs_exit_2_before_any_run(corpus, tmp_path):  # noqa: F811
    exp = write_exp(tmp_path, corpus, variants="  a: {}\n", budget="steps: 1")
    proc = subprocess.run([sys.executable, "-m", "archlab", "compare", str(exp), "--out", str(tmp_path / "o"),
                           "--jobs", "0", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--jobs 0" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_sigterm_checkpoints_the_runs_in_progress_and_a_rerun_resumes(corpus, tmp_path):  # noqa: F811
    exp = write_exp(tmp_path, corpus, variants="  a: {}\n  b: {model.position.kind: alibi}\n",
                    budget="steps: 1000", extra="overrides: {train.eval_every: 500}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "archlab", "compare", str(exp), "--out", str(out), "--jobs", "2",
           "--no-progress", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    busy = [out / "a" / f"seed{s}" for s in (0, 1)]  # the plan's first two runs, one per worker
    metrics = [d / "metrics.jsonl" for d in busy]
    deadline = time.time() + 120
    while time.time() < deadline and not all(m.exists() and m.read_text().count('"loss"') >= 3 for m in metrics):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint" in err
    for d in busy:
        assert (d / CHECKPOINT).exists(), d
        assert not (d / "result.json").exists()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    for d in busy:
        events = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert any(e.get("event") == "resume" for e in events), d
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 4 and {r["steps"] for r in res["runs"]} == {1000}
