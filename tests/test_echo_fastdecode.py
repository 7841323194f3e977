"""Echo's lean greedy-decoding path (archlab.models.echo_fastdecode) against the generic cached
decoder, in float64: the same logits at every step and the same tokens, for each component it
accepts (rotations folded into the projections included); refused components take the generic path."""

from __future__ import annotations

import pytest
import torch

from archlab.config import load_config
from archlab.models import build_model
from archlab.models.echo import greedy_decode
from archlab.models.echo_fastdecode import EchoFastDecoder

BASE = ["model.family=echo", "model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=24",
        "model.family_options.n_audio_ctx=16", "model.family_options.n_mels=8", "data.corpus=speech",
        "train.steps=1", "model.position.kind=givens_rope"]

ACCEPTED = {
    "default": [],  # givens_rope + relative bias 15 + positions in cross-attention
    "rope": ["model.position.kind=rope", "model.family_options.max_rel_dist=0",
             "model.family_options.cross_attention=false"],
    "rope-cross": ["model.position.kind=rope", "model.family_options.max_rel_dist=0"],
    "relative": ["model.position.kind=rope", "model.family_options.cross_attention=false"],
    "givens-only": ["model.family_options.max_rel_dist=0", "model.family_options.cross_attention=false"],
    "orthogonal": ["model.position.kind=orthogonal_rope"],
    "partial-rope": ["model.position={kind: rope, fraction: 0.5}"],
    "sinusoidal": ["model.position.kind=sinusoidal"],
    "swiglu-rms": ["model.layers.default.ffn.kind=swiglu", "model.layers.default.norm.kind=rms"],
    "givens-per-head": ["model.position={kind: givens_rope, scope: head}"],
}
REFUSED = {
    "multiscale": ["model.position={kind: rope, base_mults: [1.0, 10.0]}"],
    "conditional": ["model.position.kind=conditional_rope", "model.family_options.cross_attention=false"],
}


def model_of(sets, seed=0):
    cfg = load_config(None, [*BASE, *sets])
    torch.manual_seed(seed)
    m = build_model(cfg.model).double().eval()
    with torch.no_grad():  # trained-looking positional parameters (Givens angles start at 0)
        for name, p in m.named_parameters():
            if "position" in name:
                p.add_(0.5 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_fast_path_equals_the_generic_decoder(name):
    m = model_of(ACCEPTED[name])
    feats = torch.randn(3, 8, 32, dtype=torch.float64)
    memory = m.encode(feats)
    fd = EchoFastDecoder.build(m, memory, capacity=20)
    assert fd is not None, name
    ids = torch.randint(3, m.decoder.embed.num_embeddings, (3, 20))
    with torch.no_grad():
        ref = m.decode(ids, memory)  # uncached, all positions at once
        ours = torch.stack([fd.step(ids[:, t]) for t in range(20)], dim=1)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    start = torch.ones(3, 1, dtype=torch.long)
    a = greedy_decode(m, feats, start, max_new_tokens=19, eos_token_id=0)
    b = greedy_decode(m, feats, start, max_new_tokens=19, eos_token_id=0, fast=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_parts_take_the_generic_path(name):
    m = model_of(REFUSED[name])
    feats = torch.randn(2, 8, 32, dtype=torch.float64)
    assert EchoFastDecoder.build(m, m.encode(feats), capacity=10) is None
    start = torch.ones(2, 1, dtype=torch.long)
    assert greedy_decode(m, feats, start, max_new_tokens=6).shape == (2, 7)


def test_refuses_training_mode_and_overlong_capacity():
    m = model_of([])
    memory = m.encode(torch.randn(1, 8, 32, dtype=torch.float64))
    assert EchoFastDecoder.build(m, memory, capacity=25) is None  # n_text_ctx is 24
    m.train()
    assert EchoFastDecoder.build(m, memory, capacity=5) is None


def test_a_wrong_fold_would_be_caught():
    """Mutation: decoding without folding the Givens matrix into the projections differs."""
    import archlab.models.echo_fastdecode as fdm

    m = model_of(ACCEPTED["givens-only"])
    feats = torch.randn(1, 8, 32, dtype=torch.float64)
    memory = m.encode(feats)
    ids = torch.randint(3, 40, (1, 6))
    ref = m.decode(ids, memory)
    saved = fdm._fold
    try:
        fdm._fold = lambda *a, **k: None
        fd = EchoFastDecoder.build(m, memory, capacity=6)
        ours = torch.stack([fd.step(ids[:, t]) for t in range(6)], dim=1)
    finally:
        fdm._fold = saved
    assert not torch.allclose(ours, ref, atol=1e-6)


def test_echo_bench_runs_and_writes_ratios(tmp_path, capsys):
    import json

    from archlab.bench.echo import main

    out = tmp_path / "echo.json"
    assert main(["--dim", "32", "--layers", "1", "--heads", "2", "--mels", "8", "--audio-ctx", "20", "--text-ctx", "16",
                 "--vocab", "40", "--batch", "2", "--new-tokens", "4", "--rounds", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["decode_speedup_vs_whisper"]) == {"echo", "echo_rope", "echo_own", "echo_rope_own"}
    assert all(v > 0 for v in res["train_speedup_vs_whisper"].values())
    assert "greedy decode" in capsys.readouterr().out


def test_the_weight_plan_is_reused_and_rebuilt_when_the_weights_change():
    """Two calls over memories of the same length share the plan (weights laid out once); an
    in-place update of any decoder parameter (an optimiser step) makes the next call rebuild
    it, and decoding then follows the new weights."""
    m = model_of(ACCEPTED["default"])
    feats = torch.randn(2, 8, 32, dtype=torch.float64)
    ids = torch.randint(3, m.decoder.embed.num_embeddings, (2, 12))

    def check():
        memory = m.encode(feats)
        fd = EchoFastDecoder.build(m, memory, capacity=12)
        with torch.no_grad():
            ref = m.decode(ids, memory)
            ours = torch.stack([fd.step(ids[:, t]) for t in range(12)], dim=1)
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
        return m._fast_plan[1]

    first = check()
    assert check() is first
    with torch.no_grad():
        m.decoder.blocks[0].cross.q.weight.mul_(1.5)  # in place, as an optimiser does
    rebuilt = check()
    assert rebuilt is not first
    with torch.no_grad():
        for p in m.decoder.blocks[1].mixer.position.parameters():
            p.add_(0.3)  # the Givens angles: the folded matrix must follow
    assert check() is not rebuilt
