"""Positional schemes against their papers' formulas, each re-derived here independently."""

from __future__ import annotations

import math

import pytest
import torch

from archlab.nn.positional import ALiBi, LearnedAbsolute, RotaryEmbedding, Sinusoidal, T5RelativeBias
from archlab.nn.positional.absolute import sinusoid_table
from archlab.nn.positional.bias import alibi_slopes, t5_bucket
from archlab.nn.positional.rope import rotary_width

# ----------------------------------------------------------------------------- RoPE


def _qk(H: int = 2, D: int = 16, T: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, H, T, D, generator=g), torch.randn(1, H, T, D, generator=g)


def _score(rope: RotaryEmbedding, q, k, m: int, n: int) -> torch.Tensor:
    rq, rk = rope.rotate(q, k, torch.tensor([m]), torch.tensor([n]))
    return (rq * rk).sum(-1)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_score_depends_only_on_offset(fraction):
    rope = RotaryEmbedding(head_dim=16, base=10000.0, fraction=fraction)
    q, k = _qk()
    for m, n in [(0, 0), (5, 2), (3, 9), (17, 0)]:
        ref = _score(rope, q, k, m, n)
        for s in (1, 7, 40):
            torch.testing.assert_close(_score(rope, q, k, m + s, n + s), ref, atol=1e-5, rtol=1e-5)
    # ...and does depend on the offset
    assert not torch.allclose(_score(rope, q, k, 5, 2), _score(rope, q, k, 2, 5), atol=1e-4)


def test_rope_score_matrix_shift_invariant_with_tensor_positions():
    rope = RotaryEmbedding(head_dim=8, base=500.0)
    q, k = _qk(H=3, D=8, T=6, seed=1)
    pos = torch.arange(6)

    def scores(p):
        rq, rk = rope.rotate(q, k, p, p)
        return rq @ rk.transpose(-1, -2)

    torch.testing.assert_close(scores(pos + 11), scores(pos), atol=1e-5, rtol=1e-5)
    # per-row (B, T) positions give the same as shared (T,) positions
    rq1, rk1 = rope.rotate(q, k, pos, pos)
    rq2, rk2 = rope.rotate(q, k, pos[None], pos[None])
    torch.testing.assert_close(rq1, rq2)
    torch.testing.assert_close(rk1, rk2)


def test_rope_matches_rotation_formula():
    """Channel pair (c, c + r/2) rotates by angle pos·base^(−2c/r)."""
    D, base, pos = 8, 100.0, 3
    rope = RotaryEmbedding(head_dim=D, base=base)
    x = torch.randn(1, 1, 1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out, _ = rope.rotate(x, x, torch.tensor([pos]), torch.tensor([pos]))
    half = D // 2
    for c in range(half):
        th = pos * base ** (-2 * c / D)
        a, b = float(x[0, 0, 0, c]), float(x[0, 0, 0, c + half])
        assert math.isclose(float(out[0, 0, 0, c]), a * math.cos(th) - b * math.sin(th), abs_tol=1e-6)
        assert math.isclose(float(out[0, 0, 0, c + half]), b * math.cos(th) + a * math.sin(th), abs_tol=1e-6)
    # rotation preserves the norm
    assert math.isclose(float(out.norm()), float(x.norm()), rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,half,table", [((2, 3, 7, 8), 4, (1, 1, 7, 4)), ((2, 3, 7, 10), 2, (2, 1, 7, 2)),
                                             ((1, 4, 5, 8), 4, (1, 4, 5, 4))],
                         ids=["full", "partial,per-batch", "per-head"])
def test_fixed_rotation_node_is_bit_identical_to_the_formula(shape, half, table, dtype):
    """RoPE's one-node rotation (fixed angles) gives the plain formula's values and input
    gradients bit for bit, from a non-contiguous input as attention produces it."""
    from archlab.nn.positional.rope import _rotate_autograd, apply_rotary

    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape[0], shape[2], shape[1], shape[3], generator=g, dtype=dtype)
    ang = torch.randn(*table, generator=g, dtype=dtype)
    cos, sin = ang.cos(), ang.sin()
    up = torch.randn(*shape, generator=g, dtype=dtype)
    outs = []
    for fn in (apply_rotary, _rotate_autograd):
        x = base.clone().requires_grad_(True)
        y = fn(x.transpose(1, 2), cos, sin)
        (gx,) = torch.autograd.grad(y, x, up)
        outs.append((y.detach(), gx))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_learnable_rotary_tables_still_get_gradients():
    """With angles that require grad (learn_freq, learn_scale) apply_rotary keeps the autograd
    formula, so the tables are trained."""
    from archlab.nn.positional.rope import apply_rotary

    ang = torch.randn(1, 1, 5, 4, requires_grad=True)
    y = apply_rotary(torch.randn(2, 3, 5, 8), ang.cos(), ang.sin())
    (ga,) = torch.autograd.grad(y.square().sum(), ang)
    assert ga.abs().sum() > 0


def test_partial_rotary_passes_channels_through():
    D, fraction = 16, 0.5
    rope = RotaryEmbedding(head_dim=D, fraction=fraction)
    r = rotary_width(D, fraction)
    assert rope.rot_dim == r == 8
    q, k = _qk(D=D, T=5)
    pos = torch.arange(5) + 3  # non-zero positions: every rotary channel moves
    rq, rk = rope.rotate(q, k, pos, pos)
    assert torch.equal(rq[..., r:], q[..., r:]) and torch.equal(rk[..., r:], k[..., r:])
    assert not torch.allclose(rq[..., :r], q[..., :r]) and not torch.allclose(rk[..., :r], k[..., :r])


def test_rope_position_zero_is_identity_and_set_base_changes_angles():
    rope = RotaryEmbedding(head_dim=8)
    q, k = _qk(D=8)
    rq, rk = rope.rotate(q, k, torch.tensor([0]), torch.tensor([0]))
    torch.testing.assert_close(rq, q)
    before = rope.rotate(q, k, torch.tensor([4]), torch.tensor([4]))[0]
    rope.set_base(10.0)
    after = rope.rotate(q, k, torch.tensor([4]), torch.tensor([4]))[0]
    assert not torch.allclose(before, after)


# ----------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_power_of_two():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-0.5 * i) for i in range(1, 17)]))


@pytest.mark.parametrize(
    "heads, expected",
    [
        # closest lower power of two (4): 2^-2, 2^-4, 2^-6, 2^-8; then every other slope of 8
        # heads (2^-1, 2^-3, 2^-5, 2^-7), as many as needed (2).
        (6, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]),
        # 8 heads: 2^-1..2^-8; then every other slope of 16 heads (2^-0.5, 2^-1.5, ...), 4 of them.
        (12, [2.0 ** -i for i in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]),
        (3, [2 ** -4, 2 ** -8, 2 ** -2]),
    ],
)
def test_alibi_slopes_non_power_of_two(heads, expected):
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(expected, dtype=torch.float32))


def test_alibi_bias_is_minus_slope_times_distance():
    H, T = 8, 7
    alibi = ALiBi(heads=H)
    pos = torch.arange(T) + 4  # absolute offset must not matter
    bias = alibi.bias(None, None, pos, pos)
    assert bias.shape[-3:] == (H, T, T)
    bias = bias.reshape(H, T, T)
    for h in range(H):
        m = 2.0 ** -(h + 1)
        for i in range(T):
            for j in range(T):
                assert math.isclose(float(bias[h, i, j]), -m * (i - j), abs_tol=1e-6)
    # bidirectional: −m·|i − j|
    bi = ALiBi(heads=H, bidirectional=True).bias(None, None, pos, pos).reshape(H, T, T)
    torch.testing.assert_close(bi, -bias.abs())
    # cached decoding: one query at position 10 against keys 0..10
    step = alibi.bias(None, None, torch.tensor([10]), torch.arange(11)).reshape(H, 1, 11)
    expected = -torch.tensor([2.0 ** -(h + 1) for h in range(H)])[:, None] * (10 - torch.arange(11.0))
    torch.testing.assert_close(step[:, 0], expected)


# ----------------------------------------------------------------------------- T5 buckets


def t5_reference(i_minus_j: int, *, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's relative_position_bucket written out for one scalar (memory − query = j − i)."""
    relative_position = -i_minus_j
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 40), (8, 20)])
def test_t5_buckets_match_reference(bidirectional, num_buckets, max_distance):
    dists = list(range(-1000, 1001))
    rel = torch.tensor(dists)
    got = t5_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    want = [t5_reference(d, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
            for d in dists]
    mismatch = [(d, int(g), w) for d, g, w in zip(dists, got, want) if int(g) != w]
    assert not mismatch, f"(i−j, got, want): {mismatch[:10]}"
    assert int(got.min()) >= 0 and int(got.max()) == num_buckets - 1
    if not bidirectional:  # a causal model never uses keys after the query: they all share bucket 0
        assert all(int(b) == 0 for b in got[:1000])


def test_t5_bias_looks_up_the_bucket_table():
    H, T = 4, 40
    t5 = T5RelativeBias(heads=H, num_buckets=16, max_distance=32)
    pos = torch.arange(T)
    bias = t5.bias(None, None, pos, pos)
    assert bias.shape[-3:] == (H, T, T)
    bias = bias.reshape(H, T, T)
    for i, j in [(0, 0), (5, 2), (39, 0), (20, 19), (3, 30)]:
        b = t5_reference(i - j, bidirectional=False, num_buckets=16, max_distance=32)
        torch.testing.assert_close(bias[:, i, j], t5.table.weight[b])
    # per-row positions (B, T) give a (B, H, T, T) bias
    assert t5.bias(None, None, pos[None].expand(2, T), pos[None].expand(2, T)).shape == (2, H, T, T)


# ----------------------------------------------------------------------------- absolute schemes


def test_learned_absolute_refuses_positions_past_table():
    table = LearnedAbsolute(dim=8, max_len=16)
    x = torch.zeros(1, 16, 8)
    out = table.embed(x, torch.arange(16))
    torch.testing.assert_close(out[0], table.table.weight)
    with pytest.raises(ValueError, match=r"position 16 .*max_seq_len=16"):
        table.embed(torch.zeros(1, 17, 8), torch.arange(17))
    with pytest.raises(ValueError, match="max_seq_len"):
        table.embed(torch.zeros(1, 1, 8), torch.tensor([20]))


def test_learned_absolute_model_error_past_max_seq_len(tiny_config, build):
    model = build(tiny_config(**{"model.position.kind": "learned", "model.max_seq_len": 32}))
    model(torch.zeros(1, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))
    # also when the cache walks past the table
    cache = model.init_cache()
    model(torch.zeros(1, 32, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("dim, base", [(8, 10000.0), (6, 100.0)])
def test_sinusoid_table_matches_formula(dim, base):
    n = 50
    table = sinusoid_table(n, dim, base)
    assert table.shape == (n, dim)
    for p in range(n):
        for i in range(dim // 2):
            w = p / base ** (2 * i / dim)
            assert math.isclose(float(table[p, 2 * i]), math.sin(w), abs_tol=1e-6)
            assert math.isclose(float(table[p, 2 * i + 1]), math.cos(w), abs_tol=1e-6)


def test_sinusoidal_embed_adds_scaled_table_at_any_position():
    dim = 8
    sin = Sinusoidal(dim=dim, base=10000.0, scale=0.5)
    x = torch.randn(2, 3, dim, generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([0, 7, 2000])  # past the initial 1024-row table: it grows
    out = sin.embed(x, pos)
    for t, p in enumerate(pos.tolist()):
        expected = torch.tensor(
            [math.sin(p / 10000 ** (2 * (c // 2) / dim)) if c % 2 == 0 else math.cos(p / 10000 ** (2 * (c // 2) / dim))
             for c in range(dim)])
        torch.testing.assert_close(out[:, t] - x[:, t], 0.5 * expected.expand(2, dim), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7)])
def test_table_bias_equals_advanced_indexing_with_its_gradient(shape):
    from archlab.nn.positional.base import table_bias

    g = torch.Generator().manual_seed(0)
    table = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 9, shape, generator=g)
    w = torch.randn(*shape[:-2], 4, *shape[-2:], generator=g, dtype=torch.float64)
    ours = table_bias(table, index)
    (ours * w).sum().backward()
    mine, table.grad = table.grad, None
    ref = table[index].movedim(-1, -3)
    (ref * w).sum().backward()
    assert torch.equal(ours, ref)
    torch.testing.assert_close(mine, table.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_a_trained_bias_takes_the_written_out_path_and_matches_the_reference(causal, padded):
    """A bias that needs a gradient goes through ``biased_attention`` (SDPA's kernels cannot
    differentiate a mask); values and every gradient equal ``fused = False`` (the materialised
    reference), with grouped-query heads, causal masking and padding."""
    import copy

    from archlab.nn.mixers.attention import Attention
    from archlab.nn.positional.relative import ClippedRelativeBias

    torch.manual_seed(0)
    attn = Attention(dim=16, heads=4, kv_heads=2, causal=causal,
                     position=ClippedRelativeBias(heads=4, max_rel_dist=3, bidirectional=not causal)).double()
    ref = copy.deepcopy(attn)
    ref.fused = False
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 7, [False, False] + [True] * 5]) if padded else None
    w = torch.randn(2, 7, 16, dtype=torch.float64)
    grads = []
    for m in (attn, ref):
        y = m(x, positions=torch.arange(7), mask=mask)
        (y * w).sum().backward()
        grads.append((y, {n: p.grad for n, p in m.named_parameters()}))
    (y, g), (y_ref, g_ref) = grads
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    for n in g_ref:
        torch.testing.assert_close(g[n], g_ref[n], atol=1e-12, rtol=0, msg=n)
