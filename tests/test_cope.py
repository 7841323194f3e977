"""CoPE (contextual position encoding): the fused attention against the paper's formula
computed the slow, obvious way, plus the properties the scheme promises (relative positions
when every gate is 1, the cap, masked keys not counted, cached decoding, gradients through
the gates, the two scaling choices, RoPE on top). Registry-wide properties (causality, cache,
knobs, round trip) run in tests/test_parts.py -k cope."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from archlab.catalog.context import BuildContext
from archlab.config import ConfigError
from archlab.nn.mixers.attention import Attention, allowed_mask
from archlab.nn.positional.cope import ContextualPosition, query_blocks
from archlab.registry import POSITION

D = 8


def scheme(*, max_pos: int = 6, block: int = 64, scale_pos: bool = True, scale_gate: bool = True,
           rope_fraction: float = 0.0, seed: int = 0) -> ContextualPosition:
    torch.manual_seed(seed)
    m = ContextualPosition(head_dim=D, max_pos=max_pos, scale_pos_logits=scale_pos, scale_gate_logits=scale_gate,
                           rope_fraction=rope_fraction).double()
    with torch.no_grad():
        m.table.normal_()  # O(1) entries, so the position term is as large as q·k
    m.block = block
    return m


def qkv(B: int = 2, H: int = 2, T: int = 9, seed: int = 1, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64, requires_grad=requires_grad) for _ in range(3)]


def causal(T: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    pos = torch.arange(T)
    return allowed_mask(pos, pos, causal=True, key_mask=key_mask)


def direct(q, k, v, table, allowed, *, scale_pos=True, scale_gate=True):
    """The paper's formula, entry by entry: g_ij = σ(q_i·k_j [/√d]); p_ij = Σ of g_il over the
    allowed keys l ≥ j, capped at p_max − 1; e[p] = (p − ⌊p⌋)·e[⌈p⌉] + (1 − p + ⌊p⌋)·e[⌊p⌋];
    logit = (q·k + q·e[p])/√d (scale_pos) or q·k/√d + q·e[p]; softmax over allowed keys."""
    B, H, T, _ = q.shape
    Tk = k.shape[2]
    P = table.shape[0]
    r = math.sqrt(q.shape[-1])
    out = torch.zeros_like(q)
    pos = torch.zeros(B, H, T, Tk, dtype=q.dtype)
    al = allowed.expand(B, H, T, Tk)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                qi = q[b, h, i]
                logits = []
                for j in range(Tk):
                    if not al[b, h, i, j]:
                        logits.append(torch.tensor(-math.inf, dtype=q.dtype))
                        continue
                    p = sum(torch.sigmoid(qi @ k[b, h, l] / (r if scale_gate else 1.0))
                            for l in range(j, Tk) if al[b, h, i, l])
                    p = torch.clamp(p, max=P - 1)
                    pos[b, h, i, j] = p
                    lo, hi = math.floor(p), math.ceil(p)
                    e = (p - lo) * table[hi] + (1 - p + lo) * table[lo]
                    qk, qe = qi @ k[b, h, j], qi @ e
                    logits.append((qk + qe) / r if scale_pos else qk / r + qe)
                w = torch.stack(logits).softmax(-1)
                out[b, h, i] = w @ v[b, h]
    return out, pos


def via_bias(m, q, k, v, allowed):
    """The generic explicit path of attention with the scheme's ``bias`` seam (no fusion)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    pos = torch.arange(q.shape[2])
    scores = scores + m.bias(q, k, pos, pos, scores=scores, allowed=allowed)
    return scores.masked_fill(~allowed, -math.inf).softmax(-1) @ v


def fused(m, q, k, v, allowed):
    pos = torch.arange(q.shape[2])
    return m.attend(q, k, v, pos, pos, allowed=allowed, scale=1 / math.sqrt(D))


# ----------------------------------------------------------------------------- the formula


@pytest.mark.parametrize("scale_pos", [True, False])
@pytest.mark.parametrize("scale_gate", [True, False])
def test_matches_direct_formula(scale_pos, scale_gate):
    q, k, v = qkv(T=9)
    km = torch.ones(2, 9, dtype=torch.bool)
    km[1, :3] = False  # left padding
    km[0, 5] = False  # and a hole
    m = scheme(scale_pos=scale_pos, scale_gate=scale_gate)
    for allowed in (causal(9), causal(9, km)):
        ref, _ = direct(q, k, v, m.table.detach(), allowed, scale_pos=scale_pos, scale_gate=scale_gate)
        for block in (2, 4, 64):  # several query blocks, each over only the keys it can see
            m.block = block
            torch.testing.assert_close(fused(m, q, k, v, allowed), ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(via_bias(m, q, k, v, allowed), ref, atol=1e-12, rtol=0)


def test_float32_matches_direct_formula():
    q, k, v = qkv(T=8)
    m = scheme(block=3)
    ref, _ = direct(q, k, v, m.table.detach(), causal(8))
    m32 = m.float()
    out = fused(m32, q.float(), k.float(), v.float(), causal(8))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_positions_match_direct_and_are_capped():
    q, k, v = qkv(T=12)
    m = scheme(max_pos=4)
    allowed = causal(12)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    p = m.positions(scores, allowed, scale=1 / math.sqrt(D))
    _, ref = direct(q, k, v, m.table.detach(), allowed)
    torch.testing.assert_close(p.masked_fill(~allowed, 0), ref, atol=1e-12, rtol=0)
    raw = (torch.sigmoid(scores) * allowed).flip(-1).cumsum(-1).flip(-1)  # the uncapped counts
    assert (raw > 3.5).any() and p.max() == 3.0  # capped at max_pos − 1: long histories all read e[3]
    assert torch.equal(p, raw.clamp(max=3.0))


def test_saturated_gates_count_relative_positions():
    """All gates 1 (σ of a huge q·k is exactly 1.0 in float64): p_ij = i − j + 1, capped at
    p_max − 1, and the bias is q·e at those integers, i.e. exact table rows."""
    T, P = 10, 6
    m = scheme(max_pos=P, block=3)
    q = torch.full((1, 2, T, D), 10.0, dtype=torch.float64)
    q = q + torch.rand(q.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = q.clone()
    v = qkv(1, 2, T)[2]
    allowed = causal(T)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    assert (torch.sigmoid(scores) == 1.0).all()
    p = m.positions(scores, allowed, scale=1 / math.sqrt(D))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    rel = (i - j + 1).clamp(min=0, max=P - 1).to(torch.float64)  # (future keys: masked, 0 here)
    assert torch.equal(p.masked_fill(~allowed, 0), rel.masked_fill(~allowed, 0).expand_as(p))
    rows = m.table.detach()[rel.long()]  # (T, T, D): e[min(i − j + 1, P − 1)]
    exact = torch.einsum("bhid,ijd->bhij", q, rows) / math.sqrt(D)
    bias = m.bias(q, k, torch.arange(T), torch.arange(T), scores=scores, allowed=allowed)
    torch.testing.assert_close(bias.masked_fill(~allowed, 0), exact.masked_fill(~allowed, 0), atol=1e-12, rtol=0)
    ref = (scores + exact).masked_fill(~allowed, -math.inf).softmax(-1) @ v
    torch.testing.assert_close(fused(m, q, k, v, allowed), ref, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- masks


def test_masked_keys_are_not_counted():
    """With keys 2 and 5 masked out, every real query sees the positions and the output it
    would see on the sequence with those keys removed."""
    T, drop = 10, [2, 5]
    keep = [t for t in range(T) if t not in drop]
    q, k, v = qkv(1, 2, T)
    km = torch.ones(1, T, dtype=torch.bool)
    km[0, drop] = False
    m = scheme(block=3)
    allowed = causal(T, km)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    p = m.positions(s, allowed, scale=1 / math.sqrt(D))
    qc, kc, vc = q[:, :, keep], k[:, :, keep], v[:, :, keep]
    pc = m.positions(qc @ kc.transpose(-1, -2) / math.sqrt(D), causal(len(keep)), scale=1 / math.sqrt(D))
    torch.testing.assert_close(p[:, :, keep][..., keep].masked_fill(~causal(len(keep)), 0),
                               pc.masked_fill(~causal(len(keep)), 0), atol=1e-12, rtol=0)
    out = fused(m, q, k, v, allowed)
    torch.testing.assert_close(out[:, :, keep], fused(m, qc, kc, vc, causal(len(keep))), atol=1e-12, rtol=0)
    assert torch.isfinite(out).all()


def test_query_blocks():
    allowed = causal(10)
    assert query_blocks(allowed, 10, 10, 4) == [(0, 4, 4), (4, 8, 8), (8, 10, 10)]
    assert query_blocks(None, 10, 10, 4) == [(0, 10, 10)]
    assert query_blocks(allowed, 10, 10, 64) == [(0, 10, 10)]
    km = torch.ones(1, 10, dtype=torch.bool)
    km[0, :2] = False  # padding queries may see every key: their block spans all keys
    assert query_blocks(causal(10, km), 10, 10, 4) == [(0, 4, 10), (4, 8, 8), (8, 10, 10)]
    # a cache: 3 new queries over 8 keys
    pos_q, pos_k = torch.arange(5, 8), torch.arange(8)
    assert query_blocks(allowed_mask(pos_q, pos_k, causal=True, key_mask=None), 3, 8, 2) == [(0, 2, 7), (2, 3, 8)]


# ----------------------------------------------------------------------------- gradients


def test_gradient_matches_finite_differences():
    """The hand-written backward against finite differences, with several query blocks,
    a padding mask and a cap that bites (q·3 makes the counts pass max_pos − 1)."""
    q, k, v = qkv(1, 2, 7, requires_grad=True)
    m = scheme(max_pos=4, block=3)
    km = torch.ones(1, 7, dtype=torch.bool)
    km[0, 0] = False
    allowed = causal(7, km)
    pos = torch.arange(7)
    for gate in (True, False):
        m.scale_gate_logits = gate
        assert torch.autograd.gradcheck(
            lambda q, k, v: m.attend(q * 3, k, v, pos, pos, allowed=allowed, scale=1 / math.sqrt(D)), (q, k, v))


def test_gradient_reaches_table_and_flows_through_the_gates():
    q, k, v = qkv(requires_grad=True)
    m = scheme(block=4)
    allowed = causal(9)
    out = fused(m, q, k, v, allowed)
    go = torch.randn_like(out)
    gq, gk, gt = torch.autograd.grad(out, (q, k, m.table), go)
    assert gt.abs().sum() > 0
    # the same through the generic path, once with gates that carry gradient, once detached
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    pos = torch.arange(9)
    full = (scores + m.bias(q, k, pos, pos, scores=scores, allowed=allowed)).masked_fill(~allowed, -math.inf)
    cut = (scores + m.bias(q, k, pos, pos, scores=scores.detach(), allowed=allowed)).masked_fill(~allowed, -math.inf)
    fq, fk, ft = torch.autograd.grad(full.softmax(-1) @ v, (q, k, m.table), go, retain_graph=True)
    _, ck = torch.autograd.grad(cut.softmax(-1) @ v, (q, k), go)
    torch.testing.assert_close(gq, fq, atol=1e-12, rtol=0)
    torch.testing.assert_close(gk, fk, atol=1e-12, rtol=0)
    torch.testing.assert_close(gt, ft, atol=1e-12, rtol=0)
    assert (gk - ck).abs().max() > 1e-3  # the gates' share of k's gradient is real


# ----------------------------------------------------------------------------- knobs


def test_scaling_choices():
    q, k, v = qkv()
    allowed = causal(9)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    pos = torch.arange(9)
    code, formula = scheme(), scheme(scale_pos=False)
    # the same positions; the formula's position logit is √d times the code's
    torch.testing.assert_close(formula.bias(q, k, pos, pos, scores=s, allowed=allowed),
                               math.sqrt(D) * code.bias(q, k, pos, pos, scores=s, allowed=allowed), atol=1e-12, rtol=0)
    unscaled = scheme(scale_gate=False)
    p_code = code.positions(s, allowed, scale=1 / math.sqrt(D))
    p_raw = unscaled.positions(s, allowed, scale=1 / math.sqrt(D))
    torch.testing.assert_close(p_raw, code.positions(s * math.sqrt(D), allowed, scale=1 / math.sqrt(D)))
    assert (p_code - p_raw).abs().max() > 0.1
    outs = [fused(x, q, k, v, allowed) for x in (code, formula, unscaled)]
    assert (outs[0] - outs[1]).abs().max() > 1e-3 and (outs[0] - outs[2]).abs().max() > 1e-3


def attention(m: ContextualPosition, heads: int = 2) -> Attention:
    torch.manual_seed(3)
    return Attention(dim=heads * D, heads=heads, position=m).double()


def test_attention_uses_the_fused_path(monkeypatch):
    m = scheme()
    att = attention(m)
    calls = []
    orig = m.attend
    monkeypatch.setattr(m, "attend", lambda *a, **kw: calls.append(1) or orig(*a, **kw))
    x = torch.randn(2, 9, 2 * D, dtype=torch.float64)
    att(x, positions=torch.arange(9))
    assert calls


def test_dropout_uses_the_unfused_path():
    q, k, v = qkv()
    m = scheme()
    allowed = causal(9)
    pos = torch.arange(9)
    torch.manual_seed(5)
    out = m.attend(q, k, v, pos, pos, allowed=allowed, scale=1 / math.sqrt(D), dropout_p=0.3)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    probs = (s + m.bias(q, k, pos, pos, scores=s, allowed=allowed)).masked_fill(~allowed, -math.inf).softmax(-1)
    torch.manual_seed(5)
    torch.testing.assert_close(out, torch.nn.functional.dropout(probs, p=0.3) @ v, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- RoPE + CoPE, cache


def test_rope_combination_is_translation_invariant():
    """With rope_fraction > 0, q and k rotate (scores and gates see relative distances) while
    the CoPE term uses the un-rotated query: shifting every position changes nothing."""
    m = scheme(rope_fraction=0.5, block=4)
    assert m.uses_rotate
    att = attention(m)
    x = torch.randn(2, 11, 2 * D, dtype=torch.float64)
    a = att(x, positions=torch.arange(11))
    b = att(x, positions=torch.arange(11) + 37)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    plain = attention(scheme(block=4))
    assert (plain(x, positions=torch.arange(11)) - a).abs().max() > 1e-3  # the rotation does something


@pytest.mark.parametrize("rope_fraction", [0.0, 0.5])
def test_cache_matches_full_recomputation(rope_fraction, tiny_config, build):
    """Token by token and in uneven chunks (the prompt chunk spans several query blocks)."""
    cfg = tiny_config(**{"model.position": {"kind": "cope", "max_pos": 8, "rope_fraction": rope_fraction}})
    model = build(cfg, double=True)
    for mod in model.modules():
        if isinstance(mod, ContextualPosition):
            with torch.no_grad():
                mod.table.normal_()
            mod.block = 4
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        for cuts in ((1,) * 20, (9, 11), (5, 7, 8)):
            cache = model.init_cache()
            bounds = [0, *torch.tensor(cuts).cumsum(0).tolist()]
            parts = [model(ids[:, a:b], cache=cache).logits for a, b in itertools.pairwise(bounds)]
            torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=0)
        # causal: a later token does not reach earlier logits
        other = ids.clone()
        other[:, 12:] = (other[:, 12:] + 1) % 256
        assert torch.equal(model(other).logits[:, :12], full[:, :12])


# ----------------------------------------------------------------------------- config


def test_config_switches_it_on(tiny_config, build):
    model = build(tiny_config(**{"model.position": {"kind": "cope", "max_pos": 16}}))
    assert isinstance(model.position, ContextualPosition)
    assert model.position.table.shape == (16, 8)
    assert model.blocks[0].mixer.position is model.position  # one table shared by the layers


def test_per_layer_tables(tiny_config, build):
    cfg = tiny_config(**{"model.position.kind": "none",
                         "model.layers.overrides": {"0,1": {"position": {"kind": "cope", "max_pos": 8}}}})
    model = build(cfg, double=True)
    a, b = model.blocks[0].mixer.position, model.blocks[1].mixer.position
    assert isinstance(a, ContextualPosition) and isinstance(b, ContextualPosition) and a is not b
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    model(ids, targets=ids).loss.backward()
    assert a.table.grad.abs().sum() > 0 and b.table.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, key", [({"max_pos": 1}, "max_pos"), ({"rope_fraction": 1.5}, "rope_fraction"),
                                      ({"rope_fraction": 0.05}, "rope_fraction")])
def test_bad_config_is_one_clear_line(bad, key, tiny_config):
    with pytest.raises(ConfigError, match=rf"model\.position\.{key}"):
        tiny_config(**{"model.position": {"kind": "cope", **bad}})


def test_refused_for_bidirectional_attention():
    cfg = POSITION.parse({"kind": "cope"}, "position")
    ctx = BuildContext(dim=32, heads=4, kv_heads=4, head_dim=8, max_seq_len=64, causal=False)
    with pytest.raises(ConfigError, match="causal"):
        POSITION.build(cfg, ctx)


# ----------------------------------------------------------------------------- benchmark contenders


def test_benchmark_contenders():
    """``archlab bench train --contenders ...,peer-xt-cope,ours-cope``: ours with CoPE, and
    x-transformers with its CoPE alone (no rotary, no absolute table), at the reference shape."""
    import argparse

    from archlab.bench import peers, throughput
    from archlab.bench.harness import REFERENCE_SHAPE

    args = argparse.Namespace(config=throughput.DEFAULT_CONFIG, seed=0)
    ours = throughput.FACTORIES["ours-cope"](REFERENCE_SHAPE, args)
    assert ours.name == "ours-cope" and isinstance(ours.model.position, ContextualPosition)
    assert "ours-cope" not in throughput.DEFAULT_CONTENDERS  # opt-in
    if not peers.peers_available():
        pytest.skip("x-transformers not installed")
    peer = throughput.FACTORIES["peer-xt-cope"](REFERENCE_SHAPE, args)
    names = [n for n, _ in peer.model.named_parameters()]
    assert sum(".cope.pos_emb" in n for n in names) == REFERENCE_SHAPE.depth
    assert peer.model.attn_layers.rotary_pos_emb is None  # no rotary
    assert not any(n.startswith("pos_emb") for n in names)  # no learned absolute table
    assert peer.model.attn_layers.layers[0][1].attend.cope.max_pos == 64
