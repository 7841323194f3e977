"""Multi-scale retention (nn/mixers/retention.py): the three forms against each other and against
the paper's definition written out term by term, the state, padding, the LM and its hybrids.

Probed from outside: a naive loop over (n, m) pairs is the reference for the formula, the
module is rebuilt by hand (projections, rotation, retention, group norm, gate) as the reference
for the mixer, and decoding goes through the LM's public forward and ``generate``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from archlab.config import load_config
from archlab.models import generate
from archlab.nn.mixers.retention import (MultiScaleRetention, decay_schedule, retention_chunkwise,
                                         retention_parallel, retention_recurrent)
from archlab.nn.positional import RotaryEmbedding
from archlab.registry import MIXER, ConfigError
from tests.test_parts import _differs, assert_cache_matches, assert_causal, assert_left_padded_decoding, make_ids

F64 = torch.float64
RETNET = {"model.layers.default.mixer": {"kind": "retention"}, "model.layers.default.ffn": {"kind": "swiglu"}}


def _inputs(B, H, T, Dk=4, Dv=6, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (scale * torch.randn(B, H, T, Dk, generator=g, dtype=F64) for _ in range(2))
    v = torch.randn(B, H, T, Dv, generator=g, dtype=F64)
    return q, k, v


def reference(q, k, v, gammas, pos, visible=None):
    """The definition, one (n, m) pair at a time: R_nm = q_n·k_m γ^(p_n − p_m) over present
    m ≤ n, z_n = Σ γ^(p_n − p_m), o_n = Σ_m (R_nm/√z_n) v_m / max(|Σ_m R_nm/√z_n|, 1).
    Also returns whether the max(·, 1) was active at each (b, h, n)."""
    B, H, T, _ = q.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=F64)
    active = torch.zeros(B, H, T, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            g = float(gammas[h])
            for n in range(T):
                ms = [m for m in range(n + 1) if visible is None or bool(visible[b, m])]
                if not ms:
                    continue
                w = {m: g ** float(pos[b, n] - pos[b, m]) for m in ms}
                z = sum(w.values())
                r = {m: float(q[b, h, n] @ k[b, h, m]) * w[m] / math.sqrt(z) for m in ms}
                den = max(abs(sum(r.values())), 1.0)
                active[b, h, n] = den > 1.0
                out[b, h, n] = sum(r[m] * v[b, h, m] for m in ms) / den
    return out, active


def _pos(B, T):
    return torch.arange(T, dtype=F64).expand(B, T)


# ----------------------------------------------------------------------------- the forms


@pytest.mark.parametrize("H", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 7, 16, 33])
def test_parallel_recurrent_and_chunkwise_agree_in_float64(H, T):
    q, k, v = _inputs(2, H, T, seed=H * 100 + T)
    lg = decay_schedule(H).log()
    pos = _pos(2, T)
    o_par, _ = retention_parallel(q, k, v, lg, pos)
    o_rec, s_rec = retention_recurrent(q, k, v, lg, pos)
    torch.testing.assert_close(o_rec, o_par, atol=1e-12, rtol=0)
    for chunk in sorted({1, 4, 16, T}):
        o_chk, s_chk = retention_chunkwise(q, k, v, lg, pos, chunk=chunk)
        torch.testing.assert_close(o_chk, o_par, atol=1e-12, rtol=0, msg=f"chunk {chunk}")
        for a, b, name in zip(s_rec, s_chk, ("S", "z", "ref")):
            torch.testing.assert_close(b, a, atol=1e-12, rtol=0, msg=f"final {name}, chunk {chunk}")


@pytest.mark.parametrize("scale", [0.2, 3.0])
def test_the_forms_equal_the_definition_term_by_term(scale):
    """Both normalisations matter: at scale 3 the max(|Σ R|, 1) division is active on some rows
    and not on others; with padding, gaps in the positions, and a query with no key at all."""
    B, H, T = 2, 3, 9
    q, k, v = _inputs(B, H, T, seed=5, scale=scale)
    gammas = torch.tensor([0.5, 0.9, 0.99], dtype=F64)
    visible = torch.ones(B, T, dtype=torch.bool)
    visible[1, :3] = False  # row 1: three pads on the left, position 0 like its first real token
    pos = torch.stack([torch.arange(T, dtype=F64) * 2, (visible[1].to(F64).cumsum(0) - 1).clamp(min=0)])
    ref, active = reference(q, k, v, gammas, pos, visible)
    if scale > 1:
        assert active.any() and not active.all()
    else:
        assert not active.any()
    for o, _ in (retention_parallel(q, k, v, gammas.log(), pos, visible),
                 retention_recurrent(q, k, v, gammas.log(), pos, visible),
                 retention_chunkwise(q, k, v, gammas.log(), pos, visible, chunk=4)):
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, ref, atol=1e-12, rtol=0)


def test_a_parallel_prefix_continued_recurrently_equals_one_parallel_run():
    q, k, v = _inputs(2, 4, 20, seed=8, scale=2.0)
    lg, pos = decay_schedule(4).log(), _pos(2, 20)
    whole, _ = retention_parallel(q, k, v, lg, pos)
    head, state = retention_parallel(q[:, :, :13], k[:, :, :13], v[:, :, :13], lg, pos[:, :13])
    tail, _ = retention_recurrent(q[:, :, 13:], k[:, :, 13:], v[:, :, 13:], lg, pos[:, 13:], state=state)
    torch.testing.assert_close(torch.cat([head, tail], dim=2), whole, atol=1e-12, rtol=0)


def test_the_state_stays_bounded_where_the_raw_sum_grows():
    """S̄ = S/z is a weighted average of the k_mᵀv_m: no entry exceeds their largest, although
    the raw sum S = z·S̄ grows like 1/(1 − γ)."""
    T = 3000
    k = torch.ones(1, 1, T, 2, dtype=F64)
    v = torch.ones(1, 1, T, 2, dtype=F64)
    lg = torch.tensor([1 - 2.0 ** -12], dtype=F64).log()
    _, (S, z, _) = retention_chunkwise(k, k, v, lg, _pos(1, T), chunk=512)
    assert S.abs().max() <= 1 + 1e-12  # S̄ and ū (its last column)
    assert z.item() > 1000  # the raw sum would be ~1000× larger


def test_the_decay_schedule_is_the_papers():
    g = decay_schedule(4)
    torch.testing.assert_close(g, torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256], dtype=F64))
    torch.testing.assert_close(decay_schedule(2, [0.5, 0.25]), torch.tensor([0.5, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        decay_schedule(2, [0.5, 1.0])
    with pytest.raises(ValueError, match="need 2 values"):
        decay_schedule(2, [0.5])


def test_one_key_decays_by_gamma_per_position():
    """A single key seen by later queries: with the normalisations undone (× √z_n, where z_n
    is Σ γ^i over the n + 1 positions), the score falls by exactly γ per step."""
    gam = 0.8
    T, D = 6, 2
    q = torch.zeros(1, 1, T, D, dtype=F64)
    q[..., 0] = 0.1  # small: the max(|Σ R|, 1) division stays inactive
    k = torch.zeros(1, 1, T, D, dtype=F64)
    k[0, 0, 0, 0] = 1.0
    v = torch.zeros(1, 1, T, 1, dtype=F64)
    v[0, 0, 0] = 1.0
    o, _ = retention_parallel(q, k, v, torch.tensor([gam], dtype=F64).log(), _pos(1, T))
    z = torch.tensor([sum(gam ** i for i in range(n + 1)) for n in range(T)], dtype=F64)
    raw = o[0, 0, :, 0] * z.sqrt()
    torch.testing.assert_close(raw, 0.1 * gam ** torch.arange(T, dtype=F64), atol=1e-14, rtol=0)


# ----------------------------------------------------------------------------- the mixer


def _mixer(form="auto", chunk=4, H=2, dim=16, value_factor=2, seed=0):
    torch.manual_seed(seed)
    m = MultiScaleRetention(dim=dim, heads=H, position=RotaryEmbedding(head_dim=dim // H, heads=H),
                            value_factor=value_factor, form=form, chunk_size=chunk).double()
    with torch.no_grad():  # non-trivial norm affine
        m.norm.weight.uniform_(0.5, 1.5)
        m.norm.bias.uniform_(-0.5, 0.5)
    return m


def test_the_mixer_is_the_papers_msr_rebuilt_by_hand():
    """(swish(XW_G) ⊙ GroupNorm_h(Retention(X))) W_O with Q, K rotated by RoPE and K scaled by
    1/√d_k: the module against the same formula assembled from its weights."""
    m = _mixer()
    B, T, H, Dk, Dv = 2, 11, 2, 8, 16
    x = torch.randn(B, T, 16, dtype=F64)
    pos = torch.arange(T)
    Wq, Wk, Wv, Wg = m.proj.weight.split([H * Dk, H * Dk, H * Dv, H * Dv])
    heads = lambda t, d: t.view(B, T, H, d).transpose(1, 2)  # noqa: E731
    q, k = m.position.rotate(heads(x @ Wq.T, Dk), heads(x @ Wk.T, Dk), pos, pos)
    gammas = m.log_gamma.exp()  # the paper's schedule, stored in the default dtype and cast
    torch.testing.assert_close(gammas, decay_schedule(H), atol=1e-7, rtol=0)
    o, _ = reference(q, k / math.sqrt(Dk), heads(x @ Wv.T, Dv), gammas, _pos(B, T))
    o = o.transpose(1, 2)  # (B, T, H, Dv)
    mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
    y = ((o - mean) / torch.sqrt(var + m.norm.eps)).reshape(B, T, H * Dv) * m.norm.weight + m.norm.bias
    want = (F.silu(x @ Wg.T) * y) @ m.out.weight.T
    with torch.no_grad():
        torch.testing.assert_close(m(x, positions=pos), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("form", ["parallel", "chunkwise", "recurrent", "auto"])
def test_every_form_of_the_mixer_gives_the_same_outputs_and_gradients(form):
    ref = _mixer("parallel")
    m = _mixer(form, chunk=3)
    x = torch.randn(2, 10, 16, dtype=F64)
    w = torch.randn(2, 10, 16, dtype=F64)
    (ref(x, positions=torch.arange(10)) * w).sum().backward()
    y = m(x, positions=torch.arange(10))
    (y * w).sum().backward()
    torch.testing.assert_close(y, ref(x, positions=torch.arange(10)), atol=1e-12, rtol=0)
    for (n, p), (_, p_ref) in zip(m.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-10, rtol=0, msg=n)


def test_auto_picks_parallel_then_chunkwise_and_recurrent_for_decoding():
    m = _mixer(chunk=8)
    assert m.pick_form(8, cached=False) == "parallel" and m.pick_form(9, cached=False) == "chunkwise"
    assert m.pick_form(1, cached=True) == "recurrent" and m.pick_form(5, cached=True) == "chunkwise"
    assert _mixer("chunkwise").pick_form(1, cached=True) == "chunkwise"


def test_the_cache_has_constant_size_and_decodes_like_recomputation():
    m = _mixer()
    x = torch.randn(2, 30, 16, dtype=F64)
    pos = torch.arange(30)
    with torch.no_grad():
        full = m(x, positions=pos)
        cache = m.init_cache()
        outs = [m(x[:, :7], positions=pos[:7], cache=cache)]
        sizes = set()
        for t in range(7, 30):
            outs.append(m(x[:, t:t + 1], positions=pos[t:t + 1], cache=cache))
            sizes.add(sum(s.numel() for s in (cache.S, cache.z)))
    assert len(cache) == 30 and len(sizes) == 1
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-12, rtol=0)


def test_reorder_keeps_the_chosen_rows():
    m = _mixer()
    x = torch.randn(3, 6, 16, dtype=F64)
    pos = torch.arange(6)
    with torch.no_grad():
        cache = m.init_cache()
        m(x[:, :4], positions=pos[:4], cache=cache)
        idx = torch.tensor([2, 0, 0])
        cache.reorder(idx)
        step = m(x[idx, 4:], positions=pos[4:], cache=cache)
        torch.testing.assert_close(step, m(x[idx], positions=pos)[:, 4:], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- the LM, hybrids, config


def _cfg(*extra, **sets):
    from tests.conftest import make_tiny_config

    return make_tiny_config(*extra, **{**RETNET, **sets})


HYBRID = {"model.layers.overrides": {"1": {"mixer": {"kind": "attention"}}}}


@pytest.mark.parametrize("sets", [{}, HYBRID, {"model.layers.default.mixer": {"kind": "retention", "chunk_size": 5}}],
                         ids=["retnet", "hybrid", "chunked"])
def test_retnet_lm_is_causal_caches_exactly_and_generates_like_recomputation(sets, build):
    model = build(_cfg(**sets), double=True)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == (["MultiScaleRetention", "Attention"] if sets is HYBRID else ["MultiScaleRetention"] * 2)
    ids = make_ids()
    assert_causal(model, ids)
    assert_cache_matches(model, ids, tol=1e-10)
    a = generate(model, ids[:, :6], max_new_tokens=10, temperature=0.0, use_cache=True)
    b = generate(model, ids[:, :6], max_new_tokens=10, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)


def test_every_parameter_of_a_hybrid_gets_a_gradient(build):
    model = build(_cfg(**HYBRID)).train()
    ids = make_ids()
    model(ids, targets=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


@pytest.mark.parametrize("sets", [{}, HYBRID], ids=["retnet", "hybrid"])
def test_left_padded_prompts_decode_like_the_unpadded_row(sets, build):
    """The decay runs over positions, pads contribute nothing: a left-padded prompt and its
    continuation give the unpadded row's logits (prompt and every step)."""
    model = build(_cfg(**sets), double=True)
    assert_left_padded_decoding(model, pad=4, n_prompt=6, n_steps=5)
    # and the mask is what does it: without it the pads leak into the state
    pad, seq = 4, make_ids(1, 6, seed=4)[0]
    ids = torch.cat([torch.full((pad,), 9), seq])[None]
    mask = torch.arange(pad + 6)[None] >= pad
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        assert _differs(model(ids, positions=positions).logits[0, pad:], model(seq[None]).logits[0])
        torch.testing.assert_close(model(ids, positions=positions, mask=mask).logits[0, pad:],
                                   model(seq[None]).logits[0], atol=1e-10, rtol=0)


def test_gammas_reach_the_heads(build):
    model = build(_cfg(**{"model.layers.default.mixer": {"kind": "retention", "gammas": [0.5, 0.6, 0.7, 0.8]}}))
    torch.testing.assert_close(model.blocks[0].mixer.log_gamma.exp(), torch.tensor([0.5, 0.6, 0.7, 0.8]), atol=1e-6, rtol=0)
    other = build(_cfg())
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert _differs(model(make_ids()).logits, other(make_ids()).logits)


@pytest.mark.parametrize("sets, needle", [
    ({"model.position": {"kind": "alibi"}}, "retention has no attention logits for position 'alibi'"),
    ({"model.layers.overrides": {"0": {"position": {"kind": "t5"}}}}, "model.layers[0].mixer"),
    ({"model.layers.default.mixer": {"kind": "retention", "gammas": [0.5, 0.9]}}, "2 decays for model.heads=4"),
    ({"model.layers.default.mixer": {"kind": "retention", "gammas": [0.5, 0.9, 1.0, 0.2]}}, "in (0, 1)"),
    ({"model.layers.default.mixer": {"kind": "retention", "chunk_size": 0}}, "chunk_size: must be ≥ 1"),
    ({"model.layers.default.mixer": {"kind": "retention", "form": "blocked"}}, "form"),
])
def test_bad_retention_configs_are_refused_in_one_line(sets, needle):
    from tests.conftest import TINY

    items = [f"{k}={v}" for k, v in TINY.items()]
    items += [f"{k}={json.dumps(v)}" for k, v in {**RETNET, **sets}.items()]
    with pytest.raises(ConfigError) as e:
        load_config(None, items)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_registry_lists_retention_and_its_free_tests_pick_it_up():
    from tests.test_parts import PARTS

    assert "retention" in MIXER.kinds()
    assert any(p.id == "mixer-retention" for p in PARTS)


def test_retention_in_an_encoder_is_refused():
    from archlab.catalog.context import BuildContext
    from archlab.nn.positional import NoPosition

    ctx = BuildContext(dim=16, heads=2, kv_heads=2, head_dim=8, max_seq_len=8, causal=False, position=NoPosition())
    with pytest.raises(ConfigError, match="causal-only"):
        MIXER.build(MIXER.parse({"kind": "retention"}, "mixer"), ctx)


def test_the_checks_above_catch_a_wrong_decay_exponent_and_a_missing_group_norm(monkeypatch):
    """The mutations the issue names, applied for real: each makes the reference comparison of
    this file fail (so the comparisons can fail)."""
    import archlab.nn.mixers.retention as R

    real = R._decay
    monkeypatch.setattr(R, "_decay", lambda lg, delta: real(lg, delta + 1))  # γ^(n − m + 1)
    with pytest.raises(AssertionError):
        test_the_forms_equal_the_definition_term_by_term(3.0)
    monkeypatch.setattr(R, "_decay", real)
    test_the_forms_equal_the_definition_term_by_term(3.0)  # restored: passes again
    monkeypatch.setattr(MultiScaleRetention, "__init__", _without_norm(MultiScaleRetention.__init__))
    with pytest.raises(AssertionError):
        test_the_mixer_is_the_papers_msr_rebuilt_by_hand()


def _without_norm(init):
    def patched(self, *a, **kw):
        init(self, *a, **kw)
        norm = self.norm
        self.norm = torch.nn.Identity()
        self.norm.eps, self.norm.weight, self.norm.bias = norm.eps, norm.weight, norm.bias  # what the test reads
    return patched


def test_a_retnet_trains_generates_evaluates_and_exports_through_the_cli(tmp_path, corpus, capsys):
    """configs/retnet.yaml through archlab train (chunkwise: seq_len 16 > chunk_size 8), eval,
    generate (recurrent, and the recomputing --no-cache check), info and export."""
    pytest.importorskip("transformers")
    from archlab.cli import main

    out = tmp_path / "run"
    sets = ["model.dim=16", "model.depth=2", "model.heads=2", "model.max_seq_len=64", "data.corpus=path",
            f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "train.steps=3", "train.tokens=null",
            "train.batch=2", "train.seq_len=16", "train.eval_tokens=64", "train.tensorboard=false",
            'model.layers.default.mixer={"kind": "retention", "chunk_size": 8}']
    assert main(["train", "configs/retnet.yaml", "--out", str(out), "--no-progress",
                 *[x for s in sets for x in ("--set", s)]]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "val", "--max-tokens", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bpb"] > 0
    texts = []
    for extra in ([], ["--no-cache"]):
        assert main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "12", "--temperature", "0",
                     *extra]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("def ")
    assert main(["info", "configs/retnet.yaml"]) == 0
    assert "retention" in capsys.readouterr().out
    assert main(["export", str(out), "--hf", str(tmp_path / "hf")]) == 0
    assert main(["generate", str(tmp_path / "hf"), "--prompt", "def ", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == texts[0].splitlines()[-1]
