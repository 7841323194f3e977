"""Sparse autoencoders: the module's maths, training (resume, dead latents, one writer), the
report's numbers, the CLI's refusals, and the formulas against sae-lens when it is installed."""

from __future__ import annotations

import dataclasses
import json
import math
import signal

import pytest
import torch

from archlab.analysis.sae import (
    SparseAutoencoder,
    auxk_loss,
    explained_variance,
    fraction_recovered,
    reconstruction_loss,
    sae_metrics,
    sparsity_loss,
)
from archlab.analysis.sae_train import SAEConfig, SAETrainer, load_sae, parse_sae_config
from archlab.cli import main
from archlab.registry import ConfigError
from archlab.train.checkpoint import CHECKPOINT, read_checkpoint
from archlab.train.trainer import Interrupted

@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the tests draw their inputs from the global generator


TINY_RUN = ["--set", "model.dim=32", "--set", "model.depth=2", "--set", "model.heads=4", "--set", "train.seq_len=32",
            "--set", "train.batch=8", "--set", "train.tokens=16384", "--set", "train.eval_every=1000",
            "--set", "train.eval_tokens=2048", "--set", "model.max_seq_len=64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "lm"
    assert main(["train", "configs/lm.yaml", "--out", str(out), "--no-progress", *TINY_RUN]) == 0
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    from archlab.train.run import load_run

    return load_run(run_dir)


def _sae(arch="topk", d=8, m=32, k=4, **kw):
    return SparseAutoencoder(d, m, architecture=arch, k=k, generator=torch.Generator().manual_seed(0), **kw)


# --------------------------------------------------------------------- the module


def test_topk_keeps_exactly_k_nonnegative_latents():
    sae = _sae("topk", k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive: exactly k survive
    z = sae.encode(torch.randn(50, 8))
    assert ((z > 0).sum(-1) == 5).all() and (z >= 0).all()
    pre = sae.pre_activations(torch.randn(50, 8))
    z = sae.activate(pre)
    top = pre.topk(5, dim=-1).indices
    assert torch.equal(z.gather(-1, top), pre.gather(-1, top).clamp_min(0))  # the k largest, ReLU'd


def test_batchtopk_keeps_k_per_token_on_average_and_thresholds_at_inference():
    sae = _sae("batchtopk", k=3)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)
    x = torch.randn(40, 8)
    z = sae.encode(x)
    assert int((z > 0).sum()) == 3 * 40
    assert not ((z > 0).sum(-1) == 3).all()  # spread unevenly over tokens, unlike TopK
    sae.track(z)
    assert float(sae.threshold) > 0
    sae.eval()
    pre = sae.pre_activations(x)
    assert torch.equal(sae.encode(x), pre * (pre > sae.threshold))


def test_relu_is_relu_and_pre_bias_kinds_differ():
    x = torch.randn(20, 8) + 3.0
    tied = _sae("relu", pre_bias="tied")
    with torch.no_grad():
        tied.b_dec.fill_(3.0)
    assert torch.allclose(tied.pre_activations(x), (x - 3.0) @ tied.W_enc + tied.b_enc)
    assert torch.equal(tied.encode(x), torch.relu(tied.pre_activations(x)))
    none = _sae("relu", pre_bias="none")
    none.load_state_dict(tied.state_dict(), strict=False)
    assert not torch.allclose(none.pre_activations(x), tied.pre_activations(x))  # the switch does something
    untied = _sae("relu", pre_bias="untied")
    assert "b_pre" in dict(untied.named_parameters()) and "b_pre" not in dict(tied.named_parameters())


def test_sparsity_penalty_is_decoder_norm_weighted_l1():
    sae = _sae("relu", unit_decoder=False)
    z = torch.rand(6, 32)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, 32)[:, None])
    want = sum(float(z[t, i]) * float(sae.W_dec[i].norm()) for t in range(6) for i in range(32)) / 6
    assert math.isclose(float(sparsity_loss(z, sae.W_dec)), want, rel_tol=1e-5)
    x = torch.randn(6, 8)
    assert math.isclose(float(reconstruction_loss(x, torch.zeros_like(x))), float((x ** 2).sum() / 6), rel_tol=1e-6)


def test_explained_variance_and_fraction_recovered_on_known_cases():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert explained_variance(x, x) == 1.0
    assert abs(explained_variance(x, x.mean(0).expand_as(x))) < 1e-12
    assert math.isclose(explained_variance(x, 0.5 * x + 0.5 * x.mean(0)), 0.75, rel_tol=1e-9)
    assert fraction_recovered(2.0, 2.0, 5.0) == 1.0 and fraction_recovered(2.0, 5.0, 5.0) == 0.0
    assert fraction_recovered(2.0, 3.5, 5.0) == 0.5
    m = sae_metrics(x.float(), x.float(), torch.tensor([[1.0, 0.0, 2.0]] * 100))
    assert m["l0"] == 2.0 and m["mse"] == 0.0 and math.isclose(m["alive_fraction"], 2 / 3)


def test_auxk_is_zero_without_dead_latents_and_trains_only_dead_ones():
    sae = _sae("topk", k=2)
    x = torch.randn(30, 8)
    pre = sae.pre_activations(x)
    resid = torch.randn(30, 8)
    assert float(auxk_loss(sae, pre, resid, torch.zeros(32, dtype=torch.bool), 4)) == 0.0
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:5] = True
    with torch.no_grad():
        sae.b_enc[:5] = 5.0  # positive pre-activations, so the aux latents are used
    loss = auxk_loss(sae, sae.pre_activations(x), resid, dead, 4)
    assert float(loss) > 0
    loss.backward()
    g = sae.W_enc.grad.abs().sum(0)
    assert (g[:5] > 0).any() and (g[5:] == 0).all()


def test_unit_decoder_projection_and_renorm():
    sae = _sae("topk")
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.project_decoder_grad()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(32), atol=1e-5)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalise_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
    free = _sae("topk", unit_decoder=False)
    with torch.no_grad():
        free.W_dec.mul_(3.0)
    free.normalise_decoder()
    assert torch.allclose(free.W_dec.norm(dim=1), torch.full((32,), 3.0))


def test_fit_scale_makes_mean_norm_sqrt_d_and_reconstruction_is_in_input_units():
    sae = _sae("topk", k=32)  # k = all latents and W_enc = W_dec^T orthogonal-ish: near-identity start
    x = 7.0 * torch.randn(200, 8)
    sae.fit_scale(x)
    assert math.isclose(float((x * sae.scale).norm(dim=-1).mean()), math.sqrt(8), rel_tol=1e-5)
    x_hat, _ = sae(x)
    assert x_hat.shape == x.shape
    assert float(x_hat.abs().mean()) > 1.0  # decoded back to the input's units, not the scaled ones


def test_dead_tracking_counts_tokens_since_fired():
    sae = _sae("relu")
    z = torch.zeros(10, 32)
    z[:, 3] = 1.0
    sae.track(z)
    sae.track(z)
    assert sae.since_fired[3] == 0 and sae.since_fired[0] == 20
    assert sae.dead(20).sum() == 31 and sae.dead(21).sum() == 0


# --------------------------------------------------------------------- settings


def test_settings_refuse_knobs_that_would_do_nothing():
    with pytest.raises(ConfigError, match="sae.l1: only read when architecture is relu"):
        parse_sae_config({"site": "blocks.0"}, ["l1=3"])
    with pytest.raises(ConfigError, match="sae.k: only read when architecture is topk or batchtopk"):
        parse_sae_config({"site": "blocks.0"}, ["architecture=relu", "k=8"])
    with pytest.raises(ConfigError, match="sae.dead: auxk needs"):
        parse_sae_config({"site": "blocks.0"}, ["architecture=relu", "dead=auxk"])
    with pytest.raises(ConfigError, match="sae.aux_k: only read when dead is auxk"):
        parse_sae_config({"site": "blocks.0"}, ["dead=none", "aux_k=4"])
    with pytest.raises(ConfigError, match="sae.site: required"):
        parse_sae_config({}, [])
    assert parse_sae_config({"site": "x"}, ["architecture=relu"]).dead_method == "resample"
    assert parse_sae_config({"site": "x"}, []).dead_method == "auxk"


_WRONG = {int: "abc", float: "abc", bool: "maybe", str: 3}


def _fuzz_cases():
    cases = []
    for f in dataclasses.fields(SAEConfig):
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type), str)
        cases.append((f.name, _WRONG.get(tp, 3)))
        if tp in (int, float):
            cases.append((f.name, -1))
    cases += [("architecture", "gated"), ("pre_bias", "sometimes"), ("dead", "revive"), ("nonsense", 1),
              ("min_lr_ratio", 2.0), ("lr", 0), ("tokens", 0)]
    return cases


@pytest.mark.parametrize("key,value", _fuzz_cases(), ids=lambda v: str(v))
def test_cli_refuses_every_bad_setting_in_one_line(key, value, tmp_path, capsys):
    rc = main(["sae", "train", str(tmp_path / "no-run"), "--site", "blocks.0", "--out", str(tmp_path / "s"),
               "--set", f"{key}={json.dumps(value)}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("archlab: error:"), err
    if key == "site":
        return
    assert f"sae.{key}" in err or key == "nonsense" and "unknown key" in err, err
    assert not (tmp_path / "s").exists()  # refused before anything was opened or written


def test_cli_refuses_unknown_site_and_non_runs(run_dir, tmp_path, capsys):
    rc = main(["sae", "train", str(run_dir), "--site", "blocks.7", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no site 'blocks.7'" in err and len(err.splitlines()) == 1
    rc = main(["sae", "report", str(tmp_path)])
    assert rc == 2 and "no SAE here" in capsys.readouterr().err
    rc = main(["sae", "report", str(run_dir)])
    assert rc == 2 and "not an SAE checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------- training


def _train(run, run_dir, out, *sets, **kw):
    cfg = parse_sae_config({"site": "blocks.1.out"}, ["tokens=4096", "batch=4", "ckpt_every=4", "log_every=1",
                                                     "warmup=2", *sets])
    return SAETrainer(run, run_dir, cfg, out, progress=False, **kw)


def test_training_lowers_the_reconstruction_error_and_writes_the_folder(run, run_dir, tmp_path):
    summary = _train(run, run_dir, tmp_path / "s", "tokens=16384").fit()
    recs = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == summary["steps"] == 128
    assert recs[-1]["explained_variance"] > recs[0]["explained_variance"] + 0.1
    assert all(r["l0"] == 16 for r in recs)
    for name in ("sae.yaml", "summary.json", CHECKPOINT):
        assert (tmp_path / "s" / name).is_file()


def test_resume_is_exact(run, run_dir, tmp_path, monkeypatch):
    _train(run, run_dir, tmp_path / "whole").fit()
    original = SAETrainer.train_step

    def stop_at_13(self, step):
        rec = original(self, step)
        if step == 12:
            self._stop = signal.SIGTERM
        return rec

    monkeypatch.setattr(SAETrainer, "train_step", stop_at_13)
    with pytest.raises(Interrupted, match="checkpoint saved at step 13"):
        _train(run, run_dir, tmp_path / "cut").fit()
    monkeypatch.setattr(SAETrainer, "train_step", original)
    _train(run, run_dir, tmp_path / "cut", resume=True).fit()
    a, _ = read_checkpoint(tmp_path / "whole" / CHECKPOINT)
    b, _ = read_checkpoint(tmp_path / "cut" / CHECKPOINT)
    for name in a:
        if not name.startswith("rng."):
            assert torch.equal(a[name], b[name]), name
    lines = lambda p: [json.loads(x)["step"] for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "cut") == lines(tmp_path / "whole")  # no step logged twice


def test_folder_safety(run, run_dir, tmp_path):
    _train(run, run_dir, tmp_path / "s").fit()
    with pytest.raises(ConfigError, match="already holds an SAE"):
        _train(run, run_dir, tmp_path / "s")
    with pytest.raises(ConfigError, match="settings differ .* at k"):
        _train(run, run_dir, tmp_path / "s", "k=8", resume=True)
    with pytest.raises(ConfigError, match="holds no SAE checkpoint"):
        _train(run, run_dir, tmp_path / "empty", resume=True)
    from archlab.train.runlock import RunLock

    with RunLock(tmp_path / "t").acquire():
        with pytest.raises(ConfigError, match="pid"):
            _train(run, run_dir, tmp_path / "t").fit()


def test_resampling_revives_dead_latents(run, run_dir, tmp_path):
    t = _train(run, run_dir, tmp_path / "s", "architecture=relu", "l1=0.1", "resample_every=8", "dead_window=256")
    with torch.no_grad():
        t.sae.b_enc[:64] = -1e4  # these can never fire
    t.fit()
    recs = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("resampled", 0) for r in recs) >= 64
    assert (t.sae.b_enc[:64] > -1e4).all()


def test_auxk_gives_dead_latents_gradient_in_training(run, run_dir, tmp_path):
    for dead, extra, expect in (("auxk", ["aux_k=256"], True), ("none", [], False)):
        # aux_k = every latent: the 8 pushed far below zero are among the chosen dead ones
        t = _train(run, run_dir, tmp_path / dead, f"dead={dead}", "dead_window=64", "tokens=1024", *extra)
        with torch.no_grad():
            t.sae.b_enc[:8] = -50.0
        before = t.sae.W_enc[:, :8].clone()
        t.fit()
        assert (not torch.equal(before, t.sae.W_enc[:, :8])) is expect, dead


def test_save_load_round_trip_is_bit_exact(run, run_dir, tmp_path):
    t = _train(run, run_dir, tmp_path / "s", "architecture=batchtopk")
    t.fit()
    sae, cfg, state = load_sae(tmp_path / "s")
    assert cfg == t.cfg and state["step"] == t.step and not sae.training
    for name, v in t.sae.state_dict().items():
        assert torch.equal(v, sae.state_dict()[name]), name


# --------------------------------------------------------------------- the report


def test_splice_identity_keeps_the_loss_and_zero_changes_it(run):
    from archlab.models.capture import splice

    x = torch.randint(0, 256, (2, 32))
    y = torch.randint(0, 256, (2, 32))
    clean = float(run.model(x, targets=y).nll)
    with splice(run.model, "blocks.1.out", lambda t: t.clone()):
        assert float(run.model(x, targets=y).nll) == clean
    with splice(run.model, "blocks.1.out", torch.zeros_like):
        assert float(run.model(x, targets=y).nll) != clean
    assert float(run.model(x, targets=y).nll) == clean  # the hook is gone


def test_report_numbers_and_page(run, run_dir, tmp_path, capsys):
    _train(run, run_dir, tmp_path / "s", "tokens=16384").fit()
    assert main(["sae", "report", str(tmp_path / "s"), "--max-tokens", "2048", "--latents", "3",
                 "--contexts", "2"]) == 0
    res = json.loads((tmp_path / "s" / "report.json").read_text())
    assert res["eval_tokens"] >= 2048 and res["l0"] == 16.0
    assert 0 < res["explained_variance"] < 1
    assert res["loss_clean"] <= res["loss_sae"] + 0.05 and res["loss_sae"] < res["loss_zero"]
    assert math.isclose(res["fraction_recovered"], fraction_recovered(res["loss_clean"], res["loss_sae"],
                                                                      res["loss_zero"]))
    assert len(res["top_latents"]) == 3 and all(len(lat["contexts"]) == 2 for lat in res["top_latents"])
    ctx = res["top_latents"][0]["contexts"][0]
    assert math.isclose(max(ctx["acts"]), ctx["value"], rel_tol=1e-3)  # the peak token carries the top value
    page = (tmp_path / "s" / "report.html").read_text()
    assert "data:image/png;base64," in page and "latent " in page and "fraction of loss recovered" in page
    assert "recovered" in capsys.readouterr().out


def test_report_matches_a_direct_computation(run, run_dir, tmp_path):
    from archlab.analysis.sae_report import EVAL_SEED, evaluate_sae
    from archlab.analysis.sae_train import ActivationSource

    t = _train(run, run_dir, tmp_path / "s")
    t.fit()
    res = evaluate_sae(tmp_path / "s", max_tokens=128)  # one batch of 4 windows × 32
    sae, cfg, _ = load_sae(tmp_path / "s")
    src = ActivationSource(run, cfg.site, batch=cfg.batch, seq_len=0, seed=EVAL_SEED, split="validation")
    _, _, a = src.batch(0)
    x = a.reshape(-1, sae.d_in)
    x_hat, z = sae(x)
    m = sae_metrics(x, x_hat, z)
    assert math.isclose(res["explained_variance"], m["explained_variance"], rel_tol=1e-6)
    from archlab.models.capture import splice

    xb, yb, _ = src.batch(0)
    with torch.no_grad(), splice(run.model, cfg.site, lambda o: sae(o.reshape(-1, sae.d_in))[0].reshape(o.shape)):
        spliced = float(run.model(xb, targets=yb).nll)
    assert math.isclose(res["loss_sae"], spliced, rel_tol=1e-6) and res["loss_sae"] != res["loss_clean"]
    assert math.isclose(res["mse"], m["mse"], rel_tol=1e-6) and res["l0"] == m["l0"]


# --------------------------------------------------------------------- the peer


def test_formulas_match_sae_lens():
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.saes.sae import TrainStepInput

    d, m = 16, 64
    x = torch.randn(300, d) * 2 + 0.5
    ours = _sae("relu", d=d, m=m, unit_decoder=False)
    with torch.no_grad():
        ours.W_dec.mul_(torch.rand(m, 1) + 0.5)  # norms ≠ 1: the weighting matters
        ours.b_enc.normal_()
        ours.b_dec.normal_()
    cfg = sae_lens.StandardTrainingSAEConfig(d_in=d, d_sae=m, l1_coefficient=0.7, apply_b_dec_to_input=True)
    peer = sae_lens.StandardTrainingSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(peer, name).copy_(getattr(ours, name))
    out = peer.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 0.7}, dead_neuron_mask=None,
                                                    n_training_steps=0, is_logging_step=False))
    z = ours.encode(x)
    x_hat = ours.decode(z)
    assert torch.allclose(out.feature_acts, z, atol=1e-5) and torch.allclose(out.sae_out, x_hat, atol=1e-5)
    assert math.isclose(float(out.losses["mse_loss"]), float(reconstruction_loss(x, x_hat)), rel_tol=1e-5)
    assert math.isclose(float(out.losses["l1_loss"]), 0.7 * float(sparsity_loss(z, ours.W_dec)), rel_tol=1e-5)
    calc = ExplainedVarianceCalculator()
    for lo in range(0, 300, 128):
        calc.add_batch(x_hat[lo:lo + 128].detach(), x[lo:lo + 128])
    assert math.isclose(calc.compute(), explained_variance(x, x_hat.detach()), rel_tol=1e-6)
    topk = _sae("topk", d=d, m=m, k=5)
    tcfg = sae_lens.TopKTrainingSAEConfig(d_in=d, d_sae=m, k=5, apply_b_dec_to_input=True)
    tpeer = sae_lens.TopKTrainingSAE(tcfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(tpeer, name).copy_(getattr(topk, name))
    feats, _ = tpeer.encode_with_hidden_pre(x)
    assert torch.allclose(feats, topk.encode(x), atol=1e-5)  # unit decoder rows: the norm rescale is 1


def test_sparse_topk_step_equals_the_dense_one():
    from archlab.analysis.sae import reconstruction_loss

    sae = _sae("topk", d=8, m=32, k=4)
    with torch.no_grad():
        sae.b_dec.normal_()
    x = torch.randn(40, 8, dtype=torch.float64)
    sae = sae.double()
    pre = sae.pre_activations(x)
    dense = reconstruction_loss(x, sae.activate(pre) @ sae.W_dec + sae.b_dec)
    g_dense = torch.autograd.grad(dense, list(sae.parameters()))
    pre = sae.pre_activations(x)
    sparse = reconstruction_loss(x, sae.decode_sparse(*sae.topk_sparse(pre)))
    g_sparse = torch.autograd.grad(sparse, list(sae.parameters()))
    assert torch.allclose(dense, sparse)
    for a, b in zip(g_dense, g_sparse):
        assert torch.allclose(a, b)


def test_bench_sae_runs_and_refuses_bad_flags(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "sae", "--rounds", "1", "--steps", "1", "--tokens", "512", "--batch", "256",
                 "--latents", "64", "--d-in", "16", "--k", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tokens_per_s"]["archlab"] > 0 and res["d_in"] == 16
    assert ("speedup_vs_sae_lens" in res) != ("peer_missing" in res)
    capsys.readouterr()
    assert main(["bench", "sae", "--k", "2000"]) == 2
    assert "--k: 2000 active latents of 1024" in capsys.readouterr().err


FAMILIES = {  # family -> (config, its --set items, a site)
    "hierarchical": ("configs/hierarchical.yaml", ["model.dim=32", "model.depth=2", "model.heads=4",
                                                   "train.seq_len=64", "train.batch=4"], "norm"),
    "safu": ("configs/lm.yaml", ["model.family=safu", "model.depth=4", "model.dim=32", "model.heads=4",
                                 "model.tie_embeddings=false", "train.seq_len=32", "train.batch=4"], None),
    "task": ("configs/lm.yaml", ["model.dim=32", "model.depth=2", "model.heads=4", "data.corpus=task",
                                 "data.task={kind: flipflop, length: 16, train: 200, validation: 50, test: 50}",
                                 "train.seq_len=40", "train.batch=4"],
             "blocks.1.out"),
    "echo": (None, ["model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=80", "model.family=echo",
                    "model.family_options.n_audio_ctx=300", "data.corpus=speech",
                    "data.speech={n_train: 8, n_valid: 3, n_test: 3}", "train.seq_len=80", "train.batch=4",
                    "model.position.kind=rope", "model.layers.default.norm.kind=layer"], "decoder.blocks.1"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_gives_activations_and_a_report(family, tmp_path, tmp_path_factory):
    from archlab.config import load_config
    from archlab.models.capture import sites
    from archlab.train import Trainer
    from archlab.train.run import load_run

    path, sets, site = FAMILIES[family]
    if family == "echo":
        sets = [*sets, f"data.cache_dir={tmp_path_factory.mktemp('speech')}"]
    cfg = load_config(path, [*sets, "train.steps=2", "train.eval_every=100", "train.eval_tokens=160",
                             "train.tensorboard=false", "train.warmup=1"])
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    r = load_run(tmp_path / "run")
    if site is None:  # the family's own names: the first block-like site after the embedding
        site = next(s for s in sites(r.model) if s.count(".") == 1 and s.split(".")[-1].isdigit())
    sae_cfg = parse_sae_config({"site": site}, ["tokens=256", "batch=2", "log_every=1", "warmup=1", "k=4",
                                                "eval_tokens=128"])
    SAETrainer(r, tmp_path / "run", sae_cfg, tmp_path / "sae", progress=False).fit()
    from archlab.analysis.sae_report import write_sae_report

    res = write_sae_report(tmp_path / "sae", top_latents=2, contexts=1)
    assert math.isfinite(res["explained_variance"]) and res["l0"] <= 4
    assert math.isfinite(res["fraction_recovered"]) or res["loss_zero"] == res["loss_clean"]
    assert ("top_latents" in res) == (family != "echo")  # no text contexts for a speech run


def test_fused_l1_decoder_equals_the_separate_terms():
    sae = _sae("relu", unit_decoder=False).double()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(32, 1, dtype=torch.float64) + 0.5)
    z = torch.relu(torch.randn(20, 32, dtype=torch.float64))
    x = torch.randn(20, 8, dtype=torch.float64)
    x_hat, l1 = sae.decode_with_l1(z)
    a = reconstruction_loss(x, x_hat) + 0.3 * l1.mean()
    b = reconstruction_loss(x, z @ sae.W_dec + sae.b_dec) + 0.3 * sparsity_loss(z, sae.W_dec)
    ga = torch.autograd.grad(a, [sae.W_dec, sae.b_dec])
    gb = torch.autograd.grad(b, [sae.W_dec, sae.b_dec])
    assert torch.allclose(a, b) and all(torch.allclose(p, q) for p, q in zip(ga, gb))


def test_normalize_switch_sets_the_input_scale(run, run_dir, tmp_path):
    on = _train(run, run_dir, tmp_path / "on", "pre_bias=untied")
    off = _train(run, run_dir, tmp_path / "off", "normalize=false", "pre_bias=untied")
    first = off.source.batch(0)[2].reshape(-1, off.d_in)
    assert float(off.sae.scale) == 1.0 and float(on.sae.scale) != 1.0
    assert torch.allclose(off.sae.b_dec, first.mean(0)) and torch.equal(off.sae.b_pre, off.sae.b_dec)
    assert math.isclose(float((first * on.sae.scale).norm(dim=-1).mean()), math.sqrt(on.d_in), rel_tol=1e-4)
