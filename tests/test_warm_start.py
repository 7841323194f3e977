"""Warm starts (train.warm_start) and the SAFU-style model (family safu): the properties an
outsider would check, on tiny problems."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from archlab.config import load_config
from archlab.models import build_model
from archlab.nn import warm as W
from archlab.registry import ConfigError
from archlab.train.warm import warm_start

TINY = ["model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=64", "train.seq_len=32",
        "train.batch=4", "train.steps=4", "model.tie_embeddings=false"]


def corpus(n: int = 6000, seed: int = 0) -> np.ndarray:
    """Bytes from a skewed bigram chain, so frequencies and transitions are far from uniform."""
    rng = np.random.default_rng(seed)
    V = 40
    P = rng.dirichlet(np.full(V, 0.3), size=V)
    out = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        out[i] = rng.choice(V, p=P[out[i - 1]])
    return out


def cfg_with(*sets: str):
    return load_config(None, [*TINY, *sets])


# ----------------------------------------------------------------------------- bit cipher


def test_codes_are_handed_out_by_frequency_then_number_of_bits():
    counts = np.array([5, 100, 1, 50])
    codes = W.bit_cipher(counts)  # V = 4: b = ⌊log2 4⌋ + 1 = 3
    assert codes.shape == (4, 3)
    expect = torch.tensor([[0, 0, 1.0], [1.0, 0, 0], [0.5, 0.5, 0], [0, 1.0, 0]], dtype=torch.float64)
    assert torch.equal(codes, expect)  # ranks: 1, 3, 0 one-hot (bits 0, 1, 2), then 2 two-hot {0, 1}


def test_one_hot_tier_is_orthogonal_and_bits_never_decrease_with_rank():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 1000, 300)
    codes = W.bit_cipher(counts)
    b = W.default_width(300)
    assert b == 9 and 2 ** b > 300 and 2 ** (b - 1) <= 300
    order = W.frequency_order(counts)
    ranked = codes[torch.as_tensor(order)]
    top = ranked[:b]
    assert torch.equal(top @ top.T, torch.eye(b, dtype=torch.float64))
    bits = (ranked > 0).sum(1)
    assert bool((bits[1:] >= bits[:-1]).all())
    assert torch.allclose(codes.sum(1), torch.ones(300, dtype=torch.float64))
    assert len({tuple((r > 0).tolist()) for r in codes}) == 300  # all distinct


def test_width_is_raised_until_every_token_has_a_code():
    assert W.default_width(7) == 3 and W.default_width(8) == 4  # 3 bits: 7 non-zero codes
    W.code_patterns(7, 3)
    with pytest.raises(ValueError, match="width ≥ 4"):
        W.code_patterns(8, 3)


@pytest.mark.parametrize("V", [256, 1024])
def test_decode_inverts_encode(V):
    counts = np.random.default_rng(V).integers(0, 50, V)
    codes = W.bit_cipher(counts)
    ids = torch.arange(V)
    assert torch.equal(W.decode(codes[ids], codes), ids)
    # a plain dot product would tie a two-hot code with its one-hot parts: cosine does not
    two = int((codes > 0).sum(1).eq(2).nonzero()[0])
    assert W.decode(codes[two], codes) == two


# ----------------------------------------------------------------------------- co-occurrence


def test_cooccurrence_counts_on_a_hand_made_corpus():
    tokens = np.array([0, 1, 2, 0, 1])
    codes = torch.eye(3, dtype=torch.float64)
    vec = W.cooccurrence(tokens, codes, radius=1, combine="concat")
    # type 0 at positions 0 and 3: before it only token 2 (position 2); after it 1 and 1
    raw0 = torch.tensor([0, 0, 1, 0, 2, 0], dtype=torch.float64)
    assert torch.allclose(vec[0], raw0 / raw0.norm())
    # type 2 at position 2: before it 1, after it 0
    raw2 = torch.tensor([0, 1, 0, 1, 0, 0], dtype=torch.float64)
    assert torch.allclose(vec[2], raw2 / raw2.norm())
    summed = W.cooccurrence(tokens, codes, radius=1, combine="sum")
    assert torch.allclose(summed[0], torch.tensor([0, 2, 1.0], dtype=torch.float64) / math.sqrt(5))
    far = W.cooccurrence(tokens, codes, radius=2, combine="concat")  # offsets -2, -1, 1, 2
    assert far.shape == (3, 12)
    raw = torch.tensor([0, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 1], dtype=torch.float64)  # type 0: -2:{1} -1:{2} 1:{1,1} 2:{2}
    assert torch.allclose(far[0], raw / raw.norm())


# ----------------------------------------------------------------------------- closed form


def _nll(W_: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(inputs @ W_, targets))


def test_closed_form_with_one_hot_inputs_is_the_maximum_likelihood_softmax_layer():
    torch.manual_seed(0)
    n_in, n_out, N = 6, 5, 4000
    cond = torch.distributions.Dirichlet(torch.ones(n_out)).sample((n_in,))
    i = torch.randint(0, n_in, (N,))
    j = torch.multinomial(cond[i], 1).squeeze(1)
    x = F.one_hot(i, n_in).double()
    y = F.one_hot(j, n_out).double()
    Wc = W.closed_form(x.T @ y, K=1.0)
    empirical = (x.T @ y) / (x.T @ y).sum(1, keepdim=True)
    assert torch.allclose(torch.softmax(Wc, 1), empirical)
    # the gradient of the NLL vanishes there, and every perturbation costs likelihood
    Wg = Wc.clone().requires_grad_(True)
    F.cross_entropy(x @ Wg, j).backward()
    assert float(Wg.grad.abs().max()) < 1e-10
    best = _nll(Wc, x, j)
    for s in range(20):
        g = torch.Generator().manual_seed(s)
        worse = _nll(Wc + 0.05 * torch.randn(Wc.shape, generator=g, dtype=torch.float64), x, j)
        assert worse > best


def test_closed_form_formula_for_larger_contexts():
    Fm = torch.tensor([[3.0, 1.0], [1.0, 5.0]], dtype=torch.float64)
    K = 3.0
    cond = Fm / Fm.sum(1, keepdim=True)
    marg = Fm.sum(0) / Fm.sum()
    assert torch.allclose(W.closed_form(Fm, K=K), cond.log() - (2 / 3) * marg.log())
    assert torch.allclose(W.closed_form(Fm, smoothing=1.0), ((Fm + 1) / (Fm + 1).sum(1, keepdim=True)).log())
    with pytest.raises(ValueError, match="K"):
        W.closed_form(Fm, K=0.5)


def test_to_width_keeps_inner_products_and_reduces_by_svd():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(10, 4, dtype=torch.float64, generator=g)
    out = W.to_width(t, 16, g)
    assert out.shape == (10, 16) and torch.allclose(out @ out.T, t @ t.T)
    wide = torch.rand(10, 30, dtype=torch.float64, generator=g)
    red = W.to_width(wide, 8, g)
    u, s, vh = torch.linalg.svd(wide, full_matrices=False)
    assert torch.allclose(red @ red.T, (u[:, :8] * s[:8]) @ (u[:, :8] * s[:8]).T)


# ----------------------------------------------------------------------------- on models


def _loss(model, tokens: np.ndarray, T: int = 32) -> float:
    n = (len(tokens) - 1) // T * T
    x = torch.as_tensor(tokens[:n]).view(-1, T)
    y = torch.as_tensor(tokens[1:n + 1]).view(-1, T)
    with torch.no_grad():
        return float(model(x, targets=y).nll)


def _bigram_entropy(tokens: np.ndarray, V: int, smoothing: float = 0.5) -> float:
    N = np.zeros((V, V))
    np.add.at(N, (tokens[:-1], tokens[1:]), 1)
    P = (N + smoothing) / (N + smoothing).sum(1, keepdims=True)
    return float(-np.log(P[tokens[:-1], tokens[1:]]).mean())


def test_closed_form_head_makes_the_initial_lm_a_bigram_model():
    tokens = corpus()
    cfg = cfg_with("train.warm_start={tokens: 6000, parts: [closed_form]}", "model.dim=64", "model.heads=4")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    cold = _loss(model, tokens)
    info = warm_start(model, cfg, tokens)
    warm = _loss(model, tokens)
    bigram = _bigram_entropy(tokens, cfg.model.vocab_size)
    assert info["tokens"] == 6000 and info["seconds"] >= 0
    assert cold > math.log(40) and warm < cold - 0.8 and warm > bigram
    # With blocks that add nothing (their residual outputs zeroed) the head's input is the normed
    # embedding of the current token, which the read-out decodes exactly: the bigram model itself.
    cfg = cfg_with("train.warm_start={tokens: 6000, parts: [{kind: closed_form, ridge: 1.0e-4}]}", "model.dim=64")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and getattr(mod, "residual_out", False):
                mod.weight.zero_()
    warm_start(model, cfg, tokens)
    assert abs(_loss(model, tokens) - bigram) < 0.02


def test_hierarchical_family_takes_the_same_warm_starts():
    tokens = corpus()
    cfg = load_config("configs/hierarchical.yaml", ["model.dim=32", "model.depth=2", "model.heads=4",
                                                    "model.tie_embeddings=false", "train.steps=2",
                                                    "train.warm_start={tokens: 6000, parts: [cooccurrence, closed_form]}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    cold = _loss(model, tokens)
    warm_start(model, cfg, tokens)
    assert _loss(model, tokens) < cold - 0.8


def test_bit_cipher_embedding_keeps_the_code_geometry_and_can_be_fixed():
    tokens = corpus()
    cfg = cfg_with("train.warm_start={tokens: 6000, parts: [{kind: bit_cipher, width: 12, train: false}]}")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    drawn = model.embed.weight.detach().norm(dim=1).mean()
    warm_start(model, cfg, tokens)
    E = model.embed.weight.detach().double()
    codes = W.bit_cipher(W.token_counts(tokens, cfg.model.vocab_size), 12)
    G = codes @ codes.T
    scale = (E @ E.T)[0, 0] / G[0, 0]
    assert torch.allclose(E @ E.T, scale * G, atol=1e-5)  # inner products of the codes, up to one scale
    assert abs(float(E.norm(dim=1).mean() - drawn)) < 1e-4  # the scale model.init drew
    assert not model.embed.weight.requires_grad
    from archlab.train.optim import param_groups

    assert all(p is not model.embed.weight for g in param_groups(model, 0.1) for p in g["params"])


def test_warm_start_is_a_pure_function_of_tokens_and_seed():
    tokens = corpus()
    cfg = cfg_with("train.warm_start={tokens: 3000, parts: [cooccurrence, closed_form]}")
    out = []
    for init_seed in (0, 1):  # different random init underneath: the embedding is overwritten the same way
        torch.manual_seed(init_seed)
        m = build_model(cfg.model)
        warm_start(m, cfg, tokens)
        out.append(m.embed.weight.detach().clone())
    assert torch.allclose(out[0] / out[0].norm(), out[1] / out[1].norm(), atol=1e-6)
    other = cfg_with("train.warm_start={tokens: 3000, parts: [cooccurrence]}", "train.seed=5")
    m = build_model(other.model)
    warm_start(m, other, tokens)
    assert not torch.allclose(m.embed.weight.detach(), out[0], atol=1e-3)  # another seed: another projection


@pytest.mark.parametrize("sets, needle", [
    (["model.tie_embeddings=true", "train.warm_start={parts: [closed_form]}"], "tie_embeddings=false"),
    (["train.warm_start={parts: [bit_cipher, cooccurrence]}"], "already set"),
    (["train.warm_start={parts: [bit_cipher, bit_cipher]}"], "second 'bit_cipher'"),
    (["train.warm_start={parts: [{kind: bit_cipher, width: 7}]}"], r"width: 7 bits give 127"),
    (["train.warm_start={parts: [{kind: closed_form, layers: [ffn]}]}"], "not a softmax layer"),
    (["train.warm_start={tokens: 0, parts: [bit_cipher]}"], "tokens"),
    (["model.tie_embeddings=true", "train.warm_start={parts: [{kind: bit_cipher, train: false}]}"], "fix the head"),
    (["data.corpus=task", "data.task.kind=counting", "train.warm_start={parts: [bit_cipher]}"], "text corpus"),
    (["model.family=echo", "model.tie_embeddings=true", "data.corpus=speech", "train.warm_start={parts: [bit_cipher]}"],
     "no warm starts"),
    (["model.family=safu", "model.depth=4", "train.warm_start={parts: [{kind: cooccurrence, radius: 4}]}"],
     "do not fit"),
    (["train.eval_at=[-1]"], "train.eval_at"),
])
def test_refusals_name_the_key(sets, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [*TINY, *sets])


def test_trainer_records_the_statistics_pass_and_the_curve_from_step_zero(tmp_path):
    from archlab.train import Trainer

    cfg = cfg_with("train.warm_start={tokens: 4096, parts: [closed_form]}", "train.eval_at=[0, 2]",
                   "train.eval_every=100", "train.eval_tokens=512")
    summary = Trainer(cfg, tmp_path / "run", progress=False, quiet=True).fit()
    assert summary["warm_start_tokens"] == 4096 and summary["warm_start_seconds"] > 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in records if r.get("event") == "warm_start"]
    assert warm and warm[0]["warm_tokens"] == 4096
    evals = [r["step"] for r in records if "val_loss" in r]
    assert evals[:2] == [0, 2] and evals[-1] == 4
    assert next(r for r in records if r.get("step") == 0 and "val_loss" in r)["elapsed"] >= warm[0]["warm_seconds"]
    # a resumed run keeps what the pass did (and does not run it again)
    cfg2 = load_config(None, [*TINY, "train.steps=6", "train.warm_start={tokens: 4096, parts: [closed_form]}",
                              "train.eval_at=[0, 2]", "train.eval_every=100", "train.eval_tokens=512"])
    t2 = Trainer(cfg2, tmp_path / "run", resume=True, progress=False, quiet=True)
    assert t2.warm is not None and t2.warm["tokens"] == 4096
    assert t2.fit()["warm_start_tokens"] == 4096


# ----------------------------------------------------------------------------- SAFU


def safu(*sets: str, dtype=torch.float64):
    cfg = load_config(None, [*TINY, "model.family=safu", "model.depth=4", "model.dim=24",
                             "model.family_options={block: 4, radius: 3}", *sets])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dtype)
    with torch.no_grad():  # move off the identity slot matrices and zero biases, so every path matters
        for p in model.parameters():
            if p is not model.embed.weight:
                p.add_(0.3 * torch.randn_like(p))
    return cfg, model


def test_safu_is_causal():
    _, model = safu()
    ids = torch.randint(0, 40, (2, 20))
    base = model(ids).logits
    for t in (0, 7, 13, 18):
        other = ids.clone()
        other[:, t + 1:] = torch.randint(0, 40, other[:, t + 1:].shape)
        out = model(other).logits
        assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-12)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_safu_cached_decoding_equals_the_full_forward():
    _, model = safu()
    ids = torch.randint(0, 40, (2, 19))
    full = model(ids).logits
    cache = model.init_cache()
    steps = [model(ids[:, :5], cache=cache).logits]
    for t in range(5, 19):
        steps.append(model(ids[:, t:t + 1], cache=cache).logits)
    assert cache.offset == 19 and cache.tail.shape[1] == max(4, 3) - 1
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10)


def test_safu_similarity_cache_equals_the_quadratic_document_read():
    _, model = safu()
    with torch.no_grad():
        model.embed.weight.mul_(3.0)  # sharper similarities: the stabilised exponent must still agree
    ids = torch.randint(0, 40, (3, 25))
    quadratic = model(ids).logits
    model.embed.weight.requires_grad_(False)  # frozen: the type-count form
    assert model.uses_similarity_cache
    counted = model(ids).logits
    assert torch.allclose(counted, quadratic, atol=1e-10)


def test_safu_reads_do_what_they_say():
    _, model = safu()
    ids = torch.randint(0, 40, (1, 12))
    E = model.embed.weight
    c_block, c_radial, c_doc = model.reads(ids)
    x = E[ids[0]]
    t = 9  # block of 4: positions 8, 9 visible; radial 3: positions 7, 8, 9
    s = x[8:10] @ x[t]
    a = torch.softmax(s @ model.mix_block[:2, :2], 0)
    assert torch.allclose(c_block[0, t], a @ x[8:10])
    s = torch.stack([x[t] @ x[t - o] for o in range(3)])
    a = torch.softmax(s @ model.mix_radial, 0)
    assert torch.allclose(c_radial[0, t], a @ torch.stack([x[t - o] for o in range(3)]))
    a = torch.softmax(x[:t + 1] @ x[t] / model.temperature, 0)
    assert torch.allclose(c_doc[0, t], a @ x[:t + 1])


def test_safu_gradients_reach_every_trainable_parameter():
    _, model = safu()
    ids = torch.randint(0, 40, (2, 16))
    model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    _, frozen = safu("model.family_options={block: 4, radius: 3, freeze_embeddings: true}")
    assert not frozen.embed.weight.requires_grad


def test_safu_closed_form_warm_start_layer_by_layer_lowers_the_loss():
    tokens = corpus()
    cfg, model = safu("train.warm_start={tokens: 6000, parts: [bit_cipher, closed_form]}", dtype=torch.float32)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    cold = _loss(model, tokens)
    info = warm_start(model, cfg, tokens)
    warm = _loss(model, tokens)
    assert warm < cold - 1.0
    K = info["parts"]["closed_form"]
    assert abs(K["output_K"] - 3.0) < 1e-6  # three hidden distributions, each summing to 1
    assert all(abs(k - 1.0) < 1e-6 for k in K["hidden_K"])  # each read is a convex combination of codes
    assert float(model.embed.weight.min()) >= 0  # the codes stay as they are (no projection)


def test_safu_refuses_what_it_does_not_use():
    for sets, needle in ((["model.depth=2"], "model.depth"), (["model.tie_embeddings=true"], "tie_embeddings"),
                         (["model.position.kind=alibi"], "model.position"),
                         (["model.family_options={width: 5}"], "width")):
        with pytest.raises(ConfigError, match=needle):
            load_config(None, [*TINY, "model.family=safu", "model.depth=4", *sets])


def test_experiment_fractions_name_early_metrics_and_evaluation_steps(tmp_path):
    from archlab.lab.experiment import load_experiment

    path = tmp_path / "e.yaml"
    path.write_text("base: null\noverrides: {model.dim: 32, model.depth: 2, train.seq_len: 32, train.batch: 4}\n"
                    "budget: {steps: 200}\nseeds: [0]\nbaseline: a\n"
                    "eval: {fractions: [0.01, 0.1]}\nalso: [bpb@10%]\nvariants: {a: {}}\n")
    exp = load_experiment(path)
    assert exp.metric_names()[-4:] == ["loss@1%", "bpb@1%", "loss@10%", "bpb@10%"]
    assert exp.config_for("a", 0).train.eval_at == [0, 2, 20]
    path.write_text(path.read_text().replace("fractions: [0.01, 0.1]", "fractions: [1.5]"))
    with pytest.raises(ConfigError, match="eval.fractions"):
        load_experiment(path)


def test_info_names_the_warm_start():
    from archlab.lab.info import facts

    cfg = cfg_with("train.warm_start={tokens: 5000, parts: [cooccurrence, closed_form]}")
    assert any(line.startswith("warm start:") and "5,000" in line and "cooccurrence, closed_form" in line
               for line in facts(cfg))
    assert not any(line.startswith("warm start:") for line in facts(cfg_with()))
