"""Trainer, checkpoint and CLI behaviour: exact resume, atomic saves, corrupt files,
non-finite steps, one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from archlab.cli import main
from archlab.config import load_config
from archlab.train import CheckpointError, Trainer, TrainingStopped, load_checkpoint
from archlab.train import checkpoint as ckpt_mod
from archlab.train.checkpoint import CHECKPOINT, save_checkpoint




def tiny(corpus, tmp_path, *extra):
    return load_config(None, [
        "model.dim=32", "model.depth=2", "model.heads=4", "data.corpus=path", f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}", "train.steps=20", "train.batch=4", "train.seq_len=32",
        "train.eval_every=10", "train.eval_tokens=512", "train.log_every=5", "train.ckpt_every=10",
        "train.warmup=3", "model.dropout=0.1", *extra,
    ])


class Kill(Exception):
    pass


class KillAt:
    name = "kill"

    def __init__(self, step):
        self.at = step

    def after_step(self, trainer, step, record):
        if step == self.at:
            trainer.save()  # the periodic save of that step has not run yet: do what ckpt_every=10 does
            raise Kill

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def straight_and_resumed(cfg, tmp_path, kill_at: int) -> tuple[Trainer, Trainer]:
    """The run trained straight through, and the same run killed after ``kill_at`` steps and
    resumed; asserts the resumed parameters equal the straight ones exactly."""
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()
    broken = Trainer(cfg, tmp_path / "b", progress=False, callbacks=[KillAt(kill_at)])
    with pytest.raises(Kill):
        broken.fit()
    resumed = Trainer(cfg, tmp_path / "b", progress=False, resume=True)
    assert resumed.step == kill_at
    resumed.fit()
    a, b = params(straight.model), params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return straight, resumed


def test_resume_is_exact(corpus, tmp_path):
    straight, resumed = straight_and_resumed(tiny(corpus, tmp_path), tmp_path, kill_at=10)
    # the optimiser moments match too
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for pid in sa:
        assert torch.equal(sa[pid]["exp_avg"], sb[pid]["exp_avg"])


def test_metrics_and_summary(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path)
    summary = Trainer(cfg, tmp_path / "r", progress=False).fit()
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time", "peak_mem_mb", "tokens"):
        assert key in train[-1]
    assert [r["step"] for r in evals] == [10, 20]
    assert summary["final_val_bpb"] == pytest.approx(evals[-1]["val_bpb"])
    assert summary["final_val_loss"] < math.log(256)  # it learned something
    assert (tmp_path / "r" / "config.yaml").exists() and (tmp_path / "r" / "tokenizer.json").exists()


def test_existing_run_needs_resume(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, "train.steps=2")
    Trainer(cfg, tmp_path / "r", progress=False).fit()
    with pytest.raises(Exception, match="already holds a checkpoint"):
        Trainer(cfg, tmp_path / "r", progress=False)
    other = tiny(corpus, tmp_path, "train.steps=2", "model.dim=64")
    with pytest.raises(Exception, match="model.dim"):
        Trainer(other, tmp_path / "r", progress=False, resume=True)


def test_truncated_checkpoint_is_reported(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, "train.steps=2")
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    tr.fit()
    path = tmp_path / "r" / CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path, model=tr.model)
    assert main(["eval", str(tmp_path / "r")]) == 2


def test_interrupted_save_keeps_previous(corpus, tmp_path, monkeypatch):
    cfg = tiny(corpus, tmp_path, "train.steps=2")
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    tr.fit()
    path = tmp_path / "r" / CHECKPOINT
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with torch.no_grad():
        next(tr.model.parameters()).add_(1.0)
    with pytest.raises(OSError):
        save_checkpoint(path, model=tr.model, optimizer=tr.optimizer, state={"step": 99})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_nonfinite_steps_skipped_then_stop(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, "train.steps=12", "train.max_bad_steps=3", "train.ckpt_every=2")
    tr = Trainer(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    real = tr.forward
    bad_steps = {4, 8, 9, 10}

    def forward(x, targets=None):
        out = real(x, targets=targets)
        if tr.step + 1 in bad_steps:
            out.loss = out.loss * float("nan")
        return out

    tr.forward = forward
    snapshot = {}

    class Watch:
        name = "watch"

        def after_step(self, trainer, step, record):
            snapshot[step] = params(trainer.model)

        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

    tr.callbacks.append(Watch())
    with pytest.raises(TrainingStopped, match="3 non-finite steps"):
        tr.fit()
    # the skipped step 4 changed nothing; good steps do change the weights
    assert all(torch.equal(snapshot[3][k], snapshot[4][k]) for k in snapshot[3])
    assert not all(torch.equal(snapshot[4][k], snapshot[5][k]) for k in snapshot[4])
    recs = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("skipped")] == [4, 8, 9, 10]
    # the last good checkpoint: skipped steps leave weights untouched, so step 8 is still good
    state = load_checkpoint(tmp_path / "r" / CHECKPOINT, model=tr.model)
    assert state["step"] == 8  # saved before the third bad step in a row stopped the run


def test_cli_train_eval_generate(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "configs/lm.yaml", "--out", str(out), "--no-progress", "--set", "model.dim=32",
            "--set", "model.depth=1", "--set", "data.corpus=path", "--set", f"data.path={corpus}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.steps=3", "--set", "train.tokens=null",
            "--set", "train.batch=2", "--set", "train.seq_len=16", "--set", "train.eval_tokens=64"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "test", "--json", "--max-tokens", "100"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 100 and res["split"] == "test" and res["bpb"] > 0
    assert main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")


@pytest.mark.parametrize("argv, needle", [
    (["train", "configs/lm.yaml", "--out", "/tmp/x", "--set", "model.dim=abc"], "model.dim: expected an integer"),
    (["train", "configs/lm.yaml", "--out", "/tmp/x", "--set", "model.position.kind=nope"], "allowed: alibi"),
    (["train", "nonexistent.yaml", "--out", "/tmp/x"], "config file not found"),
    (["info", "configs/lm.yaml", "--set", "train.steps=5", "--set", "train.tokens=5"], "exactly one budget"),
    (["eval", "/nonexistent/run"], "no checkpoint at"),
])
def test_cli_errors_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err


def test_console_script_exit_code():
    r = subprocess.run([sys.executable, "-m", "archlab", "info", "configs/lm.yaml", "--set", "model.heads=3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "model.heads" in r.stderr


def test_wall_clock_budget(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path, "train.steps=null", "train.seconds=1.0", "train.eval_every=1000",
               "train.log_every=1000")
    assert cfg.train.total_steps() is None
    summary = Trainer(cfg, tmp_path / "r", progress=False).fit()
    assert summary["train_time"] >= 1.0 and summary["steps"] > 1
    # the time budget is training time: evaluation at the end is not counted in it
    assert summary["wall_time"] >= summary["train_time"]
