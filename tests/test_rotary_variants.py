"""Echo's positional ideas, rebuilt: each part is checked against its formula and shown to act.

The registry property tests (tests/test_parts.py) already cover causality, cache == recompute,
gradients, knobs and round trips for every kind; these tests check what is specific: the
formulas, that rotations before RoPE act while the same rotation after RoPE cancels, that a
query-side phase acts while a shared one cancels, orthogonality under training, the auxiliary
loss seam, and the benchmark's plumbing.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archlab.nn.positional import (
    ClippedRelativeBias,
    ConditionalRotary,
    DynamicPositionBias,
    LearnedSinusoidal,
    OrthogonalMatrix,
    RotaryEmbedding,
    RotatedRotary,
)
from archlab.nn.positional.absolute import sinusoid_table
from archlab.nn.positional.rope import apply_rotary
from archlab.nn.positional.rotations import (
    GivensApply,
    GivensRounds,
    apply_matrix,
    chain_product,
    givens_matrices,
    round_robin_pairs,
)
from archlab.registry import ConfigError

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qk(B=1, H=2, T=6, D=8, Hk=None, seed=0):
    g = _gen(seed)
    return (torch.randn(B, H, T, D, generator=g, dtype=F64),
            torch.randn(B, Hk or H, T, D, generator=g, dtype=F64))


def _scores(scheme, q, k, pos, **kw):
    rq, rk = scheme.rotate(q, k, pos, pos, **kw)
    if rk.shape[1] != rq.shape[1]:
        rk = rk.repeat_interleave(rq.shape[1] // rk.shape[1], dim=1)
    return rq @ rk.transpose(-1, -2)


def _random_orthogonal(D: int, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(D, D, generator=_gen(seed), dtype=F64))[0]


# ----------------------------------------------------------------------------- rotary options


def test_rope_options_start_as_plain_rope():
    q, k = _qk(H=4)
    pos = torch.arange(6) + 3
    plain = RotaryEmbedding(head_dim=8).double()
    learn = RotaryEmbedding(head_dim=8, heads=4, learn_freq=True, learn_scale=True, learn_phase=True).double()
    for a, b in zip(plain.rotate(q, k, pos, pos), learn.rotate(q, k, pos, pos)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_query_phase_changes_scores_and_a_shared_phase_would_cancel():
    H, D, T = 2, 8, 6
    q, k = _qk(H=H, D=D, T=T)
    pos = torch.arange(T)
    rope = RotaryEmbedding(head_dim=D, heads=H, learn_phase=True).double()
    with torch.no_grad():
        rope.phase.copy_(torch.randn(H, D // 2, generator=_gen(1), dtype=F64))
    plain = RotaryEmbedding(head_dim=D).double()
    base = _scores(plain, q, k, pos)
    assert (_scores(rope, q, k, pos) - base).abs().max() > 1e-3  # the query-side phase acts
    # Formula: q rotated by pos·θ + φ_h, k by pos·θ.
    ang = pos.to(F64)[:, None] * plain.inv_freq()
    qa = ang[None, None] + rope.phase.detach()[None, :, None, :]
    ref_q = apply_rotary(q, qa.cos(), qa.sin())
    torch.testing.assert_close(rope.rotate(q, k, pos, pos)[0], ref_q, atol=1e-12, rtol=0)
    # The same phase added to both q and k cancels in the scores: R(a+φ)ᵀR(b+φ) = R(b − a).
    shared_k = apply_rotary(k, qa.cos(), qa.sin())
    torch.testing.assert_close(ref_q @ shared_k.transpose(-1, -2), base, atol=1e-12, rtol=0)
    # ...while the query-side phase keeps scores relative: shifting all positions changes nothing.
    torch.testing.assert_close(_scores(rope, q, k, pos + 13), _scores(rope, q, k, pos), atol=1e-10, rtol=0)


@pytest.mark.parametrize("option", ["learn_freq", "learn_scale", "learn_phase"])
def test_learnable_rope_knobs_get_gradients_and_change_outputs(option):
    q, k = _qk(H=4)
    pos = torch.arange(6) + 1
    rope = RotaryEmbedding(head_dim=8, heads=4, **{option: True}).double()
    (param,) = list(rope.parameters())
    rq, rk = rope.rotate(q, k, pos, pos)
    (rq @ rk.transpose(-1, -2)).square().sum().backward()
    assert param.grad is not None and param.grad.abs().sum() > 0
    before = rope.rotate(q, k, pos, pos)
    with torch.no_grad():
        param.add_(0.3)
    after = rope.rotate(q, k, pos, pos)
    assert (after[0] - before[0]).abs().max() > 1e-3


def test_learnable_frequency_and_scale_formula():
    D, T = 8, 5
    rope = RotaryEmbedding(head_dim=D, base=100.0, learn_freq=True, learn_scale=True).double()
    with torch.no_grad():
        rope.freq_offset.copy_(torch.randn(1, D // 2, generator=_gen(2), dtype=F64) * 0.5)
        rope.log_pos_scale.fill_(math.log(1.7))
    pos = torch.arange(T)
    theta = 100.0 ** (-torch.arange(0, D, 2, dtype=F64) / D) * rope.freq_offset.detach()[0].exp()
    torch.testing.assert_close(rope.angles(pos), 1.7 * pos.to(F64)[:, None] * theta, atol=1e-12, rtol=0)


def test_learnable_tables_are_never_served_from_a_stale_memo():
    q, k = _qk()
    pos = torch.arange(6) + 2
    rope = RotaryEmbedding(head_dim=8, learn_freq=True).double()
    with torch.no_grad():
        first = rope.rotate(q, k, pos, pos)[0]
        rope.freq_offset.add_(0.5)  # an in-place update, as an optimiser makes
        second = rope.rotate(q, k, pos, pos)[0]  # same positions object: the memo must not answer
    assert (second - first).abs().max() > 1e-3
    # with gradients wanted, the tables are recomputed and carry the graph
    out = rope.rotate(q, k, pos, pos)[0]
    out.sum().backward()
    assert rope.freq_offset.grad.abs().sum() > 0


def test_multi_scale_heads_use_their_groups_base():
    D, T, base = 8, 7, 50.0
    q, k = _qk(H=4, Hk=2, D=D, T=T)
    pos = torch.arange(T) + 1
    rope = RotaryEmbedding(head_dim=D, base=base, heads=4, kv_heads=2, base_mults=[1.0, 10.0]).double()
    rq, rk = rope.rotate(q, k, pos, pos)
    for b, heads_q, heads_k in ((base, [0, 1], [0]), (10 * base, [2, 3], [1])):
        ref = RotaryEmbedding(head_dim=D, base=b).double()
        eq, ek = ref.rotate(q, k, pos, pos)
        torch.testing.assert_close(rq[:, heads_q], eq[:, heads_q], atol=1e-12, rtol=0)
        torch.testing.assert_close(rk[:, heads_k], ek[:, heads_k], atol=1e-12, rtol=0)
    assert (rq[:, 0] - rope.rotate(q, k, pos, pos)[0][:, 2]).abs().max() > 0  # the groups differ
    # set_base moves every group, keeping the multipliers
    rope.set_base(7.0)
    assert rope.base == 7.0
    torch.testing.assert_close(rope.inv_freq()[:, 1], torch.tensor([7.0, 70.0], dtype=F64) ** (-2 / D))


def test_multi_scale_groups_must_divide_key_heads(tiny_config):
    with pytest.raises(ConfigError, match="base_mults"):
        tiny_config(**{"model.kv_heads": 2, "model.position.base_mults": [1, 2, 3]})


@pytest.mark.parametrize("kind", ["rope", "givens_rope", "orthogonal_rope", "conditional_rope"])
def test_set_base_acts_on_every_rotary_kind_and_keeps_learned_offsets(kind, tiny_config, build):
    """The adaptive-base controller calls set_base(b) on every module that has one."""
    model = build(tiny_config(**{"model.position.kind": kind, "model.position.learn_freq": True}), double=True)
    mods = [m for m in model.modules() if callable(getattr(m, "set_base", None))]
    assert mods == [model.position]  # one scheme, one base (no nested rotary module to set twice)
    with torch.no_grad():
        model.position.freq_offset.normal_(0, 0.1)
    offset = model.position.freq_offset.detach().clone()
    ids = torch.randint(0, 256, (1, 12), generator=_gen(16))
    with torch.no_grad():
        before = model(ids).logits
        model.position.set_base(500.0)
        after = model(ids).logits
    assert model.position.base == 500.0 and (after - before).abs().max() > 1e-6
    torch.testing.assert_close(model.position.freq_offset.detach(), offset, atol=0, rtol=0)
    expected = 500.0 ** (-torch.arange(0, 8, 2, dtype=F64) / 8) * offset[0].exp()
    torch.testing.assert_close(model.position.inv_freq(), expected, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- Givens and orthogonal matrices


@pytest.mark.parametrize("n", [2, 8, 16])
def test_round_robin_schedule_covers_every_pair_once(n):
    pairs = round_robin_pairs(n)
    assert pairs.shape == (n - 1, n // 2, 2)
    for rnd in pairs:  # each round: disjoint pairs covering every channel
        assert sorted(rnd.flatten().tolist()) == list(range(n))
    seen = {tuple(sorted(p)) for p in pairs.reshape(-1, 2).tolist()}
    assert len(seen) == n * (n - 1) // 2


def test_givens_product_and_direct_rounds_agree_with_sequential_products():
    D, K = 8, 5
    a = torch.randn(K, D // 2, generator=_gen(3), dtype=F64)
    pairs = round_robin_pairs(D)[:K]
    mats = givens_matrices(a.cos(), a.sin(), pairs)
    seq = torch.eye(D, dtype=F64)
    for m in mats:
        seq = seq @ m
    torch.testing.assert_close(chain_product(mats), seq, atol=1e-12, rtol=0)
    g = GivensApply(dim=D, rounds=K)
    x = torch.randn(3, D, generator=_gen(4), dtype=F64)
    torch.testing.assert_close(g(x, *g.tables(a)), x @ seq, atol=1e-12, rtol=0)
    # one pair, by hand: x'_i = x_i cos a + x_j sin a, x'_j = x_j cos a − x_i sin a
    i, j = pairs[0, 0].tolist()
    m0 = mats[0]
    assert m0[i, i] == m0[j, j] == a[0, 0].cos() and m0[j, i] == a[0, 0].sin() and m0[i, j] == -a[0, 0].sin()


@pytest.mark.parametrize("which", ["givens", "orthogonal"])
def test_rotations_preserve_norms_and_stay_orthogonal_while_training(which):
    torch.manual_seed(0)
    torch.set_default_dtype(F64)  # built in float64: the exact form's random origin R₀ then is orthogonal to 1e-16
    try:
        mod = GivensRounds(dim=8, rounds=-1, groups=2) if which == "givens" else OrthogonalMatrix(dim=8, groups=2)
    finally:
        torch.set_default_dtype(torch.float32)
    opt = torch.optim.AdamW(mod.parameters(), lr=0.2)
    target = torch.randn(2, 8, 8, generator=_gen(5), dtype=F64)
    eye = torch.eye(8, dtype=F64)
    start = mod.matrix().detach().clone()
    for _ in range(5):
        loss = (mod.matrix() - target).square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = mod.matrix().detach()
    assert (R - start).abs().max() > 1e-2  # it trained
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye.expand(2, 8, 8), atol=1e-12, rtol=0)
    x = torch.randn(5, 8, generator=_gen(6), dtype=F64)
    torch.testing.assert_close((x @ R[1]).norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=0)


def test_orthogonality_penalty_is_zero_exactly_for_orthogonal_matrices():
    m = OrthogonalMatrix(dim=6, penalty=0.5).double()
    with torch.no_grad():
        m.weight.copy_(torch.eye(6, dtype=F64))
    assert m.aux_losses()["orthogonality"].item() == 0.0
    with torch.no_grad():
        m.weight.copy_(_random_orthogonal(6))
    assert m.aux_losses()["orthogonality"].item() < 1e-25
    with torch.no_grad():
        m.weight.mul_(1.1)
    dev = ((1.1 ** 2 - 1) ** 2) * 6  # ‖(1.1²−1)·I‖²_F
    assert math.isclose(m.aux_losses()["orthogonality"].item(), 0.5 * dev, rel_tol=1e-9)
    assert OrthogonalMatrix(dim=6).aux_losses() == {}  # the exact form needs no penalty


def test_penalty_enters_the_loss_and_the_aux_dict(tiny_config, build):
    cfg = tiny_config(**{"model.position.kind": "orthogonal_rope", "model.position.penalty": 0.5,
                         "model.layers.overrides": {"1": {"position": {"kind": "orthogonal_rope", "penalty": 0.5}}}})
    model = build(cfg, double=True)
    mats = [m for m in model.modules() if isinstance(m, OrthogonalMatrix)]
    assert len(mats) == 2  # the shared scheme (layer 0) and layer 1's own
    with torch.no_grad():
        for i, m in enumerate(mats):
            m.weight.mul_(1.0 + 0.1 * (i + 1))
    ids = torch.randint(0, 256, (2, 12), generator=_gen(7))
    out = model(ids, targets=ids)
    expected = sum(0.5 * m.deviation() for m in mats)
    assert set(out.aux) == {"orthogonality"}
    torch.testing.assert_close(out.aux["orthogonality"], expected)
    torch.testing.assert_close(out.loss - out.nll, expected)
    assert expected.item() > 1e-3
    out.loss.backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in mats)
    # the exact form: no auxiliary term at all
    exact = build(tiny_config(**{"model.position.kind": "orthogonal_rope"}), double=True)
    out = exact(ids, targets=ids)
    assert out.aux == {} and out.loss is out.nll


def test_rotation_before_rope_changes_scores_after_rope_cancels():
    D, T = 8, 6
    q, k = _qk(D=D, T=T)
    pos = torch.arange(T)
    rope = RotaryEmbedding(head_dim=D).double()
    Q = _random_orthogonal(D, seed=8)
    base = _scores(rope, q, k, pos)
    rq, rk = rope.rotate(q, k, pos, pos)
    after = (rq @ Q) @ (rk @ Q).transpose(-1, -2)  # Echo: rotate after RoPE
    torch.testing.assert_close(after, base, atol=1e-12, rtol=0)  # Q Qᵀ = I: cancelled
    bq, bk = rope.rotate(q @ Q, k @ Q, pos, pos)
    before = bq @ bk.transpose(-1, -2)
    assert (before - base).abs().max() > 1e-2
    # = q Q R(n − m) Qᵀ kᵀ: still a function of n − m only
    bq2, bk2 = rope.rotate(q @ Q, k @ Q, pos + 9, pos + 9)
    torch.testing.assert_close(bq2 @ bk2.transpose(-1, -2), before, atol=1e-10, rtol=0)
    # and the module does exactly this
    for kw in ({"givens_rounds": -1}, {"orthogonal": True}, {"givens_rounds": 3, "orthogonal": True}):
        mod = RotatedRotary(head_dim=D, **kw).double()
        M = mod.rotation().detach()[0]
        torch.testing.assert_close(M @ M.T, torch.eye(D, dtype=F64), atol=1e-6, rtol=0)  # R₀ made in float32
        rq, rk = rope.rotate(q @ M, k @ M, pos, pos)
        torch.testing.assert_close(_scores(mod, q, k, pos), rq @ rk.transpose(-1, -2), atol=1e-12, rtol=0)
        assert (_scores(mod, q, k, pos) - base).abs().max() > 1e-2


def test_combined_rotation_is_givens_product_times_matrix():
    mod = RotatedRotary(head_dim=8, givens_rounds=3, orthogonal=True, penalty=0.1).double()
    torch.testing.assert_close(mod.rotation(), mod.givens.matrix() @ mod.matrix.matrix(), atol=1e-12, rtol=0)


def test_per_head_scope_uses_each_key_heads_matrix():
    D = 8
    q, _ = _qk(H=4, Hk=2, D=D)
    mod = RotatedRotary(head_dim=D, heads=4, kv_heads=2, givens_rounds=-1, scope="head").double()
    M = mod.rotation().detach()
    assert M.shape == (2, D, D) and (M[0] - M[1]).abs().max() > 1e-3
    out = apply_matrix(q, M)
    for h in range(4):
        torch.testing.assert_close(out[:, h], q[:, h] @ M[h // 2], atol=1e-12, rtol=0)


def test_shared_rotation_is_built_once_per_forward_with_correct_gradients(tiny_config, build):
    cfg = tiny_config(**{"model.position.kind": "givens_rope"})
    model = build(cfg, double=True).train()
    scheme = model.position
    calls = []
    orig = scheme.givens.matrix
    scheme.givens.matrix = lambda: calls.append(1) or orig()
    ids = torch.randint(0, 256, (2, 10), generator=_gen(9))
    model(ids, targets=ids).loss.backward()
    assert len(calls) == 1  # two layers, one matrix
    grad = scheme.givens.angles.grad.clone()
    # reference: no memo (a fresh matrix for each layer)
    model.zero_grad()
    memo_fn = scheme.rotation
    scheme.rotation = lambda positions=None: memo_fn(None)
    model(ids, targets=ids).loss.backward()
    assert len(calls) == 3
    torch.testing.assert_close(scheme.givens.angles.grad, grad, atol=1e-12, rtol=0)
    # the same positions tensor twice, backward each time (gradient accumulation): no stale graph
    scheme.rotation = memo_fn
    pos = torch.arange(10)
    for _ in range(2):
        model(ids, targets=ids, positions=pos).loss.backward()


# ----------------------------------------------------------------------------- conditional rotation


def test_conditional_rotation_depends_on_each_tokens_input():
    torch.manual_seed(0)
    D, T, dim = 8, 6, 16
    mod = ConditionalRotary(head_dim=D, dim=dim, heads=2, rounds=2).double()
    q, k = _qk(D=D, T=T)
    pos = torch.arange(T)
    x = torch.randn(1, T, dim, generator=_gen(10), dtype=F64)
    x2 = x.clone()
    x2[:, 3] += 1.0
    a, b = mod.rotate(q, k, pos, pos, x=x), mod.rotate(q, k, pos, pos, x=x2)
    changed = (a[0] - b[0]).abs().amax(dim=(0, 1, 3))
    assert changed[3] > 1e-3 and torch.all(changed[[0, 1, 2, 4, 5]] == 0)  # only token 3 moved
    # per token it is an orthogonal map, applied before RoPE: norms kept
    torch.testing.assert_close(a[0].norm(dim=-1), q.norm(dim=-1), atol=1e-12, rtol=0)
    # and it matches x·∏G_k(f(x_t)) then RoPE
    ang = mod.net(x).view(1, T, 2, D // 2)[0]
    pairs = round_robin_pairs(D)[:2]
    plain = RotaryEmbedding(head_dim=D).double()
    rows = torch.stack([q[0, :, t] @ chain_product(givens_matrices(ang[t].cos(), ang[t].sin(), pairs))
                        for t in range(T)], dim=1)
    torch.testing.assert_close(a[0], plain.rotate(rows[None], rows[None], pos, pos)[0], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="hidden state"):
        mod.rotate(q, k, pos, pos)


def test_conditional_rotation_decodes_with_a_kv_cache(tiny_config, build):
    model = build(tiny_config(**{"model.position.kind": "conditional_rope", "model.position.scope": "head"}),
                  double=True)
    ids = torch.randint(0, 256, (2, 9), generator=_gen(11))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.init_cache()
        steps = torch.cat([model(ids[:, t:t + 1], cache=cache).logits for t in range(9)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-10, rtol=0)
    # the same weights without the conditional rotation compute something else
    plain = build(tiny_config(), double=True)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    with torch.no_grad():
        assert (plain(ids).logits - full).abs().max() > 1e-6


# ----------------------------------------------------------------------------- relative biases


@pytest.mark.parametrize("bidirectional", [False, True])
def test_clipped_relative_bias_matches_formula(bidirectional):
    M, H = 3, 2
    rel = ClippedRelativeBias(heads=H, max_rel_dist=M, bidirectional=bidirectional).double()
    assert rel.table.shape == ((2 * M + 1) if bidirectional else (M + 1), H)
    qp, kp = torch.arange(5) + 4, torch.arange(9)
    b = rel.bias(None, None, qp, kp)
    assert b.shape == (H, 5, 9)
    for i, qi in enumerate(qp.tolist()):
        for j, kj in enumerate(kp.tolist()):
            d = qi - kj
            if not bidirectional and d < 0:
                continue  # masked in a causal model
            row = max(-M, min(M, d)) + (M if bidirectional else 0)
            torch.testing.assert_close(b[:, i, j], rel.table[row])
    # distances past the clip share an entry; distinct distances inside it do not
    assert torch.equal(b[:, 4, 0], b[:, 4, 1]) and not torch.equal(b[:, 0, 2], b[:, 0, 3])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dynamic_bias_is_mlp_of_signed_log_distance(bidirectional):
    torch.manual_seed(0)
    H = 3
    dyn = DynamicPositionBias(heads=H, hidden=8, depth=2, bidirectional=bidirectional).double()
    qp, kp = torch.arange(4) + 5, torch.arange(9)
    seen = []
    mlp = dyn.mlp
    dyn.mlp = lambda d: seen.append(d.clone()) or mlp(d)
    b = dyn.bias(None, None, qp, kp)
    (d_eval,) = seen
    assert len(d_eval) == len(torch.unique(d_eval)) <= 4 + 9 - 1  # each distinct distance once

    def manual(d: float) -> torch.Tensor:
        x = torch.tensor([[math.copysign(math.log1p(abs(d)), d)]], dtype=F64)
        for w, bb in zip(dyn.weights, dyn.biases):
            x = F.silu(x @ w.T + bb)
        return (x @ dyn.out.T)[0]

    for i, qi in enumerate(qp.tolist()):
        for j, kj in enumerate(kp.tolist()):
            d = qi - kj
            if not bidirectional and d < 0:
                continue
            torch.testing.assert_close(b[:, i, j], manual(d), atol=1e-12, rtol=0)
    if bidirectional:  # the sign matters
        assert not torch.allclose(b[:, 0, 2], b[:, 0, 8])  # d = +3 vs d = −3


# ----------------------------------------------------------------------------- learned sinusoidal


def test_learned_sinusoidal_starts_as_normalised_sinusoids():
    dim, n = 16, 40
    emb = LearnedSinusoidal(dim=dim, max_len=n, scale=2.0, init_std=0.02).double()
    ref = sinusoid_table(n, dim).double()
    torch.testing.assert_close(emb.table.detach(), ref / ref.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    x = torch.zeros(1, 5, dim, dtype=F64)
    pos = torch.arange(5) + 3
    out = emb.embed(x, pos)
    gain = 2.0 * 0.02 * math.sqrt(dim)
    torch.testing.assert_close(out[0], gain * emb.table.detach()[pos], atol=1e-8, rtol=0)
    torch.testing.assert_close(out[0].norm(dim=-1), torch.full((5,), gain, dtype=F64))
    with pytest.raises(ValueError, match="max_seq_len"):
        emb.embed(x, torch.tensor([n]))


def test_learned_sinusoidal_checkpoint_same_values_fewer_saved_tensors():
    dim, B, T = 16, 3, 7
    g = _gen(12)
    x0 = torch.randn(B, T, dim, generator=g, dtype=F64)
    pos = torch.randint(0, 30, (B, T), generator=g)  # per-row positions: batch-sized intermediates
    results = {}
    for ckpt in (False, True):
        emb = LearnedSinusoidal(dim=dim, max_len=32, checkpoint=ckpt).double()
        x = x0.clone().requires_grad_()
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = emb.embed(x, pos)
        (out * torch.arange(dim, dtype=F64)).sum().backward()
        results[ckpt] = (out.detach(), emb.table.grad.clone(), sum(saved))
    torch.testing.assert_close(results[True][0], results[False][0], atol=0, rtol=0)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-12, rtol=0)
    assert results[False][2] >= B * T * dim  # without: the normalised rows are kept for backward
    assert results[True][2] < results[False][2] // 2  # with: only the inputs to recompute from


# ----------------------------------------------------------------------------- models and benchmark


@pytest.mark.parametrize("kind", ["givens_rope", "orthogonal_rope", "conditional_rope", "relative", "dynamic"])
def test_per_layer_override_gets_its_own_trained_instance(kind, tiny_config, build):
    model = build(tiny_config(**{"model.layers.overrides": {"0": {"position": {"kind": kind}}}}), double=True)
    own = model.blocks[0].mixer.position
    assert own is not model.position and model.blocks[1].mixer.position is model.position
    assert isinstance(model.position, RotaryEmbedding) and type(model.position) is RotaryEmbedding
    ids = torch.randint(0, 256, (2, 10), generator=_gen(13))
    model(ids, targets=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters())


def test_model_without_aux_parts_keeps_loss_equal_to_nll(tiny_config, build):
    model = build(tiny_config(), double=True)
    assert model._aux_parts == []
    ids = torch.randint(0, 256, (2, 8), generator=_gen(14))
    out = model(ids, targets=ids)
    assert out.loss is out.nll and out.aux == {}


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_generate_with_multi_scale_rope(fraction, tiny_config, build):
    from archlab.models import generate

    model = build(tiny_config(**{"model.position.base_mults": [1.0, 10.0], "model.position.fraction": fraction}),
                  double=True)
    ids = torch.randint(0, 256, (2, 5), generator=_gen(15))
    a = generate(model, ids, max_new_tokens=6, temperature=0.0, use_cache=True)
    b = generate(model, ids, max_new_tokens=6, temperature=0.0, use_cache=False)
    assert torch.equal(a, b)
