"""Local (sliding-window) attention: the blockwise kernel against the masked reference, the
windowed KV cache, global heads and tokens, every positional scheme, per-layer patterns."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import archlab.config  # noqa: F401  (registers the built-in parts)
from archlab.nn.cache import WindowedKVCache
from archlab.nn.mixers.attention import Attention
from archlab.nn.kernels.sliding_window import (
    default_block,
    masked_window_attention,
    sliding_window_attention,
    window_allowed,
)
from archlab.nn.mixers.local import LocalAttention
from archlab.nn.positional import NoPosition, RotaryEmbedding
from archlab.registry import POSITION, ConfigError
from tests.test_parts import (
    _differs,
    assert_cache_matches,
    assert_left_padded_decoding,
    assert_causal,
    make_ids,
    transplant,
)

F64 = torch.float64


def qkv(B=2, H=4, Hk=4, Tq=24, Tk=None, D=8, dtype=F64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    Tk = Tk or Tq
    shapes = ((B, H, Tq, D), (B, Hk, Tk, D), (B, Hk, Tk, D))
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_(grad) for s in shapes]


def grads(y, inputs, seed=1):
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return torch.autograd.grad(y, inputs, gy)


def assert_same(fast, ref, inputs, tol):
    torch.testing.assert_close(fast, ref, atol=tol, rtol=0)
    for a, b in zip(grads(fast, inputs), grads(ref, inputs)):
        torch.testing.assert_close(a, b, atol=tol, rtol=0)


# ----------------------------------------------------------------------------- the kernel

# (T, window, block, global_tokens, kv_heads, earlier keys): T not a multiple of the block,
# w = 1, w ≥ T, more global tokens than the window, GQA, a chunk after earlier keys.
CASES = [
    (T, w, blk, g, hk, past)
    for (T, w, blk), g, hk, past in itertools.product(
        [(24, 5, 4), (37, 8, 8), (50, 16, 32), (33, 1, 8), (20, 20, 8), (13, 40, 4), (64, 17, 16), (9, 3, 64)],
        [0, 3, 12], [4, 2, 1], [0, 7],
    )
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "T{}-w{}-b{}-g{}-hk{}-past{}".format(*c))
def test_blockwise_equals_masked_reference_float64(case):
    T, w, blk, g, hk, past = case
    q, k, v = qkv(Hk=hk, Tq=T, Tk=T + past)
    fast = sliding_window_attention(q, k, v, window=w, global_tokens=g, block=blk)
    ref = masked_window_attention(q, k, v, window=w, global_tokens=g)
    assert_same(fast, ref, (q, k, v), 1e-9)


@pytest.mark.parametrize("blk", [None, (16, 64), (32, 8)], ids=["default", "fwd16-bwd64", "fwd32-bwd8"])
@pytest.mark.parametrize("g,past", [(0, 0), (5, 9)])
def test_forward_and_backward_blockings_may_differ(blk, g, past):
    """The backward pass may cut the queries differently from the forward (default for w ≥ 128)."""
    q, k, v = qkv(B=1, Hk=2, Tq=300, Tk=300 + past)
    fast = sliding_window_attention(q, k, v, window=130, global_tokens=g, block=blk)
    ref = masked_window_attention(q, k, v, window=130, global_tokens=g)
    assert_same(fast, ref, (q, k, v), 1e-9)


@pytest.mark.parametrize("T,w,blk,g", [(200, 32, 16, 0), (301, 64, None, 5), (129, 1, 32, 2), (100, 128, None, 0)])
def test_blockwise_equals_masked_reference_float32(T, w, blk, g):
    q, k, v = qkv(B=1, H=2, Hk=1, Tq=T, D=16, dtype=torch.float32)
    fast = sliding_window_attention(q, k, v, window=w, global_tokens=g, block=blk)
    ref = masked_window_attention(q, k, v, window=w, global_tokens=g)
    assert_same(fast, ref, (q, k, v), 1e-5)


@pytest.mark.parametrize("trainable", [False, True], ids=["fixed-bias-fused", "trainable-bias-explicit"])
@pytest.mark.parametrize("g,past", [(0, 0), (4, 0), (3, 6)])
def test_band_bias_equals_reference(trainable, g, past):
    """A relative bias computed once for the band gives the reference's result; a bias that
    needs a gradient takes the explicit path and its gradient matches too."""
    q, k, v = qkv(Tq=45, Tk=45 + past, Hk=2)
    table = torch.randn(4, 64, dtype=F64, requires_grad=trainable)

    def bias_fn(qp, kp):
        return table[:, (qp[:, None] - kp[None, :]).clamp(0, 63)]

    fast = sliding_window_attention(q, k, v, window=9, global_tokens=g, bias_fn=bias_fn, block=8)
    ref = masked_window_attention(q, k, v, window=9, global_tokens=g, bias_fn=bias_fn)
    inputs = (q, k, v, table) if trainable else (q, k, v)
    assert_same(fast, ref, inputs, 1e-9)


def test_window_covering_everything_is_full_causal_attention():
    q, k, v = qkv(Tq=30)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    for w in (30, 31, 1000):
        torch.testing.assert_close(sliding_window_attention(q, k, v, window=w), full, atol=1e-12, rtol=0)
    assert _differs(sliding_window_attention(q, k, v, window=29, block=8), full)


def test_dropout_is_applied_to_the_band():
    q, k, v = qkv(Tq=40)
    torch.manual_seed(0)
    y = sliding_window_attention(q, k, v, window=6, dropout_p=0.5, block=8)
    assert torch.isfinite(y).all() and _differs(y, sliding_window_attention(q, k, v, window=6, block=8))
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("g", [0, 4])
def test_kernel_never_forms_a_T_by_T_matrix(g):
    """Every intermediate of forward and backward is O(T·(w + b)), far below T² (= 4M here)."""
    T, w, H, D = 2048, 16, 2, 8
    q, k, v = qkv(B=1, H=H, Hk=H, Tq=T, D=D, dtype=torch.float32)
    with _LargestTensor() as probe:
        y = sliding_window_attention(q, k, v, window=w, global_tokens=g)
        y.sum().backward()
    b = max(default_block(w))
    assert probe.largest <= H * T * (w + 2 * b) * 2, probe.largest
    assert probe.largest < T * T // 8


@pytest.mark.parametrize("g", [0, 3])
def test_kernel_is_causal_by_perturbation(g):
    q, k, v = qkv(Tq=50, grad=False)
    y = sliding_window_attention(q, k, v, window=7, global_tokens=g, block=8)
    for t in (0, 20, 48):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t + 1:] += 1.0
        v2[:, :, t + 1:] -= 1.0
        y2 = sliding_window_attention(q, k2, v2, window=7, global_tokens=g, block=8)
        assert torch.equal(y2[:, :, : t + 1], y[:, :, : t + 1])
        assert _differs(y2[:, :, t + 1:], y[:, :, t + 1:])


def test_window_allowed_rule():
    pos = torch.arange(10)
    ok = window_allowed(pos, pos, window=3, global_tokens=2)
    for i, j in itertools.product(range(10), range(10)):
        assert bool(ok[i, j]) == (0 <= i - j < 3 or (j < 2 and j <= i))


def test_kernel_rejects_bad_arguments():
    q, k, v = qkv(grad=False)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="heads"):
        sliding_window_attention(q, k[:, :3], v[:, :3], window=4)


# ----------------------------------------------------------------------------- the windowed cache


def test_windowed_cache_returns_what_the_new_queries_need_and_stays_bounded():
    w, keep = 5, 2
    cache = WindowedKVCache(w, keep_first=keep)
    k = torch.arange(40, dtype=F64).view(1, 1, 40, 1)
    seen = 0
    for n in (1, 3, 1, 7, 1, 1, 12, 1, 9, 4):
        kk, _, pp = cache.update(k[:, :, seen: seen + n], k[:, :, seen: seen + n], torch.arange(seen, seen + n))
        # every key some new query can see is there, each once, in order
        need = sorted({j for i in range(seen, seen + n) for j in range(i + 1) if i - j < w or j < keep})
        have = pp.tolist()
        assert set(need) <= set(have) and have == sorted(set(have)), (need, have)
        assert torch.equal(kk[0, 0, :, 0], pp.to(F64)) and torch.equal(cache.index, pp)
        seen += n
        assert cache.stored <= (w - 1) + keep
        assert len(cache) == seen
    assert cache.pos.tolist() == [0, 1, *range(seen - (w - 1), seen)]


def test_windowed_cache_reorder():
    cache = WindowedKVCache(3)
    k = torch.randn(3, 2, 6, 4)
    cache.update(k, k, torch.arange(6))
    cache.reorder(torch.tensor([2, 0]))
    assert torch.equal(cache.k, k[[2, 0], :, 4:])


def local_model(tiny_config, build, *sets, **overrides):
    kv = {"model.layers.default.mixer": {"kind": "local", "window": 6}}
    kv.update(overrides)
    return build(tiny_config(*sets, **kv), double=True)


@pytest.mark.parametrize("knobs", [{}, {"global_tokens": 2}, {"global_heads": 1}], ids=["plain", "gtok", "ghead"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_long_decoding_equals_recomputation(knobs, kv_heads, tiny_config, build):
    """T ≫ w: token by token and in uneven chunks, with the cache bounded throughout."""
    mixer = {"kind": "local", "window": 6, **knobs}
    model = build(tiny_config(**{"model.layers.default.mixer": mixer, "model.kv_heads": kv_heads,
                                 "model.max_seq_len": 128}), double=True)
    ids = make_ids(2, 60, seed=3)
    with torch.no_grad():
        full = model(ids).logits
        for cuts in ([1] * 60, [9, 1, 1, 17, 2, 30], [25, 35]):
            cache = model.init_cache()
            out, a = [], 0
            for n in cuts:
                out.append(model(ids[:, a: a + n], cache=cache).logits)
                a += n
                for c in cache.layers:
                    if not knobs.get("global_heads"):
                        assert isinstance(c, WindowedKVCache) and c.stored <= 5 + knobs.get("global_tokens", 0)
            torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-9, rtol=0)


@pytest.mark.parametrize("kind", ["rope", "alibi", "none"])
def test_left_padding_with_windowed_cache(kind, tiny_config, build):
    model = local_model(tiny_config, build, **{"model.position.kind": kind})
    assert_left_padded_decoding(model, pad=4, n_prompt=10, n_steps=12)


# ----------------------------------------------------------------------------- the mixer


def mixer(position=None, **kw):
    torch.manual_seed(0)
    args = {"dim": 32, "heads": 4, "position": position or NoPosition(), "window": 5}
    args.update(kw)
    return LocalAttention(**args).double().eval()


def test_global_heads_see_beyond_the_window():
    """Perturbing a key far outside the window changes exactly the global heads' outputs."""
    w, T, far = 5, 30, 3
    x = torch.randn(2, T, 32, dtype=F64)
    x2 = x.clone()
    x2[:, far] += 1.0
    pos = torch.arange(T)
    for gh in (0, 1, 2):
        m = mixer(global_heads=gh, window=w)
        with torch.no_grad():
            y, y2 = [m.attend(*m.project(a), pos, pos) for a in (x, x2)]
        later = slice(far + w, T)  # queries whose window no longer holds `far`
        local, glob = slice(0, 4 - gh), slice(4 - gh, 4)
        assert torch.equal(y[:, local, later], y2[:, local, later])
        if gh:
            assert (y[:, glob, later] - y2[:, glob, later]).abs().amax(dim=(0, 1, 3)).min() > 1e-6


def test_global_tokens_are_seen_by_every_later_query():
    w, T = 5, 30
    x = torch.randn(1, T, 32, dtype=F64)
    x2 = x.clone()
    x2[:, 1] += 1.0
    for g, sees in ((0, False), (1, False), (2, True)):
        m = mixer(global_tokens=g, window=w)
        with torch.no_grad():
            y, y2 = m(x, positions=torch.arange(T)), m(x2, positions=torch.arange(T))
        changed = (y - y2).abs().amax(dim=-1)[0]
        assert bool((changed[w + 1:] > 1e-6).all()) == sees, g


@pytest.mark.parametrize("kind", POSITION.kinds())
@pytest.mark.parametrize("gh", [0, 1])
def test_every_position_scheme_fast_path_equals_masked_path(kind, gh, tiny_config, build):
    """The kernel path (with the band bias for relative schemes) equals the masked path."""
    cfg = tiny_config(**{"model.position.kind": kind, "model.kv_heads": 2,
                         "model.layers.default.mixer": {"kind": "local", "window": 5, "global_heads": gh}})
    model = build(cfg, double=True)
    attn = model.blocks[0].mixer
    x = torch.randn(2, 40, 32, dtype=F64, requires_grad=True)
    pos = torch.arange(40)
    q, k, v = attn.project(x)
    if attn.position.uses_rotate:
        extra = {"x": x} if getattr(attn.position, "uses_input", False) else {}
        q, k = attn.position.rotate(q, k, pos, pos, **extra)
    fast = attn.attend(q, k, v, pos, pos)
    ref = attn._masked(q, k, v, pos, pos, None)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.testing.assert_close(fast, ref, atol=1e-9, rtol=0)
    ga = torch.autograd.grad(fast.square().sum(), [x, *params], allow_unused=True, retain_graph=True)
    gb = torch.autograd.grad(ref.square().sum(), [x, *params], allow_unused=True)
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    ids = make_ids(2, 40, seed=5)
    assert_causal(model, ids)
    assert_cache_matches(model, ids[:, :24])


def test_set_window_is_read_on_every_forward(tiny_config, build):
    model = local_model(tiny_config, build)
    other = local_model(tiny_config, build, **{"model.layers.default.mixer": {"kind": "local", "window": 3}})
    ids = make_ids()
    with torch.no_grad():
        before = model(ids).logits
        for b in model.blocks:
            b.mixer.set_window(3)
        after = model(ids).logits
    assert _differs(before, after)
    torch.testing.assert_close(after, other(ids).logits.detach(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="window"):
        model.blocks[0].mixer.set_window(0)


def test_growing_the_window_under_a_windowed_cache_is_refused(tiny_config, build):
    model = local_model(tiny_config, build)
    cache = model.init_cache()
    ids = make_ids()
    with torch.no_grad():
        model(ids[:, :10], cache=cache)
        model.blocks[0].mixer.set_window(4)  # shrinking keeps working
        model(ids[:, 10:11], cache=cache)
        model.blocks[0].mixer.set_window(8)
        with pytest.raises(RuntimeError, match="window grew"):
            model(ids[:, 11:12], cache=cache)


def test_per_layer_pattern_local_local_global(tiny_config, build):
    cfg = tiny_config(**{"model.depth": 3,
                         "model.layers.overrides": {"0,1": {"mixer": {"kind": "local", "window": 4}}}})
    model = build(cfg, double=True)
    kinds = [type(b.mixer) for b in model.blocks]
    assert kinds == [LocalAttention, LocalAttention, Attention]
    assert [b.mixer.window for b in model.blocks[:2]] == [4, 4]
    assert isinstance(model.blocks[0].mixer.position, RotaryEmbedding)
    ids = make_ids()
    assert_causal(model, ids)
    assert_cache_matches(model, ids)
    plain = build(tiny_config(**{"model.depth": 3}), double=True)
    transplant(model, plain)
    with torch.no_grad():
        assert _differs(model(ids).logits, plain(ids).logits)


@pytest.mark.parametrize("mixer_cfg,match", [
    ({"kind": "local", "window": 0}, "window: must be ≥ 1"),
    ({"kind": "local", "global_heads": 5}, "global_heads: 5 exceeds model.heads=4"),
    ({"kind": "local", "global_heads": -1}, "global_heads: must be ≥ 0"),
    ({"kind": "local", "global_tokens": -2}, "global_tokens: must be ≥ 0"),
    ({"kind": "local", "width": 3}, "unknown key"),
])
def test_config_errors_are_one_line(mixer_cfg, match, tiny_config):
    with pytest.raises(ConfigError, match=match) as e:
        tiny_config(**{"model.layers.default.mixer": mixer_cfg})
    assert "\n" not in str(e.value)


def test_bench_local_runs_and_writes_json(tmp_path, capsys):
    import json

    from archlab.bench.local import main

    out = tmp_path / "local.json"
    assert main(["--seq-len", "96", "--window", "8", "--dim", "32", "--heads", "2", "--rounds", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for level in ("kernel", "layer"):
        r = res["levels"][level]
        assert set(r["ms"]) >= {"full", "archlab_local"} and r["speedup_vs_full"]["archlab_local"] > 0
    assert "exactly `window` keys" in res["semantics"]
    assert "speed-up vs full" in capsys.readouterr().out
