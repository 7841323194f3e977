"""What training tells the user: a header before the first step, plain lines every
``train.log_every`` steps in a log file (or with progress off), a bar with tokens/s and lr on a
terminal, stdout left alone, and evaluation bars only when asked for on a terminal."""

from __future__ import annotations

import io
import re
import sys

import pytest

from archlab.config import load_config
from archlab.train import Trainer
from archlab.train.evaluate import evaluate
from archlab.train.taskeval import evaluate_task


def tiny(corpus, tmp_path, *extra):
    return load_config(None, [
        "model.dim=32", "model.depth=1", "model.heads=4", "data.corpus=path", f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}", "train.steps=20", "train.batch=4", "train.seq_len=32",
        "train.eval_every=10", "train.eval_tokens=256", "train.log_every=5", "train.ckpt_every=10",
        "train.warmup=3", "train.tensorboard=false", *extra,
    ])


class Terminal(io.StringIO):
    """A stand-in for an interactive stderr."""

    def isatty(self) -> bool:
        return True


STEP_LINE = re.compile(r"^step (\d+)/20  loss \d+\.\d{4}  lr \d\.\d\de-\d\d  [\d,]+ tok/s(  val_bpb \d+\.\d{4})?$")


def test_header_then_a_line_every_log_every_steps(corpus, tmp_path):
    lines: list[str] = []
    tr = Trainer(tiny(corpus, tmp_path), tmp_path / "r", progress=False, log=lines.append)
    tr.fit()
    head = "\n".join(lines[:4])
    assert f"new run in {tmp_path / 'r'}" in head
    assert "device cpu (fp32)" in head and f"{tr.n_params:,} parameters" in head
    assert "4 sequences x 32 tokens = 128 tokens per step" in head
    assert "budget train.steps=20: 20 steps, 2,560 tokens" in head
    steps = [m for m in map(STEP_LINE.match, lines[4:]) if m]
    assert [int(m.group(1)) for m in steps] == [5, 10, 15, 20]
    # the validation metric appears once there is one (first evaluation at step 10)
    assert [m.group(2) is not None for m in steps] == [False, True, True, True]


def test_resume_header_and_other_budgets(corpus, tmp_path):
    lines: list[str] = []
    Trainer(tiny(corpus, tmp_path, "train.steps=10"), tmp_path / "r", progress=False, log=lines.append).fit()
    lines.clear()
    cfg = tiny(corpus, tmp_path, "train.steps=null", "train.tokens=3000")
    Trainer(cfg, tmp_path / "r", resume=True, progress=False, log=lines.append).fit()
    assert f"resuming {tmp_path / 'r'} at step 10" in lines[0]
    assert "budget train.tokens=3,000: 24 steps (3,072 tokens)" in lines[3]
    assert lines[-1].startswith("step 24/24  loss")
    lines.clear()
    cfg = tiny(corpus, tmp_path, "train.steps=null", "train.seconds=0.2", "train.log_every=1000")
    Trainer(cfg, tmp_path / "s", progress=False, log=lines.append).fit()
    assert "budget train.seconds=0.2: as many steps as 0.2 s of training allow" in lines[3]
    assert re.match(r"^step \d+ \(\d+/0.2 s\)  loss", lines[-1])  # the last step is always logged


def test_default_output_goes_to_stderr_as_lines_when_not_a_terminal(corpus, tmp_path, capsys):
    """progress=True (the CLI default) into a log file: plain lines, no bar frames, and stdout
    untouched (the CLI prints the summary JSON there)."""
    Trainer(tiny(corpus, tmp_path), tmp_path / "r").fit()
    out, err = capsys.readouterr()
    assert out == ""
    assert "\r" not in err and "it/s" not in err
    assert [line.split("/")[0] for line in err.splitlines() if line.startswith("step ")] == \
        ["step 5", "step 10", "step 15", "step 20"]


def test_a_terminal_gets_a_bar_with_tokens_per_second_and_lr(corpus, tmp_path, monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    lines: list[str] = []
    Trainer(tiny(corpus, tmp_path), tmp_path / "r", log=lines.append).fit()
    drawn = term.getvalue()
    assert "20/20" in drawn and "tok/s=" in drawn and "lr=" in drawn and "val_bpb=" in drawn
    assert len(lines) == 4 and lines[0].startswith("archlab train:")  # the header; the bar does the rest


def test_quiet_prints_nothing_but_warnings(corpus, tmp_path):
    lines: list[str] = []
    tr = Trainer(tiny(corpus, tmp_path, "train.steps=6"), tmp_path / "r", progress=False, quiet=True,
                 log=lines.append)
    real = tr.forward

    def forward(x, targets=None):
        out = real(x, targets=targets)
        if tr.step + 1 == 3:
            out.loss = out.loss * float("nan")
        return out

    tr.forward = forward
    tr.fit()
    assert lines == ["step 3: non-finite loss or gradient; step skipped (1 in a row)"]


def test_evaluate_shows_a_bar_only_when_asked_on_a_terminal(corpus, tmp_path, monkeypatch):
    tr = Trainer(tiny(corpus, tmp_path), tmp_path / "r", progress=False, log=lambda s: None)
    tr.close()
    stream = tr.streams["validation"]

    def run(progress: bool, tty: bool) -> tuple[str, dict]:
        err = Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        res = evaluate(tr.model, stream, seq_len=32, batch_size=4, max_tokens=300, progress=progress)
        return err.getvalue(), res

    drawn, with_bar = run(True, True)
    assert drawn.startswith("\reval:") and "/300 [" in drawn  # over the 300 targets; cleared at the end
    assert run(False, True)[0] == "" and run(True, False)[0] == ""
    assert run(False, False)[1] == with_bar  # the bar changes nothing in the result


def test_task_evaluation_bar(tmp_path, monkeypatch):
    cfg = load_config(None, [
        "model.dim=32", "model.depth=1", "model.heads=4", "model.max_seq_len=64", "data.corpus=task",
        "data.task={kind: flipflop, length: 12, train: 20, validation: 10, test: 10}", "train.steps=2",
        "train.batch=4", "train.seq_len=24", "train.tensorboard=false",
    ])
    tr = Trainer(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    tr.close()
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    res = evaluate_task(tr.model, tr.streams["validation"], batch_size=4, progress=True)
    assert "eval validation:" in term.getvalue() and "/10 [" in term.getvalue() and res["examples"] == 10
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert evaluate_task(tr.model, tr.streams["validation"], batch_size=4) == pytest.approx(res)
    assert quiet.getvalue() == ""
