"""conv_attention: the convolution's reach (causal / centred), the combine modes, the decoding
cache (state, reorder), padding. The registry-wide properties (causality of the whole model,
cache == recomputation, gradients, knobs) are in test_parts.py (``-k conv``)."""

from __future__ import annotations

import pytest
import torch

from archlab.config import ConfigError
from archlab.nn.mixers.attention import Attention
from archlab.nn.mixers.conv_attention import ConvAttention
from archlab.nn.positional.rope import RotaryEmbedding

D, H = 16, 2


def mixer(*, kernel: int = 4, combine: str = "sum", causal: bool = True, seed: int = 0) -> ConvAttention:
    torch.manual_seed(seed)
    attn = Attention(dim=D, heads=H, position=RotaryEmbedding(head_dim=D // H), causal=causal)
    return ConvAttention(dim=D, attention=attn, kernel=kernel, combine=combine, causal=causal).double()


def x_(T: int = 12, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def reach(m: ConvAttention, t: int, T: int = 12) -> set[int]:
    """Input positions whose change moves the convolution's output at position t."""
    x = x_(T)
    base = m.conv(x)[:, t]
    seen = set()
    for s in range(T):
        y = x.clone()
        y[:, s] += 1.0
        if not torch.allclose(m.conv(y)[:, t], base):
            seen.add(s)
    return seen


@torch.no_grad()
def test_causal_convolution_sees_only_the_last_k_tokens():
    m = mixer(kernel=4)
    assert reach(m, 6) == {3, 4, 5, 6}
    assert reach(m, 1) == {0, 1}
    # the formula: c_t[d] = Σ_j w[d, j] · x_{t+j−3}[d]
    x = x_()
    manual = sum(m.weight[:, j] * torch.nn.functional.pad(x, (0, 0, 3, 0))[:, j: j + 12] for j in range(4))
    torch.testing.assert_close(m.conv(x), manual, atol=1e-12, rtol=0)


@torch.no_grad()
def test_non_causal_convolution_sees_both_sides():
    assert reach(mixer(kernel=3, causal=False), 6) == {5, 6, 7}
    assert reach(mixer(kernel=4, causal=False), 6) == {5, 6, 7, 8}  # even kernel: one more after
    # and the whole mixer (attention is bidirectional too): a later token changes earlier outputs
    m, x = mixer(causal=False), x_()
    y = x.clone()
    y[:, 8] += 1.0
    pos = torch.arange(12)
    assert not torch.allclose(m(x, positions=pos)[:, 7], m(y, positions=pos)[:, 7])


def test_non_causal_refuses_a_cache():
    m = mixer(causal=False)
    with pytest.raises(ValueError, match="non-causal"):
        m(x_(), positions=torch.arange(12), cache=m.init_cache())


@torch.no_grad()
def test_kernel_one_differs_from_a_longer_kernel():
    one, four = mixer(kernel=1), mixer(kernel=4)
    four.attn.load_state_dict(one.attn.state_dict())
    four.weight[:, -1] = one.weight[:, 0]  # same tap on the current token; the others add history
    x, pos = x_(), torch.arange(12)
    assert not torch.allclose(one(x, positions=pos), four(x, positions=pos))
    four.weight[:, :-1] = 0
    torch.testing.assert_close(one(x, positions=pos), four(x, positions=pos), atol=1e-12, rtol=0)


def test_gate_mixes_the_branches_and_learns():
    m, x, pos = mixer(combine="gate"), x_(), torch.arange(12)
    with torch.no_grad():
        a, c = m.attn(x, positions=pos), m.conv(x)
        torch.testing.assert_close(m(x, positions=pos), 0.5 * a + 0.5 * c, atol=1e-12, rtol=0)  # σ(0) = ½
    m(x, positions=pos).pow(2).sum().backward()
    assert m.gate.grad is not None and (m.gate.grad != 0).all()
    before = m.gate.detach().clone()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    assert not torch.equal(before, m.gate)
    s = mixer(combine="sum")
    assert s.gate is None and sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in s.parameters()) + D


@torch.no_grad()
def test_cache_reorder_follows_the_rows():
    m, x, pos = mixer(kernel=3), x_(T=10, B=3), torch.arange(10)
    cache = m.init_cache()
    m(x[:, :6], positions=pos[:6], cache=cache)
    idx = torch.tensor([2, 0, 0])
    cache.reorder(idx)
    assert len(cache) == 6 and cache.conv.shape == (3, 2, D)
    rest = torch.cat([m(x[idx, t: t + 1], positions=pos[t: t + 1], cache=cache) for t in range(6, 10)], dim=1)
    torch.testing.assert_close(rest, m(x[idx], positions=pos)[:, 6:], atol=1e-12, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("cached", [False, True])
def test_left_padding_matches_the_unpadded_row(cached, tiny_config, build):
    model = build(tiny_config(**{"model.layers.default.mixer": {"kind": "conv_attention", "kernel": 4}}),
                  double=True)
    pad = 5
    g = torch.Generator().manual_seed(2)
    short = torch.randint(0, 256, (11,), generator=g)
    ids = torch.cat([torch.full((pad,), 7), short])[None]
    mask = torch.cat([torch.zeros(pad, dtype=torch.bool), torch.ones(11, dtype=torch.bool)])[None]
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    ref = model(short[None]).logits[0]
    if not cached:
        out = model(ids, positions=positions, mask=mask).logits[0, pad:]
    else:
        cache = model.init_cache()
        out = [model(ids[:, :pad + 6], positions=positions[:, :pad + 6], mask=mask[:, :pad + 6],
                     cache=cache).logits[0, pad:]]
        for t in range(pad + 6, pad + 11):
            out.append(model(ids[:, t: t + 1], positions=positions[:, t: t + 1], mask=mask[:, : t + 1],
                             cache=cache).logits[0])
        out = torch.cat(out)
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=0)
    # without the mask the padding leaks in (so the mask is what works)
    assert not torch.allclose(model(ids, positions=positions).logits[0, pad:], ref)


def test_config_refuses_a_bad_kernel(tiny_config):
    with pytest.raises(ConfigError, match=r"^model.layers.default.mixer.kernel: must be ≥ 1, got 0$"):
        tiny_config(**{"model.layers.default.mixer": {"kind": "conv_attention", "kernel": 0}})
    with pytest.raises(ConfigError, match=r"combine: 'max' is not allowed; allowed: sum, gate"):
        tiny_config(**{"model.layers.default.mixer": {"kind": "conv_attention", "combine": "max"}})
