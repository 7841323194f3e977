"""``archlab bench quality``: the shared loop is fair (identical batches, schedule and evaluation
for every contender), its bits per byte are exact, and bad options cost one line before any
training. Tiny models and budgets; no assertion on speed or on which contender wins."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from archlab.bench import peers, quality, quality_loop
from archlab.registry import ConfigError
from archlab.train.optim import lr_at

TINY_SETS = ["model.dim=32", "model.depth=1", "model.heads=2", "train.seq_len=16", "train.batch=4",
             "train.warmup=2", "data.corpus=path"]


@pytest.fixture
def sets(corpus, tmp_path):
    return [*TINY_SETS, f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]


def test_both_contenders_see_identical_batches(sets):
    """What each model is fed through the shared loop, recorded step by step: the same tokens for
    archlab and the peer (or a second archlab recipe when x-transformers is absent)."""
    base = quality.load_base(quality.DEFAULT_CONFIG, sets, tokens=4 * 16 * 6)
    data = quality.prepare_data(base)
    import dataclasses

    base = dataclasses.replace(base, model=data["model"])
    other = quality.Spec("xt", "xt") if peers.peers_available() else quality.Spec("gpt2", "archlab",
                                                                                   {"model.init": "fixed"})
    seen: dict[str, list[torch.Tensor]] = {}
    for spec in (quality.Spec("archlab", "archlab"), other):
        cfg = quality.contender_config(base, spec)
        torch.manual_seed(0)
        model, forward = (quality_loop.build_archlab(cfg) if spec.kind == "archlab"
                          else quality_loop.build_peer(cfg, spec.overrides))
        fed = seen.setdefault(spec.name, [])

        def recording(m, x, y, forward=forward, fed=fed):
            fed.append(torch.cat([x, y[:, -1:]], dim=1).clone())
            return forward(m, x, y)

        batches = quality_loop.sampler_fn("archlab", data["train"], seq_len=16, batch=4, seed=3)
        sched = quality_loop.schedule_fn("archlab", cfg.train, 6, cfg.train.lr)
        quality_loop.train_loop(model, recording, batches, steps=6, lr=sched, weight_decay=0.1, betas=(0.9, 0.95),
                           grad_clip=1.0)
    a, b = seen.values()
    assert len(a) == len(b) == 6
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # fresh windows every step
    # another seed draws other windows
    again = quality_loop.sampler_fn("archlab", data["train"], seq_len=16, batch=4, seed=4)
    assert not torch.equal(torch.cat([again(0)[0], again(0)[1][:, -1:]], 1), a[0])


def test_torch_sampler_is_seeded_and_differs_from_window_sampler():
    tokens = np.arange(1000, dtype=np.uint16)
    one = quality_loop.sampler_fn("torch", tokens, seq_len=8, batch=3, seed=1)
    two = quality_loop.sampler_fn("torch", tokens, seq_len=8, batch=3, seed=1)
    for step in range(3):
        (x1, y1), (x2, y2) = one(step), two(step)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one
    ws = quality_loop.sampler_fn("archlab", tokens, seq_len=8, batch=3, seed=1)
    assert not torch.equal(ws(0)[0], quality_loop.sampler_fn("torch", tokens, seq_len=8, batch=3, seed=1)(0)[0])


def test_schedules():
    class T:
        warmup, min_lr_ratio = 10, 0.1

    total, lr = 100, 1.0
    archlab = quality_loop.schedule_fn("archlab", T, total, lr)
    mult = quality_loop.schedule_fn("multiplied", T, total, lr)
    const = quality_loop.schedule_fn("constant", T, total, lr)
    assert [archlab(s) for s in range(total)] == [lr_at(s, lr=1.0, warmup=10, total=100, min_ratio=0.1)
                                                  for s in range(total)]
    assert mult(0) == pytest.approx(0.1)  # the ramp: (step + 1) / warmup
    assert archlab(9) == pytest.approx(1.0)  # archlab's cosine starts after warmup
    assert mult(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)) * 0.9 + 0.1)
    assert mult(100) == pytest.approx(0.1) and archlab(100) == pytest.approx(0.1)
    assert mult(50) < archlab(50)  # the whole-run cosine is further along at mid-run
    assert {const(s) for s in (0, 50, 99)} == {1.0}


def test_evaluation_is_archlabs_exact_evaluation(sets):
    """The bench scores with archlab's evaluator (tests/test_evaluate_exact.py proves it exact):
    bytes counted are those of the scored targets, the same for every contender."""
    base = quality.load_base(quality.DEFAULT_CONFIG, sets, tokens=64)
    data = quality.prepare_data(base)
    import dataclasses

    cfg = dataclasses.replace(base, model=data["model"])
    model, _ = quality_loop.build_archlab(cfg)
    ev = quality_loop.evaluate_bpb(model, data, seq_len=16, batch_size=4, max_tokens=100)
    assert ev["tokens"] == 100 and ev["bytes"] == 100  # byte tokenizer: one byte per target
    assert 7.0 < ev["bpb"] < 9.5  # an untrained model is near the 8-bit uniform


def test_paired_gap():
    gap = quality.paired_gap({0: 2.0, 1: 2.2, 2: 2.1}, {0: 2.1, 1: 2.3, 2: 2.2})
    assert gap["n"] == 3 and gap["mean"] == pytest.approx(-0.1)
    assert gap["lo"] == pytest.approx(-0.1) and gap["hi"] == pytest.approx(-0.1)  # no spread
    assert gap["ratio"] == pytest.approx(6.3 / 6.6)
    wide = quality.paired_gap({0: 2.0, 1: 2.4}, {0: 2.1, 1: 2.1})
    assert wide["lo"] < 0 < wide["hi"]
    assert quality.paired_gap({0: 1.0}, {1: 1.0}) == {"n": 0}


def test_end_to_end_writes_runs_and_reuses_them(sets, tmp_path, capsys):
    out = tmp_path / "q"
    argv = [f"--set={s}" for s in sets] + ["--tokens", "256", "--seeds", "0,1", "--eval-tokens", "200", "--no-peer",
                                           "--variant", "gpt2=model.init=fixed,loop.schedule=multiplied",
                                           "--out", str(out)]
    assert quality.main(argv) == 0
    first = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "archlab" and set(summary["summary"]) == {"archlab", "gpt2"}
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["archlab-s0.json", "archlab-s1.json", "gpt2-s0.json", "gpt2-s1.json"]
    rec = json.loads((out / "runs" / "gpt2-s1.json").read_text())
    assert rec["steps"] == 4 and rec["eval"]["tokens"] == 200 and rec["spec"]["schedule"] == "multiplied"
    assert "gap to archlab" in first
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == 3 and "| gpt2 |" in md and "(baseline)" in md
    # the same call reuses every run; a changed setting retrains
    assert quality.main(argv) == 0
    assert capsys.readouterr().out.count("(reused") == 4
    assert quality.main(argv[:-2] + ["--set=train.lr=1e-3", "--out", str(out)]) == 0
    assert "(reused" not in capsys.readouterr().out
    # different seeds of the same spec give different results (weights and batches both follow the seed)
    s0, s1 = (json.loads((out / "runs" / f"archlab-s{s}.json").read_text())["bpb"] for s in (0, 1))
    assert s0 != s1


def test_own_mode_runs_archlabs_trainer(sets, tmp_path):
    out = tmp_path / "own"
    argv = [f"--set={s}" for s in sets] + ["--tokens", "192", "--seeds", "0", "--eval-tokens", "100",
                                           "--mode", "own", "--out", str(out)]
    if not peers.peers_available():
        argv.append("--no-peer")
    assert quality.main(argv) == 0
    rec = json.loads((out / "runs" / "archlab-s0.json").read_text())
    assert rec["recipe"] == "archlab trainer" and rec["steps"] == 3
    if peers.peers_available():
        peer = json.loads((out / "runs" / "xt-s0.json").read_text())
        assert peer["recipe"] == quality.PEER_RECIPE


def test_shared_loop_is_archlabs_own_recipe(sets, tmp_path):
    """archlab through the shared loop ends where archlab's own trainer ends (same batches,
    schedule, optimiser groups and clipping), so a peer in the shared loop gets archlab's recipe."""
    bpb = {}
    for mode in ("shared", "own"):
        argv = [f"--set={s}" for s in sets] + ["--tokens", "640", "--seeds", "0", "--eval-tokens", "300",
                                               "--no-peer", "--mode", mode, "--out", str(tmp_path / mode)]
        assert quality.main(argv) == 0
        bpb[mode] = json.loads((tmp_path / mode / "runs" / "archlab-s0.json").read_text())["bpb"]
    assert bpb["shared"] == pytest.approx(bpb["own"], rel=1e-6)
    # and it is not a constant: another learning rate ends elsewhere
    argv = [f"--set={s}" for s in sets] + ["--tokens", "640", "--seeds", "0", "--eval-tokens", "300", "--no-peer",
                                           "--set=train.lr=1e-4", "--out", str(tmp_path / "slow")]
    assert quality.main(argv) == 0
    slow = json.loads((tmp_path / "slow" / "runs" / "archlab-s0.json").read_text())["bpb"]
    assert abs(slow - bpb["shared"]) > 1e-3


def test_peer_is_built_at_the_shared_shape(sets):
    pytest.importorskip("x_transformers")
    base = quality.load_base(quality.DEFAULT_CONFIG, sets + ["model.vocab_size=256"], tokens=64)
    model, forward = quality_loop.build_peer(base, {})
    ids = torch.randint(0, 256, (2, 16))
    assert model(ids).shape == (2, 16, 256)
    assert model.to_logits is not None and quality_loop.param_count(model) > 0
    loss = forward(model, ids, ids)
    assert math.isfinite(float(loss.detach()))


@pytest.mark.parametrize("args, needle", [
    (["--seeds", "a"], "--seeds a: expected comma-separated integers"),
    (["--seeds", "0,0"], "--seeds 0,0: give distinct"),
    (["--tokens", "0"], "--tokens 0: must be a positive"),
    (["--eval-tokens", "-1"], "--eval-tokens -1"),
    (["--variant", "x=data.corpus=stdlib"], "'data.corpus' is not a model.* or train.* key"),
    (["--variant", "x=loop.schedule=linear"], "loop.schedule must be one of archlab, multiplied, constant"),
    (["--variant", "x=loop.foo=1"], "unknown key 'loop.foo'"),
    (["--variant", "x=model.dim=0"], "model.dim"),
    (["--variant", "a=model.init=fixed", "--variant", "a=model.init=fan_in"], "defined twice"),
    (["--baseline", "nobody", "--no-peer"], "--baseline nobody: not a contender"),
    (["--set", "train.seconds=5"], "train.seconds: bench quality compares at equal steps"),
    (["--set", "train.grad_accum=2"], "train.grad_accum"),
    (["--mode", "both"], "invalid choice"),
])
def test_bad_options_are_one_line_before_training(args, needle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "archlab", "bench", "quality", "--no-peer", "--out",
                           str(tmp_path / "q"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("archlab: error:"), proc.stderr
    assert needle in lines[0]
    assert not (tmp_path / "q").exists()  # nothing trained, nothing written


def test_unknown_spec_names_are_refused():
    with pytest.raises(ConfigError, match="expected NAME=KEY=VALUE"):
        quality.parse_specs(["noequals"], [], peer=False)
    specs = quality.parse_specs(["archlab=model.init=fixed"], [], peer=False)
    assert [s.name for s in specs] == ["archlab"] and specs[0].overrides == {"model.init": "fixed"}
