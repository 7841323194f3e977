"""Three findings about the rotary variants (docs/rotary_variants.md, docs/positional.md):

(a) a static rotation before RoPE is a reparameterisation of W_q and W_k;
(b) Givens planes RoPE leaves invariant get exactly zero gradient, so the pairs are chosen to
    avoid them, and the remaining inert angles (rope fraction < ½) are listed exactly;
(c) RoPE's memoised cos/sin tables follow an in-place update of the positions tensor.
"""

from __future__ import annotations

import pytest
import torch

from archlab.nn.mixers.attention import Attention
from archlab.nn.positional import ConditionalRotary, RotaryEmbedding, RotatedRotary
from archlab.nn.positional.rotations import (
    GivensApply,
    GivensRounds,
    commutes_with_rope,
    inert_angles,
    rope_aware_pairs,
    round_robin_pairs,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qk(D: int, H: int = 2, T: int = 7, seed: int = 0):
    g = _gen(seed)
    return torch.randn(3, H, T, D, generator=g, dtype=F64), torch.randn(3, H, T, D, generator=g, dtype=F64)


def _scores(scheme, q, k, pos):
    rq, rk = scheme.rotate(q, k, pos, pos)
    return rq @ rk.transpose(-1, -2)


# ----------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("position", [
    {"kind": "givens_rope", "rounds": -1},
    {"kind": "givens_rope", "rounds": 3, "scope": "head", "fraction": 0.5},
    {"kind": "orthogonal_rope"},
    {"kind": "orthogonal_rope", "penalty": 0.1, "givens_rounds": 3, "scope": "head", "learn_phase": True},
])
@pytest.mark.parametrize("bias", [False, True])
def test_a_static_rotation_is_a_reparameterisation_of_wq_wk(position, bias, tiny_config, build):
    """Plain RoPE with each head's W_q, W_k (and biases) multiplied by the scheme's matrix M
    gives the scheme's logits to float64 rounding."""
    extra = {"model.kv_heads": 2, "model.bias": bias}
    override = {"1": {"position": dict(position)}}  # layer 1 has its own instance (its own M)
    model = build(tiny_config(**{"model.position": position, "model.layers.overrides": override}, **extra),
                  double=True)
    rope = {"kind": "rope", **{k: v for k, v in position.items() if k in ("fraction", "learn_phase")}}
    plain = build(tiny_config(**{"model.position": rope, "model.layers.overrides": {"1": {"position": rope}}},
                              **extra), double=True)
    g = _gen(1)
    with torch.no_grad():  # move the rotations (and phases) off their start, penalised R off orthogonal
        for name, p in model.named_parameters():
            if name.startswith("position.") or ".position." in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    sd = model.state_dict()
    plain_sd = plain.state_dict()
    assert all(k in sd for k in plain_sd if "position" not in k)
    plain.load_state_dict({k: (sd[k] if k in sd else v) for k, v in plain_sd.items()})
    ids = torch.randint(0, 256, (2, 12), generator=_gen(2))
    with torch.no_grad():
        unfolded = plain(ids).logits
        folded_layers = 0
        for ours, theirs in zip((m for m in model.modules() if isinstance(m, Attention)),
                                (m for m in plain.modules() if isinstance(m, Attention))):
            scheme = ours.position
            if not isinstance(scheme, RotatedRotary):
                continue
            M = scheme.rotation()  # (G, D, D)
            assert theirs.position is not scheme
            if scheme.phase is not None:  # RoPE's own knob: the same value on both sides
                theirs.position.phase.copy_(scheme.phase)
            H, Hk, D = ours.heads, ours.kv_heads, ours.head_dim
            G = M.shape[0]
            W, b = theirs.qkv.weight, theirs.qkv.bias
            for first, n in ((0, H), (H * D, Hk)):  # the q rows, then the k rows
                for h in range(n):
                    rows = slice(first + h * D, first + (h + 1) * D)
                    Mh = M[h // (n // G)]
                    W[rows] = Mh.T @ W[rows]  # x·W_hᵀ·M = x·(Mᵀ W_h)ᵀ
                    if b is not None:
                        b[rows] = b[rows] @ Mh
            folded_layers += 1
        assert folded_layers == 2
        ref, got = model(ids).logits, plain(ids).logits
    assert (ref - unfolded).abs().max() > 1e-3  # the rotation matters to the logits ...
    torch.testing.assert_close(got, ref, atol=1e-11, rtol=0)  # ... and folding it in reproduces them


@pytest.mark.parametrize("kw", [{"givens_rounds": -1}, {"givens_rounds": 2, "fraction": 0.5},
                                {"orthogonal": True, "penalty": 0.2}])
def test_module_scores_equal_plain_rope_on_rotated_q_and_k(kw):
    D = 8
    mod = RotatedRotary(head_dim=D, heads=2, **kw).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=_gen(3), dtype=F64))
    q, k = _qk(D)
    pos = torch.arange(q.shape[2])
    M = mod.rotation().detach()[0]
    plain = RotaryEmbedding(head_dim=D, heads=2, fraction=kw.get("fraction", 1.0)).double()
    diff = (_scores(mod, q, k, pos) - _scores(plain, q @ M, k @ M, pos)).abs().max()
    assert diff <= 1e-12


def _fold_twins(cross: bool, bias: bool):
    """An attention (self or cross) with a per-key-head Givens rotation and a relative bias,
    and a copy of it whose projections carry a no-op forward hook (so it never folds)."""
    import copy

    from archlab.nn.mixers.cross_attention import CrossAttention
    from archlab.nn.positional.relative import ClippedRelativeBias
    from archlab.nn.positional.stack import PositionStack

    torch.manual_seed(0)
    pos = PositionStack([RotatedRotary(head_dim=4, heads=4, kv_heads=2, givens_rounds=-1, scope="head"),
                         ClippedRelativeBias(heads=4, max_rel_dist=3, bidirectional=cross)])
    kw = dict(dim=16, heads=4, kv_heads=2, position=pos, bias=bias)
    attn = (CrossAttention(**kw) if cross else Attention(**kw)).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    twin = copy.deepcopy(attn)
    for m in ((twin.q, twin.kv) if cross else (twin.qkv,)):
        m.register_forward_hook(lambda *a: None)
    return attn, twin


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_folding_the_rotation_into_the_projections_changes_nothing(cross, bias, monkeypatch):
    """B·T ≥ width: the fixed rotation goes into W_q/W_k (and their biases); outputs and every
    gradient equal the activation path to float64 rounding."""
    import archlab.nn.mixers.attention as A
    import archlab.nn.mixers.cross_attention as C

    calls = []
    real = A.fold_rows
    spy = lambda *a: calls.append(1) or real(*a)  # noqa: E731
    monkeypatch.setattr(A, "fold_rows", spy)
    monkeypatch.setattr(C, "fold_rows", spy)
    attn, twin = _fold_twins(cross, bias)
    x = torch.randn(3, 6, 16, dtype=F64)
    kw = {"memory": torch.randn(3, 9, 16, dtype=F64)} if cross else {}
    outs = []
    for m in (attn, twin):
        before = len(calls)
        y = m(x, positions=torch.arange(6), **kw)
        (y * torch.linspace(-1, 1, y.numel(), dtype=F64).view_as(y)).sum().backward()
        outs.append((y, {n: p.grad for n, p in m.named_parameters()}, len(calls) - before))
    (y, g, n), (y2, g2, n2) = outs
    assert n == 2 and n2 == 0  # the first folded (q and k), the hooked twin did not
    torch.testing.assert_close(y, y2, atol=1e-12, rtol=0)
    assert g.keys() == g2.keys() and all(g[k] is not None for k in g)
    for k in g:
        torch.testing.assert_close(g[k], g2[k], atol=1e-11, rtol=0, msg=k)


def test_a_short_call_rotates_the_activations_instead():
    """One token at a time (decoding) folding would cost more than it saves: not taken."""
    import archlab.nn.mixers.attention as A

    attn, _ = _fold_twins(False, False)
    assert not A.fold_worthwhile(torch.zeros(1, 1, 16)) and A.fold_worthwhile(torch.zeros(2, 8, 16))
    assert attn.pre_rotation(torch.zeros(1, 1, 16, dtype=F64), torch.arange(1)) is None
    assert attn.pre_rotation(torch.zeros(2, 8, 16, dtype=F64), torch.arange(8)) is not None


# ----------------------------------------------------------------------------- (b)


def _angle_grads(mod: RotatedRotary, D: int, seed: int = 4) -> torch.Tensor:
    """|∂ Σ w·scores / ∂ angle| maximised over groups: (K, n/2)."""
    q, k = _qk(D, seed=seed)
    pos = torch.arange(q.shape[2])
    s = _scores(mod, q, k, pos)
    (s * torch.randn(s.shape, generator=_gen(seed + 1), dtype=F64)).sum().backward()
    return mod.givens.angles.grad.abs().amax(0)


def _legacy(mod: RotatedRotary) -> RotatedRotary:
    """The same module loaded from a state dict saved before the pairs were stored."""
    sd = {k: v for k, v in mod.state_dict().items() if not k.endswith("givens.pairs")}
    mod.load_state_dict(sd, strict=True)
    return mod


def _planes(mod, mask) -> set[tuple[int, int]]:
    return {tuple(sorted(p)) for p in mod.givens.pairs[mask].tolist()}


ACTING = [(D, frac, K) for D in (4, 6, 8, 12, 16) for frac in (1.0, 0.75, 0.5) for K in sorted({1, 2, D // 2, -1})
          if (int(D * frac) // 2 * 2) * 2 >= D]


@pytest.mark.parametrize("D, fraction, rounds", ACTING)
def test_every_givens_angle_acts_when_rope_covers_half_the_head(D, fraction, rounds):
    torch.manual_seed(D + rounds)
    mod = RotatedRotary(head_dim=D, heads=2, givens_rounds=rounds, fraction=fraction, scope="head").double()
    grads = _angle_grads(mod, D)
    assert grads.min() > 1e-6, f"zero-gradient planes {_planes(mod, grads <= 1e-6)}"
    assert not mod.givens.inert().any()
    last = mod.givens.pairs[-1].tolist()
    assert not any(commutes_with_rope(i, j, mod.rot_dim) for i, j in last)


def test_the_plain_round_robin_had_the_reported_inert_angles():
    torch.manual_seed(0)
    cases = [({"givens_rounds": 4}, {(3, 7), (1, 5)}), ({"givens_rounds": -1, "fraction": 0.5}, {(6, 7)})]
    for kw, reported in cases:
        old = _legacy(RotatedRotary(head_dim=8, heads=2, **kw).double())
        assert torch.equal(old.givens.pairs, round_robin_pairs(8)[:old.givens.pairs.shape[0]])
        grads = _angle_grads(old, 8)
        zero = grads < 1e-12
        assert _planes(old, zero) == reported
        assert grads[~zero].min() > 1e-6
        assert torch.equal(old.givens.inert(), zero)
        new = RotatedRotary(head_dim=8, heads=2, **kw).double()
        assert _angle_grads(new, 8).min() > 1e-6


@pytest.mark.parametrize("D, fraction, rounds", [(8, 0.25, 1), (8, 0.25, -1), (12, 0.25, 2), (12, 0.25, -1),
                                                 (16, 0.25, 2), (16, 0.25, 8), (16, 0.25, -1), (16, 0.375, 5),
                                                 (2, 1.0, 1), (6, 0.5, 3)])
@pytest.mark.parametrize("legacy", [False, True])
def test_inert_angles_are_exactly_those_with_zero_gradient(D, fraction, rounds, legacy):
    torch.manual_seed(D * 10 + rounds)
    mod = RotatedRotary(head_dim=D, heads=2, givens_rounds=rounds, fraction=fraction).double()
    if legacy:
        mod = _legacy(mod)
    grads = _angle_grads(mod, D)
    inert = mod.givens.inert()
    assert torch.equal(grads < 1e-12, inert)
    assert grads[~inert].min() > 1e-6 if (~inert).any() else True
    r, p = mod.rot_dim, D - mod.rot_dim
    # the last round cannot avoid (p − r)/2 pass-through planes (r = 2 = D: RoPE's own plane)
    floor = max((p - r) // 2, 0) + (1 if D == r == 2 else 0)
    assert int(inert[-1].sum()) >= floor
    if not legacy and p <= 3 * r:
        assert int(inert.sum()) == floor  # spread out: nothing else is inert


def test_rope_aware_pairs_keep_the_tournament():
    for n in (4, 8, 10, 16):
        for r in range(2, n + 1, 2):
            pairs = rope_aware_pairs(n, -1, r)
            assert pairs.shape == (n - 1, n // 2, 2)
            for rnd in pairs:
                assert sorted(rnd.flatten().tolist()) == list(range(n))
            assert len({tuple(sorted(p)) for p in pairs.reshape(-1, 2).tolist()}) == n * (n - 1) // 2


def test_pairs_are_saved_and_a_state_dict_without_them_gets_the_round_robin(tiny_config, build):
    cfg = tiny_config(**{"model.position": {"kind": "givens_rope", "rounds": 4}})
    model = build(cfg, double=True)
    sd = model.state_dict()
    assert torch.equal(sd["position.givens.pairs"], rope_aware_pairs(8, 4, 8))
    ids = torch.randint(0, 256, (2, 10), generator=_gen(5))
    other = build(cfg, seed=1, double=True)
    other.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other(ids).logits, model(ids).logits, atol=0, rtol=0)
        # an old checkpoint: no pairs; its angles were trained in the plain round robin
        old = {k: v for k, v in sd.items() if not k.endswith("givens.pairs")}  # the shared scheme's aliases too
        other.load_state_dict(old, strict=True)
        assert torch.equal(other.position.givens.pairs, round_robin_pairs(8)[:4])
        model.position.givens.pairs.copy_(round_robin_pairs(8)[:4])
        torch.testing.assert_close(other(ids).logits, model(ids).logits, atol=0, rtol=0)
    bad = {k: (torch.zeros(4, 4, 2, dtype=torch.long) if k.endswith("givens.pairs") else v) for k, v in sd.items()}
    with pytest.raises(RuntimeError, match="position.givens.pairs: not Givens rounds"):
        other.load_state_dict(bad)


def test_orthogonal_rope_commuting_directions_get_no_gradient_at_the_start():
    """R = R₀·exp(A − Aᵀ) at A = 0: the directions of RoPE's planes and of rotations among the
    pass-through channels get zero gradient; every other direction acts."""
    D = 8
    torch.manual_seed(0)
    mod = RotatedRotary(head_dim=D, heads=2, orthogonal=True, fraction=0.5).double()
    q, k = _qk(D, seed=6)
    pos = torch.arange(q.shape[2])
    s = _scores(mod, q, k, pos)
    (s * torch.randn(s.shape, generator=_gen(7), dtype=F64)).sum().backward()
    grad = mod.matrix.skew.grad[0]
    for i in range(D):
        for j in range(i + 1, D):
            if commutes_with_rope(i, j, mod.rot_dim):
                assert grad[i, j].abs() < 1e-12 and grad[j, i].abs() < 1e-12, (i, j)
            else:
                assert grad[i, j].abs() > 1e-6, (i, j)


def test_conditional_angles_in_ropes_planes_act_through_their_difference():
    """Per-token angles do not cancel: P(a_m) R(n − m) P(a_n)ᵀ = R(n − m) P(a_m − a_n)."""
    D, T = 8, 7
    g = GivensApply(dim=8, rounds=4)
    pairs = round_robin_pairs(D)[:4]
    slot = [tuple(sorted(p)) for p in pairs[3].tolist()].index((1, 5))  # a RoPE plane, last round
    rope = RotaryEmbedding(head_dim=D).double()
    q, k = _qk(D, T=T, seed=8)
    pos = torch.arange(T)
    base = _scores(rope, q, k, pos)

    def scores_with(angle_per_token: torch.Tensor) -> torch.Tensor:
        a = torch.zeros(T, 4, D // 2, dtype=F64)
        a[:, 3, slot] = angle_per_token
        C, S = g.tables(a)
        return _scores(rope, g(q, C, S), g(k, C, S), pos)

    torch.testing.assert_close(scores_with(torch.full((T,), 0.7, dtype=F64)), base, atol=1e-12, rtol=0)
    varying = torch.linspace(-1, 1, T, dtype=F64)
    assert (scores_with(varying) - base).abs().max() > 1e-2
    # and a model's conditional rotation trains through such an angle
    mod = ConditionalRotary(head_dim=D, dim=16, heads=2, rounds=4).double()
    x = torch.randn(3, T, 16, generator=_gen(9), dtype=F64)
    rq, rk = mod.rotate(q, k, pos, pos, x=x)
    (rq @ rk.transpose(-1, -2)).square().sum().backward()
    rows = mod.net.weight.grad.view(4, D // 2, 16)[3, slot]
    assert rows.abs().max() > 1e-6


# ----------------------------------------------------------------------------- (c)


@pytest.mark.parametrize("scheme", ["rope", "givens"])
def test_rope_tables_follow_an_in_place_update_of_the_positions(scheme):
    D, T = 8, 6
    mod = (RotaryEmbedding(head_dim=D, heads=2) if scheme == "rope"
           else RotatedRotary(head_dim=D, heads=2, givens_rounds=-1)).double()
    q, k = _qk(D, T=T, seed=10)
    pos = torch.arange(T)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            first = mod.rotate(q, k, pos, pos)[0]
            pos.add_(5)  # the same tensor, new values
            after = mod.rotate(q, k, pos, pos)[0]
            fresh = mod.rotate(q, k, pos.clone(), pos.clone())[0]
        assert (after - first).abs().max() > 1e-3
        assert torch.equal(after, fresh)
        pos[:] = torch.arange(T) * 2
        torch.testing.assert_close(mod.rotate(q, k, pos, pos)[0], mod.rotate(q, k, pos.clone(), pos.clone())[0],
                                   atol=0, rtol=0)


def test_a_model_with_a_positions_buffer_updated_in_place_equals_a_fresh_recomputation(tiny_config, build):
    model = build(tiny_config(), double=True)
    ids = torch.randint(0, 256, (2, 8), generator=_gen(11))
    buf = torch.arange(8)
    calls = []
    angles = model.position.angles
    model.position.angles = lambda p: calls.append(1) or angles(p)
    with torch.no_grad():
        model(ids, positions=buf)
        assert len(calls) == 1  # two layers, one table: the memo still serves a forward
        buf += 3
        got = model(ids, positions=buf).logits
        want = model(ids, positions=torch.arange(8) + 3).logits
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with torch.inference_mode():  # inference tensors have no version counter: never memoised
        inf = torch.arange(8)
        model(ids, positions=inf)
        inf += 3
        torch.testing.assert_close(model(ids, positions=inf).logits, want, atol=0, rtol=0)
