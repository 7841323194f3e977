"""The LM as a whole: loss scale, learning, model-level knobs, and generation options."""

from __future__ import annotations

import math

import pytest
import torch

from archlab.models import generate
from archlab.models.generation import filter_logits
from archlab.models.counting import count_parameters

V = 256


def make_ids(B: int = 2, T: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- loss scale


@pytest.mark.parametrize("double", [False, True])
def test_uniform_model_scores_eight_bits_per_byte(tiny_config, build, double):
    model = build(tiny_config(**{"model.tie_embeddings": False}), double=double)
    with torch.no_grad():
        model.head.weight.zero_()
    ids = make_ids(2, 32)
    targets = torch.roll(ids, -1, dims=1)
    with torch.no_grad():
        out = model(ids, targets=targets)
    assert torch.all(out.logits == 0)
    assert math.isclose(float(out.loss), math.log(256), rel_tol=1e-6)
    assert math.isclose(float(out.nll) / math.log(2), 8.0, rel_tol=1e-6)
    # a trained-looking (non-uniform) model does not land on 8 bits by construction
    other = build(tiny_config(**{"model.tie_embeddings": False, "model.init": "fixed", "model.init_std": 0.5}), double=double)
    with torch.no_grad():
        assert abs(float(other(ids, targets=targets).nll) / math.log(2) - 8.0) > 1e-3


def test_overfits_one_batch(tiny_config, build):
    torch.manual_seed(0)
    model = build(tiny_config()).train()
    text = b"the quick brown fox jumps over the lazy dog. 0123456789 pack my box with five dozen jugs!"
    data = torch.tensor(list(text[:66]), dtype=torch.long).view(2, 33)
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = model(x, targets=y).loss
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    with torch.no_grad():
        final = model(x, targets=y).loss.item()
    assert first > 4.0  # started near ln 256 ≈ 5.55
    assert final < 0.05, f"loss only fell from {first:.3f} to {final:.3f}"


# ----------------------------------------------------------------------------- model-level knobs


def test_model_knobs_change_the_model(tiny_config, build):
    base = build(tiny_config(), double=True)
    ids = make_ids()
    with torch.no_grad():
        ref = base(ids).logits
    names = set(dict(base.named_parameters()))

    # linear biases: new parameters (zero-initialised, so the output may match at init)
    biased = build(tiny_config(**{"model.bias": True}))
    assert set(dict(biased.named_parameters())) - names and biased.blocks[0].mixer.qkv.bias is not None

    # untied head: its own matrix, V·dim more parameters
    untied = build(tiny_config(**{"model.tie_embeddings": False}))
    assert untied.head.weight is not untied.embed.weight
    assert count_parameters(untied) == count_parameters(base) + V * 32
    assert base.head.weight is base.embed.weight

    # explicit head_dim: wider projections
    wide = build(tiny_config(**{"model.head_dim": 16}))
    assert wide.blocks[0].mixer.qkv.out_features == 3 * 4 * 16 and wide.blocks[0].mixer.out.in_features == 64

    # the init rule: the default std 1/sqrt(3 * fan_in) does not depend on init_std, which sets
    # the std of rule 'fixed'; each changes the initial weights and so the logits
    assert abs(float(base.embed.weight.detach().std()) - (3 * 32) ** -0.5) < 0.01
    assert abs(float(base.blocks[0].ffn.up.weight.detach().std()) - (3 * 32) ** -0.5) < 0.01
    same = build(tiny_config(**{"model.init_std": 0.1}), double=True)
    assert torch.equal(same.blocks[0].ffn.up.weight, base.blocks[0].ffn.up.weight)
    fixed = build(tiny_config(**{"model.init": "fixed"}), double=True)
    assert abs(float(fixed.blocks[0].ffn.up.weight.detach().std()) - 0.02) < 0.003
    hot = build(tiny_config(**{"model.init": "fixed", "model.init_std": 0.1}), double=True)
    assert hot.embed.weight.std() > 3 * fixed.embed.weight.std()
    with torch.no_grad():
        assert not torch.allclose(hot(ids).logits, ref)
        assert not torch.allclose(fixed(ids).logits, ref)

    # dropout acts in training mode only
    drop = build(tiny_config(**{"model.dropout": 0.3}), double=True)
    with torch.no_grad():
        torch.testing.assert_close(drop(ids).logits, ref, atol=1e-12, rtol=0)
        drop.train()
        torch.manual_seed(0)
        assert not torch.allclose(drop(ids).logits, ref)

    # max_seq_len sizes the learned table
    learned = build(tiny_config(**{"model.position.kind": "learned", "model.max_seq_len": 40}))
    assert learned.position.table.num_embeddings == 40


# ----------------------------------------------------------------------------- generation


@pytest.fixture
def lm(tiny_config, build):
    # a larger init makes the next-token distribution peaked enough that sampling and
    # greedy decoding are clearly distinguishable
    return build(tiny_config(**{"model.init": "fixed", "model.init_std": 0.3}), double=True)


def manual_greedy(model, ids, n):
    out = ids
    with torch.no_grad():
        for _ in range(n):
            out = torch.cat([out, model(out).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out


def test_greedy_is_deterministic_and_is_argmax(lm):
    ids = make_ids(2, 5)
    a = generate(lm, ids, max_new_tokens=10, temperature=0.0)
    b = generate(lm, ids, max_new_tokens=10, temperature=0.0)
    assert torch.equal(a, b)
    assert torch.equal(a, manual_greedy(lm, ids, 10))
    assert torch.equal(a[:, :5], ids)


def test_top_k_one_and_tiny_top_p_equal_greedy(lm):
    ids = make_ids(2, 5)
    greedy = generate(lm, ids, max_new_tokens=10, temperature=0.0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(lm, ids, max_new_tokens=10, temperature=1.0, top_k=1, generator=g), greedy)
    assert torch.equal(generate(lm, ids, max_new_tokens=10, temperature=1.0, top_p=1e-9, generator=g), greedy)
    # plain sampling at a high temperature does not (with overwhelming probability) follow greedy
    sampled = generate(lm, ids, max_new_tokens=10, temperature=2.0, generator=g)
    assert not torch.equal(sampled, greedy)


def test_sampling_reproducible_with_generator(lm):
    ids = make_ids(2, 5)

    def sample(seed, use_cache=True):
        return generate(lm, ids, max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.95,
                        generator=torch.Generator().manual_seed(seed), use_cache=use_cache)

    a, b, c = sample(123), sample(123), sample(124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(sample(123, use_cache=False), a)


def test_max_new_tokens_respected(lm):
    ids = make_ids(3, 4)
    for n in (0, 1, 7):
        assert generate(lm, ids, max_new_tokens=n, temperature=0.0).shape == (3, 4 + n)
    assert torch.equal(generate(lm, ids, max_new_tokens=0), ids)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(lm, ids, max_new_tokens=-1)


def _first_stop(row: list[int], prompt_len: int, stop: list[int]) -> int | None:
    """Length of the row at which ``stop`` first ends it, checked after each generated token."""
    for end in range(prompt_len + 1, len(row) + 1):
        if end >= len(stop) and row[end - len(stop): end] == stop:
            return end
    return None


def test_stop_sequence_ends_generation(lm):
    ids = make_ids(1, 4, seed=5)
    free = generate(lm, ids, max_new_tokens=12, temperature=0.0)[0].tolist()
    stop = free[4 + 5: 4 + 7]  # two tokens the model will produce at steps 6 and 7
    expected_len = _first_stop(free, 4, stop)
    assert expected_len is not None and expected_len < len(free)
    out = generate(lm, ids, max_new_tokens=12, temperature=0.0, stop=[stop])[0].tolist()
    assert len(out) == expected_len
    assert out[-len(stop):] == stop
    assert out == free[:expected_len]
    # a stop sequence that never occurs changes nothing
    never = [t for t in range(V) if t not in free][:1] * 3
    assert generate(lm, ids, max_new_tokens=12, temperature=0.0, stop=[never])[0].tolist() == free


def test_stop_pads_finished_rows_while_others_continue(lm):
    ids = torch.cat([make_ids(1, 4, seed=5), make_ids(1, 4, seed=6)])
    free = generate(lm, ids, max_new_tokens=10, temperature=0.0)
    stop = free[0, 4:6].tolist()  # row 0 stops after two new tokens
    if _first_stop(free[1].tolist(), 4, stop) is not None:
        pytest.skip("row 1 happens to produce the same stop sequence")
    out = generate(lm, ids, max_new_tokens=10, temperature=0.0, stop=[stop], pad_id=255)
    assert out.shape == free.shape  # row 1 never stops: runs to max_new_tokens
    assert torch.equal(out[1], free[1])
    assert torch.equal(out[0, :6], free[0, :6])
    assert torch.all(out[0, 6:] == 255)


def test_generate_restores_training_mode(lm):
    lm.train()
    generate(lm, make_ids(1, 3), max_new_tokens=2, temperature=0.0)
    assert lm.training


# ----------------------------------------------------------------------------- logit filters


def _kept(logits: torch.Tensor, **kw) -> set[int]:
    kept = torch.isfinite(filter_logits(logits, **kw)).reshape(-1, logits.shape[-1])
    assert kept.shape[0] == 1
    return set(torch.nonzero(kept[0]).flatten().tolist())


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3], dtype=torch.float64)
    logits = probs.log()
    assert _kept(logits, top_p=0.4) == {1}
    assert _kept(logits, top_p=0.75) == {1, 3}
    assert _kept(logits, top_p=0.85) == {1, 3, 2}
    assert _kept(logits, top_p=0.97) == {0, 1, 2, 3}
    assert _kept(logits, top_p=1.0) == {0, 1, 2, 3}
    # kept logits are unchanged, not renormalised here
    out = filter_logits(logits, top_p=0.75)
    assert torch.equal(out[[1, 3]], logits[[1, 3]])


def test_top_p_against_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        logits = torch.randn(2, 12, generator=g, dtype=torch.float64) * 2
        p = float(torch.rand(1, generator=g))
        got = filter_logits(logits, top_p=p)
        for row in range(2):
            probs = logits[row].softmax(-1)
            order = probs.argsort(descending=True).tolist()
            mass, want = 0.0, set()
            for i in order:  # smallest prefix of the sorted probabilities with mass ≥ p
                want.add(i)
                mass += float(probs[i])
                if mass >= p:
                    break
            if abs(mass - p) < 1e-9:
                continue  # a boundary tie: either answer is defensible
            assert set(torch.nonzero(torch.isfinite(got[row])).flatten().tolist()) == want


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert _kept(logits, top_k=2) == {1, 3}
    assert _kept(logits, top_k=1) == {1}
    assert _kept(logits, top_k=10) == set(range(5))
    assert _kept(logits, top_k=2, top_p=0.01) == {1}


# ----------------------------------------------------------------------------- the fast decoding path

FAST_CASES = [{}, {"model.position.kind": "learned"}, {"model.position.kind": "none"},
              {"model.position.kind": "sinusoidal"}, {"model.kv_heads": 2}, {"model.position.fraction": 0.5},
              {"model.layers.default.ffn.kind": "gelu", "model.layers.default.norm.kind": "layer", "model.bias": True},
              {"model.position.kind": "alibi"}, {"model.position.kind": "t5"}, {"model.position.kind": "relative"},
              {"model.position.kind": "dynamic", "model.kv_heads": 2},
              {"model.layers.overrides": {"1": {"position": {"kind": "alibi"}}}},
              {"model.layers.default.mixer": {"kind": "local", "window": 4}},
              {"model.layers.overrides": {"0": {"mixer": {"kind": "local", "window": 3}}}, "model.position.kind": "alibi"},
              {"model.layers.default.mixer": {"kind": "retention"}},
              {"model.layers.default.mixer": {"kind": "retention", "chunk_size": 2, "value_factor": 2},
               "model.layers.default.ffn.kind": "gelu", "model.layers.default.norm.kind": "layer", "model.bias": True},
              {"model.layers.default.mixer": {"kind": "retention"}, "model.position.kind": "none"},
              {"model.layers.default.mixer": {"kind": "retention", "gammas": [0.5, 0.7, 0.9, 0.99]},
               "model.layers.overrides": {"1": {"mixer": {"kind": "attention"}}}}]


@pytest.mark.parametrize("sets", FAST_CASES, ids=lambda s: ",".join(f"{k.split('.')[-1]}={v}" for k, v in s.items()) or "rope")
def test_fast_decoder_equals_generic_path(sets, tiny_config, build):
    """The lean decoding path gives the full forward's logits at every step (float64) and the
    same tokens as the generic cached path, greedy and sampled."""
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config(**sets), double=True)
    ids = torch.randint(0, 256, (3, 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fd = FastDecoder.build(model, batch=3, capacity=25, dtype=torch.float64, device=torch.device("cpu"))
        assert fd is not None
        seq = generate(model, ids, max_new_tokens=20, temperature=0.0)
        full = model(seq).logits
        steps = [fd.prefill(seq[:, :5])] + [fd.step(seq[:, t]) for t in range(5, seq.shape[1] - 1)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:-1], atol=1e-12, rtol=0)
    assert torch.equal(seq, generate(model, ids, max_new_tokens=20, temperature=0.0, fast_path=False))
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=20)
    a = generate(model, ids, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, ids, generator=torch.Generator().manual_seed(3), fast_path=False, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("sets", [{}, {"model.bias": True, "model.position.fraction": 0.5}, {"model.kv_heads": 2},
                                  {"model.position.kind": "learned"}], ids=["rope", "bias,partial", "gqa", "learned"])
def test_fast_decoder_column_blocks_at_batch_one(sets, parts, tiny_config, build):
    """At batch 1 the weights are split into column blocks multiplied as one batched product;
    the logits equal the full forward's at every step. A width the block count does not divide
    (3 blocks, mostly) keeps its weight whole, so both kinds mix in one model."""
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config(**sets), double=True)
    ids = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fd = FastDecoder.build(model, batch=1, capacity=16, dtype=torch.float64, device=torch.device("cpu"),
                               parts=parts)
        assert fd is not None
        for L, b in zip(fd.layers, model.blocks):
            for w, lin in zip((L.wqkv, L.wo, L.w_up, L.w_down), (b.mixer.qkv, b.mixer.out, b.ffn.up, b.ffn.down)):
                split = lin.out_features % parts == 0
                assert w.shape == ((parts, lin.in_features, lin.out_features // parts) if split
                                   else (lin.in_features, lin.out_features))
        seq = generate(model, ids, max_new_tokens=12, temperature=0.0, fast_path=False)
        full = model(seq).logits
        steps = [fd.prefill(seq[:, :4])] + [fd.step(seq[:, t]) for t in range(4, seq.shape[1] - 1)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:-1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("parts", [2, 3])
def test_fast_retention_decoder_at_batch_one(parts, tiny_config, build):
    """A RetNet/attention hybrid at batch 1 with column-block weights: the lean path's logits
    equal the full forward's at every step."""
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config(**{"model.layers.default.mixer": {"kind": "retention"}, "model.bias": True,
                                 "model.layers.overrides": {"0": {"mixer": {"kind": "attention"}}}}), double=True)
    ids = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fd = FastDecoder.build(model, batch=1, capacity=16, dtype=torch.float64, device=torch.device("cpu"),
                               parts=parts)
        assert fd is not None and fd.layers[1].S is not None and fd.layers[0].S is None
        seq = generate(model, ids, max_new_tokens=12, temperature=0.0, fast_path=False)
        full = model(seq).logits
        steps = [fd.prefill(seq[:, :4])] + [fd.step(seq[:, t]) for t in range(4, seq.shape[1] - 1)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:-1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("sets", [{"model.position.kind": "cope"}, {"model.position.kind": "givens_rope"},
                                  {"model.layers.default.norm.placement": "post"},
                                  {"model.layers.default.mixer": {"kind": "local", "window": 4, "global_heads": 1}},
                                  {"model.layers.default.mixer": {"kind": "local", "window": 4, "global_tokens": 2}}])
def test_fast_decoder_declines_what_it_does_not_reproduce(sets, tiny_config, build):
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config(**sets), double=True)
    assert FastDecoder.build(model, batch=1, capacity=8, dtype=torch.float64, device=torch.device("cpu")) is None


def test_fast_decoder_checks_the_rotation_against_the_scheme(tiny_config, build, monkeypatch):
    """A rotary scheme whose rotate() no longer matches its cos/sin tables (as a subclass with
    another formula would) is detected by the probe, and decoding falls back."""
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config(), double=True)
    pos = model.position
    real = pos.rotate
    monkeypatch.setattr(pos, "rotate", lambda q, k, qp, kp: tuple(t * 1.01 for t in real(q, k, qp, kp)))
    assert FastDecoder.build(model, batch=1, capacity=8, dtype=torch.float64, device=torch.device("cpu")) is None
    monkeypatch.undo()
    assert FastDecoder.build(model, batch=1, capacity=8, dtype=torch.float64, device=torch.device("cpu")) is not None


def test_low_precision_rope_model_decodes_through_the_generic_path(tiny_config, build):
    """bfloat16 has no complex dtype for the fast path's rotation: such a model is declined
    and generate() still works, through the generic path."""
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config()).to(torch.bfloat16)
    assert FastDecoder.build(model, batch=1, capacity=8, dtype=torch.bfloat16, device=torch.device("cpu")) is None
    ids = torch.tensor([[1, 2, 3]])
    out = generate(model, ids, max_new_tokens=5, temperature=0.0)
    assert torch.equal(out, generate(model, ids, max_new_tokens=5, temperature=0.0, fast_path=False))


def test_fast_decoder_refuses_to_overflow(tiny_config, build):
    from archlab.models.fastdecode import FastDecoder

    model = build(tiny_config())
    with torch.inference_mode():
        fd = FastDecoder.build(model, batch=1, capacity=3, dtype=torch.float32, device=torch.device("cpu"))
        fd.prefill(torch.tensor([[1, 2]]))
        fd.step(torch.tensor([3]))
        with pytest.raises(ValueError, match="full"):
            fd.step(torch.tensor([4]))
