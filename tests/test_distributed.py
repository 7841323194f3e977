"""DDP equivalence: 2 gloo processes on CPU follow the 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(corpus, tmp_path):  # noqa: F811
    sets = ["model.dim=32", "model.depth=2", "data.corpus=path", f"data.path={corpus}",
            f"data.cache_dir={tmp_path / 'cache'}", "train.steps=6", "train.tokens=null", "train.batch=8",
            "train.seq_len=32", "train.log_every=1", "train.eval_every=100", "train.eval_tokens=256",
            "train.warmup=2", "train.grad_accum=2"]
    args = ["train", "configs/lm.yaml", "--no-progress"] + [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, "-m", "archlab", *args, "--out", str(one)], check=True, env=env,
                   capture_output=True)
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        "-m", "archlab", *args, "--out", str(two)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:4000] + "\n...\n" + r.stderr[-1500:]  # the ranks' own errors come first
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert y == pytest.approx(x, rel=1e-5)
    assert (two / "checkpoint.safetensors").exists()
