"""Memory-read blocks, persistent-memory (all-)attention, PID attention, LAuReL and Mix-LN.

The registry's free tests (tests/test_parts.py) already hold the ``memory`` mixer and the
``laurel``/``mixln`` policies to causality, cache = recomputation, gradients, knobs and round
trips; these tests check what each idea computes, against the formulas written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from archlab.config import ConfigError
from archlab.nn.mixers.memory import MemoryRead, mem
from archlab.nn.mixers.pid import PIDControl
from archlab.nn.positional import NoPosition
from archlab.nn.residual import LAuReL, PostNorm, PreNorm, Stream
from tests.test_parts import assert_cache_matches, assert_causal, jitter, make_ids, transplant

G = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


# ----------------------------------------------------------------------------- memory reads


def test_softmax_mlp_is_a_memory_read():
    """softmax(x·W₁)·W₂ = mem(x, W₁ᵀ, W₂): a bias-free softmax MLP is a read from a memory whose
    keys are W₁'s columns and values W₂'s rows."""
    x, W1, W2 = rand(3, 7, 16), rand(16, 40), rand(40, 16)
    torch.testing.assert_close(mem(x, W1.t(), W2), torch.softmax(x @ W1, dim=-1) @ W2, rtol=0, atol=1e-12)
    # a temperature divides the logits
    torch.testing.assert_close(mem(x, W1.t(), W2, 2.5), torch.softmax(x @ W1 / 2.5, dim=-1) @ W2, rtol=0, atol=1e-12)


def _mixer(**kw) -> MemoryRead:
    torch.manual_seed(0)
    return MemoryRead(dim=16, heads=2, position=NoPosition(), slots=6, **kw).double()


def _by_hand(m: MemoryRead, x: torch.Tensor) -> torch.Tensor:
    """The block of the module docstring, written out per head (no projections, no norm)."""
    B, T, D = x.shape
    H, hd = m.heads, m.head_dim
    t = m.temperatures().view(3, H)

    def heads(z):
        return z.view(B, T, H, hd).transpose(1, 2)

    def merge(z):
        return z.transpose(1, 2).reshape(B, T, D)

    def persistent(q, K, V, temp):
        return merge(torch.stack([torch.softmax(heads(q)[:, h] @ K[h].t() / temp[h], -1) @ V[h] for h in range(H)], 1))

    q = x + persistent(x, m.keys, m.values, t[0])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    ctx = []
    for h in range(H):
        s = heads(q)[:, h] @ heads(x)[:, h].transpose(-1, -2) / t[1, h]
        ctx.append(torch.softmax(s.masked_fill(~causal, -math.inf), -1) @ heads(x)[:, h])
    q = q + merge(torch.stack(ctx, 1))
    K2, V2 = (m.values, m.keys) if m.tied else (m.keys2, m.values2)
    return persistent(q, K2, V2, t[2]) + q - x


@pytest.mark.parametrize("tied", [True, False])
def test_memory_read_block_is_the_written_reads(tied):
    m = _mixer(tied=tied, temperature=1.7)
    x = rand(2, 9, 16)
    torch.testing.assert_close(m(x, positions=torch.arange(9)), _by_hand(m, x), rtol=0, atol=1e-12)


def test_tied_swapped_read_uses_the_first_reads_parameters():
    tied, untied = _mixer(), _mixer(tied=False)
    K2, V2 = tied.swapped_memory()
    assert K2 is tied.values and V2 is tied.keys  # the same tensors, keys and values swapped
    assert {n for n, _ in tied.named_parameters()} == {"keys", "values"}
    assert {"keys2", "values2"} <= {n for n, _ in untied.named_parameters()}
    # the gradient of the tied memory collects both reads: changing only the swapped read's
    # role (untying) changes the gradient the first memory gets
    x = rand(2, 5, 16)
    untied.load_state_dict({**tied.state_dict(), "keys2": tied.values.detach(), "values2": tied.keys.detach()})
    a, b = tied(x, positions=torch.arange(5)), untied(x, positions=torch.arange(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)  # same function when the copies are equal
    a.sum().backward()
    b.sum().backward()
    assert not torch.allclose(tied.keys.grad, untied.keys.grad)


def test_memory_block_in_the_lm_is_the_written_block(tiny_config, build):
    """With the layer's norm and feed-forward 'none', an LM block adds exactly the three reads."""
    cfg = tiny_config(**{"model.layers.default.mixer": {"kind": "memory", "temperature": 1.3},
                         "model.layers.default.ffn": {"kind": "none"}, "model.layers.default.norm": {"kind": "none"},
                         "model.position": {"kind": "none"}})
    model = build(cfg, double=True)
    block = model.blocks[0]
    assert block.ffn is None and block.norm2 is None
    x = rand(2, 8, 32)
    torch.testing.assert_close(block(x, positions=torch.arange(8)), _by_hand(block.mixer, x) + x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("knobs", [{"projections": True}, {"norm": True}, {"learn_temperature": True},
                                   {"tied": False}])
@pytest.mark.parametrize("position", ["rope", "alibi", "t5", "cope"])
def test_memory_block_causal_and_cached(knobs, position, tiny_config, build):
    cfg = tiny_config(**{"model.layers.default.mixer": {"kind": "memory", **knobs},
                         "model.layers.default.ffn": {"kind": "none"}, "model.position": {"kind": position}})
    model = build(cfg, double=True)
    jitter(model)
    assert_causal(model, make_ids())
    assert_cache_matches(model, make_ids())


def test_memory_context_read_uses_the_positional_scheme(tiny_config, build):
    make = lambda p: build(tiny_config(**{"model.layers.default.mixer": {"kind": "memory"},  # noqa: E731
                                          "model.position": {"kind": p}}), double=True)
    a, b = make("none"), make("rope")
    transplant(a, b)
    ids = make_ids()
    with torch.no_grad():
        assert not torch.allclose(a(ids).logits, b(ids).logits)


def test_learned_temperatures_are_positive_and_trained(tiny_config, build):
    m = _mixer(learn_temperature=True, temperature=2.0)
    torch.testing.assert_close(m.temperatures(), torch.full((3, 2, 1, 1), 2.0, dtype=torch.float64))
    m(rand(2, 5, 16), positions=torch.arange(5)).square().sum().backward()
    assert m.log_temp.grad is not None and (m.log_temp.grad != 0).all()


# ----------------------------------------------------------------------------- all-attention


def test_persistent_slots_join_the_context_softmax(tiny_config, build):
    """One softmax over [persistent slots, causal context]; the slots have no position and are
    seen by every query, the first one included."""
    cfg = tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "persistent": 5},
                         "model.position": {"kind": "alibi"}})
    attn = build(cfg, double=True).blocks[0].mixer
    B, T, H, hd = 2, 6, attn.heads, attn.head_dim
    x = rand(B, T, 32)
    pos = torch.arange(T)
    q, k, v = attn.project(x)
    bias = attn.position.bias(q, k, pos, pos)
    want = []
    for h in range(H):
        s_ctx = q[:, h] @ k[:, h].transpose(-1, -2) / math.sqrt(hd) + bias[..., h, :, :]
        s_ctx = s_ctx.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
        s_mem = (q[:, h] @ attn.memory_k[h].t() / math.sqrt(hd)).expand(B, T, 5)
        w = torch.softmax(torch.cat([s_mem, s_ctx], -1), -1)
        want.append(w[..., :5] @ attn.memory_v[h] + w[..., 5:] @ v[:, h])
    want = attn.out(torch.stack(want, 1).transpose(1, 2).reshape(B, T, -1))
    torch.testing.assert_close(attn(x, positions=pos), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("extra", [{}, {"model.kv_heads": 2}, {"model.position": {"kind": "t5"}},
                                   {"model.layers.default.ffn": {"kind": "none"}}])
def test_all_attention_causal_and_cached(extra, tiny_config, build):
    cfg = tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "persistent": 4}, **extra})
    model = build(cfg, double=True)
    assert_causal(model, make_ids())
    assert_cache_matches(model, make_ids())


def test_all_attention_left_padded_decoding(tiny_config, build):
    from tests.test_parts import assert_left_padded_decoding

    model = build(tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "persistent": 4}}), double=True)
    assert_left_padded_decoding(model, pad=4, n_prompt=6, n_steps=5)


def test_persistent_memory_refuses_cope(tiny_config):
    with pytest.raises(ConfigError, match=r"persistent.*cope"):
        tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "persistent": 4},
                       "model.position": {"kind": "cope"}})


# ----------------------------------------------------------------------------- PID attention


def test_pid_update_by_hand():
    """Layer 0 sets f = β·V⁰ and passes attention through; layer ℓ adds λ_P·e + λ_I·Σe + λ_D·Δe."""
    pid = PIDControl(p=0.7, i=0.3, d=0.2, beta=0.1)
    state: dict = {}
    ys, vs = [rand(2, 4, 5, 3) for _ in range(3)], [rand(2, 4, 5, 3) for _ in range(3)]
    assert torch.equal(pid(ys[0], vs[0], state), ys[0])
    f = 0.1 * vs[0]
    e = [f - v for v in vs]
    torch.testing.assert_close(pid(ys[1], vs[1], state), ys[1] + 0.7 * e[1] + 0.3 * (e[0] + e[1]) + 0.2 * (e[1] - e[0]))
    torch.testing.assert_close(pid(ys[2], vs[2], state),
                               ys[2] + 0.7 * e[2] + 0.3 * (e[0] + e[1] + e[2]) + 0.2 * (e[2] - e[1]))


@pytest.mark.parametrize("kind", ["attention", "local", "conv_attention"])
def test_pid_with_zero_gains_is_plain_attention(kind, tiny_config, build):
    plain = build(tiny_config(**{"model.layers.default.mixer": {"kind": kind}, "model.depth": 3}), double=True)
    pid = build(tiny_config(**{"model.layers.default.mixer": {"kind": kind, "pid": {"p": 0, "i": 0, "d": 0}},
                               "model.depth": 3}), double=True)
    transplant(plain, pid)
    ids = make_ids()
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, pid(ids).logits)


@pytest.mark.parametrize("knob", ["p", "i", "d", "beta"])
def test_every_pid_knob_acts(knob, tiny_config, build):
    gains = {"p": 0.8, "i": 0.5, "d": 0.05, "beta": 0.1}
    base = build(tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "pid": gains},
                                "model.depth": 3}), double=True)
    alt = build(tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "pid": {**gains, knob: 0.3}},
                               "model.depth": 3}), double=True)
    transplant(base, alt)
    ids = make_ids()
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, alt(ids).logits), f"pid.{knob} changes nothing"


def test_pid_attention_causal_and_cached(tiny_config, build):
    model = build(tiny_config(**{"model.layers.default.mixer": {"kind": "attention", "pid": {}},
                                 "model.depth": 3, "model.kv_heads": 2}), double=True)
    assert_causal(model, make_ids())
    assert_cache_matches(model, make_ids())


def test_pid_outside_the_lm_is_refused(tiny_config):
    with pytest.raises(ConfigError, match=r"mixer\.pid.*family 'lm'"):
        tiny_config("model.family=echo", "data.corpus=speech",
                    **{"model.layers.default.mixer": {"kind": "attention", "pid": {}}})


# ----------------------------------------------------------------------------- LAuReL


def _norm_and_f(dim=8):
    torch.manual_seed(1)
    norm = torch.nn.LayerNorm(dim).double()
    W = rand(dim, dim)
    return norm, (lambda h: torch.tanh(h @ W))


def test_laurel_rw_at_one_is_the_plain_residual(tiny_config, build):
    """α = β = 1 (logits 0) with no LR/PA term is x + f(N(x)): the whole model equals pre-norm."""
    pre = build(tiny_config(), double=True)
    rw = build(tiny_config(**{"model.layers.default.norm.placement": {"kind": "laurel"}}), double=True)
    transplant(pre, rw)
    with torch.no_grad():
        for b in rw.blocks:
            b.residual1.rw.zero_()
            b.residual2.rw.zero_()
        ids = make_ids()
        torch.testing.assert_close(rw(ids).logits, pre(ids).logits, rtol=0, atol=1e-12)


def test_laurel_variants_by_hand():
    norm, f = _norm_and_f()
    x, x1, x2 = rand(2, 3, 8), rand(2, 3, 8), rand(2, 3, 8)
    # RW: α·f(N(x)) + β·x with α = 2σ(a), β = 2σ(b)
    p = LAuReL(8, rw=True).double()
    with torch.no_grad():
        p.rw.copy_(torch.tensor([0.4, -1.1]))
    a, b = 2 * torch.sigmoid(torch.tensor(0.4, dtype=torch.float64)), 2 * torch.sigmoid(torch.tensor(-1.1, dtype=torch.float64))
    torch.testing.assert_close(p(x, f, norm), a * f(norm(x)) + b * x)
    # LR: f(N(x)) + B·A·x + x
    p = LAuReL(8, rw=False, rank=3).double()
    jitter(p)
    A, B = p.down[0], p.up[0]
    torch.testing.assert_close(p(x, f, norm), f(norm(x)) + x @ A.t() @ B.t() + x)
    # post-norm placement: N(f(x) + g)
    p = LAuReL(8, rw=False, rank=3, post=True).double()
    jitter(p)
    torch.testing.assert_close(p(x, f, norm), norm(f(x) + x @ p.down[0].t() @ p.up[0].t() + x))
    # PA with identity h: f(N(x)) + x + Σ_j γ_j x_{i−j} over the last k states of the stream
    s = Stream()
    s.inputs += [x2, x1, x]
    p = LAuReL(8, rw=False, previous=2).double()
    jitter(p)
    g = p.gamma
    torch.testing.assert_close(p(x, f, norm, s), f(norm(x)) + x + g[0] * x + g[1] * x1)
    # RW + LR + PA: α·f + β·(x + Σ_j γ_j B_j A_j x_{i−j}), one low-rank pair per earlier state
    p = LAuReL(8, rw=True, rank=2, previous=3).double()
    jitter(p)
    a, b = 2 * torch.sigmoid(p.rw)
    h = sum(p.gamma[j] * (z @ p.down[j].t() @ p.up[j].t()) for j, z in enumerate([x, x1, x2]))
    torch.testing.assert_close(p(x, f, norm, s), a * f(norm(x)) + b * (x + h))


def test_laurel_pa_reads_the_stream_of_earlier_sublayers(tiny_config, build):
    """In the LM, PA reads the residual stream as earlier sublayers received it: perturbing
    what an earlier block wrote changes a later block's PA term, and the stream holds every
    sublayer's input in order (2 per block)."""
    cfg = tiny_config(**{"model.layers.default.norm.placement": {"kind": "laurel", "previous": 3, "rank": 2},
                         "model.depth": 3})
    model = build(cfg, double=True)
    jitter(model)
    seen = []
    orig = Stream.__init__

    def spy(self):
        orig(self)
        seen.append(self)
    Stream.__init__ = spy
    try:
        model(make_ids())
    finally:
        Stream.__init__ = orig
    assert len(seen) == 1 and len(seen[0].inputs) == 2 * 3
    assert_causal(model, make_ids())
    assert_cache_matches(model, make_ids())


def test_laurel_rank_above_width_is_refused(tiny_config):
    with pytest.raises(ConfigError, match=r"placement\.rank.*exceeds model\.dim"):
        tiny_config(**{"model.layers.default.norm.placement": {"kind": "laurel", "rank": 64}})


# ----------------------------------------------------------------------------- Mix-LN


@pytest.mark.parametrize("alpha, same_as", [(0.0, "pre"), (1.0, "post")])
def test_mixln_ends_are_pre_and_post_norm(alpha, same_as, tiny_config, build):
    mix = build(tiny_config(**{"model.depth": 4, "model.layers.default.norm.placement": {"kind": "mixln", "alpha": alpha}}),
                double=True)
    ref = build(tiny_config(**{"model.depth": 4, "model.layers.default.norm.placement": same_as}), double=True)
    assert mix.state_dict().keys() == ref.state_dict().keys()  # post-norm: no final norm, in both
    transplant(ref, mix)
    ids = make_ids()
    with torch.no_grad():
        assert torch.equal(mix(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("depth, alpha, n_post", [(4, 0.25, 1), (4, 0.5, 2), (12, 0.25, 3), (5, 0.5, 2), (3, 0.3, 0)])
def test_mixln_post_norm_for_the_first_floor_alpha_l_layers(depth, alpha, n_post, tiny_config, build):
    model = build(tiny_config(**{"model.depth": depth,
                                 "model.layers.default.norm.placement": {"kind": "mixln", "alpha": alpha}}))
    kinds = [(type(b.residual1), type(b.residual2)) for b in model.blocks]
    assert kinds == [(PostNorm, PostNorm)] * n_post + [(PreNorm, PreNorm)] * (depth - n_post)
    assert not isinstance(model.norm, torch.nn.Identity)  # the top is pre-norm: a final norm


def test_mixln_changes_the_function(tiny_config, build):
    mix = build(tiny_config(**{"model.depth": 4, "model.layers.default.norm.placement": {"kind": "mixln"}}), double=True)
    pre = build(tiny_config(**{"model.depth": 4}), double=True)
    transplant(pre, mix)
    with torch.no_grad():
        assert not torch.allclose(mix(make_ids()).logits, pre(make_ids()).logits)


# ----------------------------------------------------------------------------- families


def test_other_families_refuse_what_needs_the_lm(tiny_config):
    with pytest.raises(ConfigError, match=r"ffn\.kind: family 'hierarchical'"):
        tiny_config("model.family=hierarchical", **{"model.layers.default.ffn": {"kind": "none"}})
    with pytest.raises(ConfigError, match=r"family 'hierarchical' uses its own attention"):
        tiny_config("model.family=hierarchical", **{"model.layers.default.mixer": {"kind": "attention", "persistent": 2}})
    with pytest.raises(ConfigError, match=r"placement: family 'echo' is pre-norm"):
        tiny_config("model.family=echo", "data.corpus=speech",
                    **{"model.layers.default.norm.placement": {"kind": "laurel"}})
