"""Forward-gradient training (train.method: forward_gradient): the estimators, the seeded
perturbations, training without a backward pass, and the exact replay of a run from its
per-step scalars."""

from __future__ import annotations

import json

import pytest
import torch

from archlab.catalog.methods import ForwardGradientConfig
from archlab.config import load_config
from archlab.registry import ConfigError
from archlab.train import Trainer
from archlab.train.checkpoint import CHECKPOINT, read_checkpoint
from archlab.train.methods import RECORD, ForwardGradient

TINY = ["model.dim=16", "model.depth=1", "model.heads=2", "train.seq_len=16", "train.batch=2", "train.eval_every=100",
        "train.eval_tokens=128", "train.tensorboard=false", "train.warmup=1", "model.max_seq_len=32"]


def _cfg(*sets):
    return load_config("configs/lm.yaml", [*TINY, "train.method=forward_gradient", *sets])


def test_sign_median_and_scaled_coefficients():
    assert ForwardGradient.coefficients([2.0, -4.0], "scaled") == [1.0, -2.0]
    # |d| = 1, 3, 2, 5: median 2.5 (torch's lower median is 2): keep 3, 2, 5 with their signs
    assert ForwardGradient.coefficients([1.0, -3.0, 2.0, 5.0], "sign_median") == [0.0, -0.25, 0.25, 0.25]


@pytest.mark.parametrize("dist", ["rademacher", "gaussian", "ternary"])
def test_perturbations_are_seeded_and_distributed_as_asked(dist):
    fg = ForwardGradientConfig(distribution=dist, density=0.25 if dist == "ternary" else 1.0)
    params = [torch.zeros(200, 50), torch.zeros(300)]
    a = ForwardGradient.perturbation(params, fg, 3, 0, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, ForwardGradient.perturbation(params, fg, 3, 0, 1)))
    assert not torch.equal(a[0], ForwardGradient.perturbation(params, fg, 3, 0, 2)[0])
    v = a[0]
    if dist == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    elif dist == "ternary":
        assert set(v.unique().tolist()) == {-1.0, 0.0, 1.0} and abs(float((v != 0).float().mean()) - 0.25) < 0.02
    else:
        assert abs(float(v.std()) - 1.0) < 0.05


def test_the_scaled_estimate_points_along_the_gradient():
    """E[(∇L·ν) ν] = ∇L for Rademacher ν, and the estimate from K of them in n dimensions has a
    cosine ≈ √(K / (K + n)) with the true gradient (a wrong direction would give ≈ 0)."""
    cfg = _cfg("train.steps=1", "train.forward_gradient={perturbations: 600}")
    trainer = Trainer(cfg, "/tmp/archlab-fg-est", progress=False)
    x, y = trainer.sampler.batch(0)
    trainer.model.zero_grad()
    trainer.method.micro_step(trainer, x, y, accum=1)
    est = torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])
    trainer.model.zero_grad()
    trainer.model(x, targets=y).loss.backward()
    true = torch.cat([p.grad.reshape(-1) for p in trainer.model.parameters()])
    cos = float(torch.nn.functional.cosine_similarity(est, true, dim=0))
    expected = (600 / (600 + true.numel())) ** 0.5
    assert abs(cos - expected) < 0.08, (cos, expected)


def test_training_needs_no_backward_pass(tmp_path, monkeypatch):
    def no_backward(*a, **k):
        raise AssertionError("backward called")

    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    summary = Trainer(_cfg("train.steps=5", "train.forward_gradient={perturbations: 3}"), tmp_path / "r",
                      progress=False).fit()
    assert summary["steps"] == 5
    recs = [json.loads(line) for line in (tmp_path / "r" / RECORD).read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and all(len(r["d"]) == 3 for r in recs)


@pytest.mark.parametrize("extra", [[], ["train.forward_gradient={perturbations: 4, estimator: sign_median, "
                                         "distribution: ternary, density: 0.3}", "train.grad_accum=2"]])
def test_a_run_replays_from_its_scalars_bit_for_bit(tmp_path, extra):
    fg = [e for e in extra if e.startswith("train.forward_gradient")]
    base = [*extra] if fg else ["train.forward_gradient={perturbations: 4}", *extra]
    Trainer(_cfg("train.steps=6", *base), tmp_path / "a", progress=False).fit()
    rec = tmp_path / "a" / RECORD
    replay = [*base, f"train.forward_gradient.replay={rec}"]  # the same run, its scalars read back
    Trainer(_cfg("train.steps=6", *replay), tmp_path / "b", progress=False).fit()
    a, _ = read_checkpoint(tmp_path / "a" / CHECKPOINT)
    b, _ = read_checkpoint(tmp_path / "b" / CHECKPOINT)
    weights = [k for k in a if k.startswith("model.")]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)
    assert not (tmp_path / "b" / RECORD).exists()  # a replay computes nothing new
    bits = 32 * sum(len(json.loads(line)["d"]) for line in rec.read_text().splitlines())
    assert bits < 32 * sum(a[k].numel() for k in weights)  # the run is smaller than its weights


def test_resume_continues_the_record_without_duplicates(tmp_path):
    Trainer(_cfg("train.steps=4", "train.ckpt_every=2", "train.forward_gradient={perturbations: 2}"), tmp_path / "r",
            progress=False).fit()
    Trainer(_cfg("train.steps=6", "train.ckpt_every=2", "train.forward_gradient={perturbations: 2}"), tmp_path / "r",
            resume=True, progress=False).fit()
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / RECORD).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_refusals():
    with pytest.raises(ConfigError, match="train.forward_gradient: only read when train.method is forward_gradient"):
        load_config("configs/lm.yaml", ["train.forward_gradient={perturbations: 4}"], require_budget=False)
    with pytest.raises(ConfigError, match="density: only read when distribution is ternary"):
        _cfg("train.forward_gradient={density: 0.5}")
    with pytest.raises(ConfigError, match="perturbations: must be ≥ 1"):
        _cfg("train.forward_gradient={perturbations: 0}")
    cfg = _cfg("train.steps=1", "train.forward_gradient={replay: /nonexistent.jsonl}")
    with pytest.raises(ConfigError, match="replay: /nonexistent.jsonl not found"):
        Trainer(cfg, "/tmp/archlab-fg-refuse", progress=False).fit()


def _directional(sets):
    from torch.func import functional_call, jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from archlab.models import build_model

    torch.manual_seed(0)
    cfg = load_config("configs/lm.yaml", ["model.dim=32", "model.depth=2", "model.heads=4", *sets],
                      require_budget=False)
    m = build_model(cfg.model).double()
    params = {n: p.detach() for n, p in m.named_parameters()}
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))

    def loss(*values):
        return functional_call(m, dict(zip(params, values)), (x,), {"targets": y}).loss

    tangents = tuple(torch.randn_like(p) for p in params.values())
    with sdpa_kernel(SDPBackend.MATH):
        _, d = jvp(loss, tuple(params.values()), tangents)
    m(x, targets=y).loss.backward()
    return d, sum((p.grad * t).sum() for p, t in zip(m.parameters(), tangents) if p.grad is not None)


def _allowed():
    from archlab.config import FORWARD_MODE_MIXERS, FORWARD_MODE_POSITIONS

    cases = [[f"model.position.kind={k}"] for k in FORWARD_MODE_POSITIONS]
    cases += [[f"model.layers.default.mixer.kind={k}"] for k in FORWARD_MODE_MIXERS]
    return cases + [["model.family=hierarchical"], ["model.layers.default.norm.placement=laurel"]]


@pytest.mark.parametrize("sets", _allowed(), ids=str)
def test_what_the_method_allows_has_an_exact_forward_mode(sets):
    """The allow-list of config._check_forward_mode is what this test verifies: forward mode
    through the model equals the gradient's directional derivative."""
    d, want = _directional(sets)
    assert torch.allclose(d, want, rtol=1e-8, atol=1e-10), (float(d), float(want))


@pytest.mark.parametrize("sets,needle", [
    (["model.position.kind=learned"], "position 'learned'"), (["model.position.kind=cope"], "position 'cope'"),
    (["model.position.learn_scale=true"], "with learn_scale"), (["model.layers.default.mixer.kind=local"], "'local'"),
    (["model.family=safu", "model.depth=4", "model.tie_embeddings=false"], "model.family lm or hierarchical"),
])
def test_what_has_no_verified_forward_mode_is_refused(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("configs/lm.yaml", ["train.method=forward_gradient", *sets], require_budget=False)


def test_bench_method_measures_each_method_in_its_own_process(tmp_path, capsys):
    from archlab.cli import main

    out = tmp_path / "m.json"
    assert main(["bench", "method", "--dim", "16", "--depth", "1", "--seq-len", "16", "--batch", "2", "--ks", "2",
                 "--steps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"backprop", "forward_gradient K=2"} and res["backprop"]["time_vs_backprop"] == 1.0
    assert all(r["step_s"] > 0 and r["extra_peak_mb"] >= 0 for r in res.values())
    assert main(["bench", "method", "--ks", "x"]) == 2
