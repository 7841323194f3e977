"""Nothing lost, nothing overwritten: one writer per run folder, checksummed checkpoints,
resume refusals, signals that checkpoint, metrics that are not logged twice, no stray temp files,
and devices that do not exist refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from archlab.config import load_config
from archlab.registry import ConfigError
from archlab.train import CheckpointError, Trainer, TrainingStopped, load_checkpoint
from archlab.train import runlock
from archlab.train.checkpoint import CHECKPOINT, DIGEST_KEY, read_checkpoint
from archlab.train.runlock import RunLock
from archlab.train.runtime import pick_device
from archlab.train.trainer import Interrupted

QUIET = {"progress": False, "log": lambda s: None}


def sets(corpus, tmp_path, *extra) -> list[str]:
    return ["model.dim=32", "model.depth=1", "model.heads=4", "data.corpus=path", f"data.path={corpus}",
            f"data.cache_dir={tmp_path / 'cache'}", "train.steps=20", "train.batch=4", "train.seq_len=32",
            "train.eval_every=10", "train.eval_tokens=256", "train.log_every=5", "train.ckpt_every=10",
            "train.warmup=3", "model.dropout=0.1", "train.tensorboard=false", *extra]


def tiny(corpus, tmp_path, *extra):
    return load_config(None, sets(corpus, tmp_path, *extra))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def child(code: str, *args: str) -> subprocess.Popen:
    """A second Python process (the test's own interpreter), reading lines on stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


HOLD_LOCK = """
    import sys
    from archlab.train.runlock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.readline()
"""


# ----------------------------------------------------------------------------- the run lock


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(corpus, tmp_path):
    run = tmp_path / "r"
    p = child(HOLD_LOCK, str(run))
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as e:
            Trainer(tiny(corpus, tmp_path), run, **QUIET)
        msg = one_line(e)
        assert str(run) in msg and f"pid {p.pid}" in msg
        assert not (run / "config.yaml").exists()  # refused before writing anything
    finally:
        p.communicate("\n", timeout=30)
    # once the holder is gone the folder is free, and the lock goes with the trainer
    Trainer(tiny(corpus, tmp_path, "train.steps=2"), run, **QUIET).fit()
    assert not (run / ".lock").exists()
    with RunLock(run):  # nobody holds it after fit()
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(corpus, tmp_path):
    run = tmp_path / "r"
    p = child(HOLD_LOCK, str(run))
    assert p.stdout.readline().strip() == "locked"
    p.kill()
    p.wait(timeout=30)
    assert (run / ".lock").read_text().split()[0] == str(p.pid)  # the stale file is still there
    summary = Trainer(tiny(corpus, tmp_path, "train.steps=2"), run, **QUIET).fit()
    assert summary["steps"] == 2


def test_the_lock_is_released_when_setup_fails(tmp_path):
    cfg = load_config(None, [
        "model.dim=32", "model.depth=1", "model.heads=4", "model.max_seq_len=64", "data.corpus=task",
        "data.task={kind: flipflop, length: 12, train: 20, validation: 8, test: 8}", "train.steps=2",
        "train.batch=4", "train.seq_len=16", "train.tensorboard=false",
    ])
    for _ in range(2):  # the second attempt meets the same config error, not a held lock
        with pytest.raises(ConfigError, match="train.seq_len: 16 is shorter"):
            Trainer(cfg, tmp_path / "r", **QUIET)


def test_pid_file_fallback_without_flock(tmp_path, monkeypatch):
    """Where flock is unavailable, a lock naming a live process refuses; a dead one is taken."""
    monkeypatch.setattr(runlock, "fcntl", None)
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / ".lock").write_text(f"{os.getppid()} {runlock.socket.gethostname()}\n")
    with pytest.raises(ConfigError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path / "live").acquire()
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "dead").mkdir()
    (tmp_path / "dead" / ".lock").write_text(f"{p.stdout.strip()} {runlock.socket.gethostname()}\n")
    lock = RunLock(tmp_path / "dead").acquire()
    assert (tmp_path / "dead" / ".lock").read_text().split()[0] == str(os.getpid())
    lock.release()


# ----------------------------------------------------------------------------- checksums


@pytest.fixture
def saved(corpus, tmp_path):
    tr = Trainer(tiny(corpus, tmp_path, "train.steps=2"), tmp_path / "r", **QUIET)
    tr.fit()
    return tr, tmp_path / "r" / CHECKPOINT


def header_len(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_untouched_checkpoint_loads(saved):
    tr, path = saved
    assert load_checkpoint(path, model=tr.model, optimizer=tr.optimizer)["step"] == 2


def test_a_flipped_byte_in_the_tensor_data_is_caught(saved):
    tr, path = saved
    flip(path, header_len(path) + 1000)  # inside some tensor's bytes: still a well-formed file
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, model=tr.model)
    msg = one_line(e)
    assert str(path) in msg and "tensor '" in msg and "checksum" in msg


@pytest.mark.parametrize("needle, back", [
    (b'\\"step\\": 2', 1),  # the saved step: 2 -> 3, still valid JSON
    (b'"dtype":"F32"', 2),  # a tensor's dtype: F33
    (b'"' + DIGEST_KEY.encode() + b'"', 2),  # the key names: a damaged one must not switch the check off
    (b'"archlab"', 2),
    (b'"data_offsets":[0', 1),  # where a tensor's bytes start
])
def test_a_flipped_byte_in_the_header_is_caught(saved, needle, back):
    tr, path = saved
    at = path.read_bytes().index(needle)
    assert at < header_len(path)
    flip(path, at + len(needle) - back)
    with pytest.raises(CheckpointError, match=str(path)) as e:
        read_checkpoint(path)
    one_line(e)


def test_a_checkpoint_without_checksums_still_loads(saved):
    """Files written before checksums existed carry only the 'archlab' metadata."""
    tr, path = saved
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()["archlab"]
    old = path.with_name("old.safetensors")
    save_file(load_file(str(path)), str(old), metadata={"archlab": meta})
    assert load_checkpoint(old, model=tr.model, optimizer=tr.optimizer)["step"] == 2


# ----------------------------------------------------------------------------- resume refusals


def test_resume_with_nothing_to_resume_is_refused(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path)
    with pytest.raises(ConfigError, match="does not exist; nothing to resume") as e:
        Trainer(cfg, tmp_path / "missing", resume=True, **QUIET)
    one_line(e)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.yaml"):
        Trainer(cfg, tmp_path / "empty", resume=True, **QUIET)
    # a run that stopped before its first checkpoint: config.yaml and metrics, no checkpoint
    Trainer(cfg, tmp_path / "r", **QUIET)  # set up, never trained
    (tmp_path / "r" / "metrics.jsonl").write_text('{"step": 5, "loss": 3.0}\n')
    with pytest.raises(ConfigError, match="has a config.yaml but no checkpoint.safetensors") as e:
        Trainer(cfg, tmp_path / "r", resume=True, **QUIET)
    one_line(e)
    # starting it afresh instead drops the dead attempt's records
    Trainer(cfg, tmp_path / "r", **QUIET)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == ""


def test_resume_onto_a_checkpoint_of_another_shape_is_one_line(corpus, tmp_path):
    Trainer(tiny(corpus, tmp_path, "train.steps=1"), tmp_path / "a", **QUIET).fit()
    Trainer(tiny(corpus, tmp_path, "train.steps=1", "model.dim=64"), tmp_path / "b", **QUIET).fit()
    shutil.copy(tmp_path / "b" / CHECKPOINT, tmp_path / "a" / CHECKPOINT)
    with pytest.raises(CheckpointError, match="does not match the model") as e:
        Trainer(tiny(corpus, tmp_path, "train.steps=1"), tmp_path / "a", resume=True, **QUIET)
    msg = one_line(e)
    assert "[64" in msg and "[32" in msg


# ----------------------------------------------------------------------------- signals

SLOW_RUN = """
    import sys, time, torch
    torch.set_num_threads(1)
    from archlab.config import load_config
    from archlab.train.trainer import Interrupted, Trainer

    class Slow:  # tells the parent it is under way, then leaves it time to send the signal
        name = "slow"
        def after_step(self, trainer, step, record):
            if step == 3:
                print("running", flush=True)
            if step >= 3:
                time.sleep(0.05)
        def state_dict(self):
            return {}
        def load_state_dict(self, state):
            pass

    try:
        Trainer(load_config(None, sys.argv[2:]), sys.argv[1], progress=False, callbacks=[Slow()]).fit()
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(100 + e.signum)
"""


def test_sigterm_checkpoints_the_current_step_and_resume_is_exact(corpus, tmp_path):
    over = sets(corpus, tmp_path, "train.steps=40", "train.ckpt_every=100", "train.eval_every=100")
    cfg = load_config(None, over)
    straight = Trainer(cfg, tmp_path / "a", **QUIET)
    straight.fit()
    p = child(SLOW_RUN, str(tmp_path / "b"), *over)
    assert p.stdout.readline().strip() == "running"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 100 + signal.SIGTERM, err
    step = read_checkpoint(tmp_path / "b" / CHECKPOINT)[1]["state"]["step"]
    assert 3 <= step < 40  # ckpt_every=100: only the signal made this checkpoint
    assert f"SIGTERM: checkpoint saved at step {step}" in err and "Traceback" not in err
    resumed = Trainer(cfg, tmp_path / "b", resume=True, **QUIET)
    assert resumed.step == step
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_checkpoints_and_restores_the_handlers(corpus, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    class CtrlC:
        name = "ctrl_c"

        def after_step(self, trainer, step, record):
            if step == 7:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handler runs in this thread at the next bytecode

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    tr = Trainer(tiny(corpus, tmp_path), tmp_path / "r", **QUIET, callbacks=[CtrlC()])
    with pytest.raises(Interrupted) as e:
        tr.fit()
    assert isinstance(e.value, KeyboardInterrupt) and e.value.signum == signal.SIGINT
    assert read_checkpoint(tmp_path / "r" / CHECKPOINT)[1]["state"]["step"] == 7
    assert "SIGINT: checkpoint saved at step 7" in str(e.value) and "--resume" in str(e.value)
    assert {s: signal.getsignal(s) for s in before} == before
    Trainer(tiny(corpus, tmp_path), tmp_path / "r", resume=True, **QUIET)  # and the folder is free


# ----------------------------------------------------------------------------- records


class RaiseAt:
    """A crash (no save) after ``at`` steps."""

    name = "raise"

    def __init__(self, at: int) -> None:
        self.at = at

    def after_step(self, trainer, step, record):
        if step == self.at:
            raise RuntimeError("crash")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_resume_cuts_the_metrics_back_to_the_checkpoint(corpus, tmp_path):
    cfg = tiny(corpus, tmp_path)
    with pytest.raises(RuntimeError, match="crash"):
        Trainer(cfg, tmp_path / "r", **QUIET, callbacks=[RaiseAt(17)]).fit()  # logged 15, saved 10
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 16, "loss"')  # a line cut short by the kill
    Trainer(cfg, tmp_path / "r", resume=True, **QUIET).fit()
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [5, 10, 15, 20]
    assert [r["step"] for r in recs if "val_loss" in r] == [10, 20]
    assert [r["step"] for r in recs if r.get("event") == "resume"] == [10]


def test_nan_stop_names_the_real_checkpoint_or_none(corpus, tmp_path):
    def run(folder, bad_from):
        tr = Trainer(tiny(corpus, tmp_path, "train.max_bad_steps=2", "train.ckpt_every=3"), folder, **QUIET)
        real = tr.forward

        def forward(x, targets=None):
            out = real(x, targets=targets)
            if tr.step + 1 >= bad_from:
                out.loss = out.loss * float("nan")
            return out

        tr.forward = forward
        with pytest.raises(TrainingStopped) as e:
            tr.fit()
        return str(e.value)

    assert "no checkpoint was saved yet" in run(tmp_path / "a", bad_from=1)
    msg = run(tmp_path / "b", bad_from=5)  # saved at 3; 5 and 6 bad
    assert f"(step 3) kept in {tmp_path / 'b' / CHECKPOINT}" in msg
    assert read_checkpoint(tmp_path / "b" / CHECKPOINT)[1]["state"]["step"] == 3


def test_stale_temp_files_are_removed_by_the_next_save(saved, tmp_path):
    tr, path = saved
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = path.with_name(f".{path.name}.tmp-{dead.stdout.strip()}")
    mine = path.with_name(f".{path.name}.tmp-{os.getpid()}-1")  # ours, from an earlier failed save
    live = path.with_name(f".{path.name}.tmp-{os.getppid()}")  # another live writer's: not ours to touch
    for f in (stale, mine, live):
        f.write_bytes(b"partial")
    tr.save()
    assert not stale.exists() and not mine.exists() and live.exists()
    assert read_checkpoint(path)[1]["state"]["step"] == 2


# ----------------------------------------------------------------------------- devices


def test_a_missing_device_is_refused_before_any_data_is_prepared(corpus, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="train.device: 'cuda' requested but CUDA is not available") as e:
        Trainer(tiny(corpus, tmp_path, "train.device=cuda"), tmp_path / "r", **QUIET)
    assert "allowed here: auto, cpu" in one_line(e)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("name, needle", [
    ("cuda:3", "has 2 CUDA device"), ("mps", "MPS is not available"), ("tpu", "is not a device"),
])
def test_pick_device_refusals(name, needle, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if name == "mps" and getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=needle) as e:
        pick_device(name)
    assert "allowed" in one_line(e)
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_a_replaced_tokenizer_is_refused_by_eval_and_resume(corpus, tmp_path):
    """A BPE run whose tokenizer.json was swapped for the byte tokenizer: loading it for eval or
    generate, and resuming it, is one line, not bits per byte over the wrong units."""
    from archlab.train.run import load_run

    out = tmp_path / "run"
    cfg = tiny(corpus, tmp_path, "data.tokenizer=bpe", "data.bpe_vocab=300", "train.steps=2")
    Trainer(cfg, out, **QUIET).fit()
    load_run(out)  # intact: loads
    (out / "tokenizer.json").write_text(json.dumps({"kind": "bytes"}))
    with pytest.raises(ValueError) as e:
        load_run(out)
    assert "tokenizer" in one_line(e) and "'bpe'" in str(e.value)
    with pytest.raises(ValueError) as e:
        Trainer(tiny(corpus, tmp_path, "data.tokenizer=bpe", "data.bpe_vocab=300", "train.steps=4"), out,
                resume=True, **QUIET)
    assert "tokenizer" in one_line(e)


def test_resume_without_the_bpe_tokenizer_is_refused(corpus, tmp_path):
    """A resumed BPE run whose tokenizer.json is gone is refused, not given a freshly trained one."""
    out = tmp_path / "run"
    bpe = ("data.tokenizer=bpe", "data.bpe_vocab=300")
    Trainer(tiny(corpus, tmp_path, *bpe, "train.steps=2"), out, **QUIET).fit()
    (out / "tokenizer.json").unlink()
    with pytest.raises(ConfigError) as e:
        Trainer(tiny(corpus, tmp_path, *bpe, "train.steps=4"), out, resume=True, **QUIET)
    assert "tokenizer.json is missing" in one_line(e)
    assert not (out / "tokenizer.json").exists()


def test_resume_drops_undecodable_metrics_lines(corpus, tmp_path):
    """Bytes a kill left at the end of metrics.jsonl (not even UTF-8) are dropped on resume; the
    good records before them stay."""
    out = tmp_path / "run"
    Trainer(tiny(corpus, tmp_path, "train.steps=10"), out, **QUIET).fit()
    good = (out / "metrics.jsonl").read_text().splitlines()
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "lo\xff\xfe\x80')
    Trainer(tiny(corpus, tmp_path, "train.steps=10"), out, resume=True, **QUIET)
    kept = (out / "metrics.jsonl").read_text().splitlines()
    assert kept[:len(good)] == good and all(json.loads(line) for line in kept)
