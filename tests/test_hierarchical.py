"""The hierarchical family: causality of every stream (by perturbation), cached decoding equal
to recomputation, the flash/explicit attention switch, argument handling, the config path,
training through the Trainer, and the flat case equal to the plain LM."""

from __future__ import annotations

import json

import pytest
import torch

import archlab.nn.hierarchy as hierarchy
import archlab.nn.mixers.local as local_mixer
from archlab.config import load_config
from archlab.models import generate
from archlab.models.hierarchical import HierarchicalLM, HierarchicalTransformer
from archlab.registry import ConfigError

V = 64

# name -> keyword arguments; together they cover strides 1 and > 1 (with axial groups), windows
# None / int / 0 / auto, every compressor, merging into the prediction stream or into all.
CONFIGS = {
    "flat": dict(hierarchies=1, window_sizes=None),
    "flat_local": dict(hierarchies=1, window_sizes=5),
    "h12": dict(hierarchies=(1, 2)),
    "h14_strided": dict(hierarchies=(1, 4), hierarchical_stride=(1, 4), window_sizes=(6, None)),
    "h128_mixed": dict(hierarchies=(1, 2, 8), hierarchical_stride=(1, 1, 4), window_sizes=(4, None, 0)),
    "h14_axial_local": dict(hierarchies=(1, 4), hierarchical_stride=(1, 2), window_sizes=(None, 3)),
    "attn_pool": dict(hierarchies=(1, 2, 4), hierarchical_stride=(1, 2, 2), compressor="attn", window_sizes=(5, 3, None)),
    "vq": dict(hierarchies=(1, 4), hierarchical_stride=(1, 2), compressor="vq", vq_codes=16, vq_dim=8),
    "merge_all": dict(hierarchies=(1, 2, 4), hierarchical_stride=(1, 2, 2), merge_all=True, window_sizes=(None, 4, None)),
    "merge_all_stride1": dict(hierarchies=(1, 4), merge_all=True, compressor="attn"),
    "explicit": dict(hierarchies=(1, 2, 4), hierarchical_stride=(1, 1, 4), use_flash_attn=False, window_sizes=(5, None, None)),
    "no_shift_swiglu": dict(hierarchies=(1, 2), token_shift=False, ffn="swiglu", dim=(16, 24), heads=(2, 3)),
    # positional schemes from the registry, at the streams' axial positions (full and local windows)
    "alibi_axial_local": dict(hierarchies=(1, 4), hierarchical_stride=(1, 2), window_sizes=(5, 3), position="alibi"),
    "t5_strided": dict(hierarchies=(1, 4), hierarchical_stride=(1, 4), window_sizes=(6, None), position="t5"),
    "cope_local": dict(hierarchies=(1, 2), window_sizes=(5, None), position="cope"),
    "givens_rope": dict(hierarchies=(1, 2), position={"kind": "givens_rope", "rounds": 1}),
    "nope": dict(hierarchies=(1, 2), position="none"),
}


def make(name_or_kw, *, seed: int = 0, double: bool = True, **extra) -> HierarchicalTransformer:
    kw = dict(CONFIGS[name_or_kw]) if isinstance(name_or_kw, str) else dict(name_or_kw)
    kw = {"num_tokens": V, "dim": 16, "depth": 2, "heads": 2, "seq_len": 32, "ff_mult": 2, **kw, **extra}
    torch.manual_seed(seed)
    model = HierarchicalTransformer(**kw).eval()
    return model.double() if double else model


def ids_for(B: int = 2, T: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_causal(model: HierarchicalLM, ids: torch.Tensor) -> None:
    """Changing the token at p must leave every prediction of a token at index ≤ p unchanged
    (in every stream), and must change the fine prediction at p (so the check can fail)."""
    base = model.stream_predictions(ids)
    for p in range(ids.shape[1]):
        other = ids.clone()
        other[:, p] = (other[:, p] + 1 + p) % V
        pert = model.stream_predictions(other)
        for h, ((a, tgt), (b, _)) in enumerate(zip(base, pert)):
            blind = tgt <= p  # predictions of tokens at or before p never saw position p
            assert torch.equal(a[:, blind], b[:, blind]), f"stream {h}: position {p} leaked into earlier predictions"
        assert not torch.equal(base[0][0][:, p], pert[0][0][:, p]), f"position {p} does not reach its own output"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_by_perturbation(name):
    model = make(name)
    assert_causal(model, ids_for())
    assert len(model.stream_predictions(ids_for())) == len(model.levels)  # every stream predicts


def test_perturbation_check_catches_a_leak(monkeypatch):
    """A strided stream read one token early (its window ends after the fine position) must fail."""
    real = hierarchy.expand_to_fine

    def early(z, *, stride, i0, n, j0, last):
        if stride == 1:
            return z
        idx = (torch.arange(i0, i0 + n) // stride + 1).clamp(max=z.shape[1] - 1)
        return z.index_select(1, idx)

    monkeypatch.setattr(hierarchy, "expand_to_fine", early)
    with pytest.raises(AssertionError, match="leaked"):
        assert_causal(make("h14_strided"), ids_for())
    monkeypatch.setattr(hierarchy, "expand_to_fine", real)


def run_cached(model, ids, chunks):
    cache, outs, t = model.init_cache(), [], 0
    for c in chunks:
        outs.append(model(ids[:, t:t + c], cache=cache).logits)
        t += c
    assert t == ids.shape[1] and cache.offset == t
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cache_equals_recompute(name):
    model = make(name)
    ids = ids_for(T=29)
    full = model(ids).logits
    with torch.no_grad():
        step, _ = run_cached(model, ids, [1] * 29)
        chunked, _ = run_cached(model, ids, [3, 1, 5, 2, 7, 1, 10])
    torch.testing.assert_close(step, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-10)


def test_local_caches_are_bounded():
    model = make("h14_axial_local")  # fine stream: full attention; x4 stream: window 3, two axial groups
    with torch.no_grad():
        _, cache = run_cached(model, ids_for(T=40), [1] * 40)
    for row in cache.states:
        assert len(row[0].kv[0]) == 40  # full attention keeps everything
        assert all(kv.stored <= 2 for kv in row[1].kv)  # window 3: the two previous keys suffice


def test_generate_cached_equals_uncached(tiny_config, build):
    cfg = tiny_config("model.family=hierarchical", "model.family_options.hierarchies=[1,2,4]",
                      "model.family_options.hierarchical_stride=[1,1,2]", "model.family_options.window_sizes=[6,null,3]")
    model = build(cfg, double=True)
    prompt = ids_for(B=2, T=5)
    a = generate(model, prompt, max_new_tokens=12, temperature=0.0, use_cache=True)
    b = generate(model, prompt, max_new_tokens=12, temperature=0.0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 17)
    api = make("h14_strided")
    assert torch.equal(api.generate(prompt, 6, temperature=0.0), generate(api, prompt, max_new_tokens=6, temperature=0.0))


# ----------------------------------------------------------------------------- the attention switch


@pytest.mark.parametrize("windows, position", [(None, None), (4, None), ((3, None), None), ((4, 3), "alibi"),
                                               ((None, 3), "t5")])
def test_flash_and_explicit_agree(windows, position):
    kw = dict(hierarchies=(1, 4), hierarchical_stride=(1, 2), window_sizes=windows, position=position)
    fused, explicit = make(kw, use_flash_attn=True), make(kw, use_flash_attn=False)
    explicit.load_state_dict(fused.state_dict())
    ids = ids_for(T=21)
    torch.testing.assert_close(fused(ids).logits, explicit(ids).logits, rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(run_cached(fused, ids, [4, 1, 16])[0], run_cached(explicit, ids, [4, 1, 16])[0],
                                   rtol=0, atol=1e-10)


def test_flash_flag_selects_the_kernel(monkeypatch):
    calls = {"sdpa": 0, "swa": 0}
    real = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **k):
        calls["sdpa"] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    swa = local_mixer.sliding_window_attention

    def counting_swa(*a, **k):
        calls["swa"] += 1
        return swa(*a, **k)

    monkeypatch.setattr(local_mixer, "sliding_window_attention", counting_swa)
    ids = ids_for()
    make("explicit", use_flash_attn=False)(ids)
    make("h14_axial_local", use_flash_attn=False)(ids)
    assert calls == {"sdpa": 0, "swa": 0}
    make("h14_axial_local", use_flash_attn=True)(ids)
    assert calls["swa"] == 2  # the x4 stream's local window 3 < its axial length 6, in two layers
    assert calls["sdpa"] >= 2  # the fine stream's full attention (and whatever the local kernel uses)


# ----------------------------------------------------------------------------- arguments


def test_scalars_broadcast_and_auto_windows():
    m = make({"hierarchies": (1, 2, 8), "hierarchical_stride": (1, 2, 4)}, seq_len=64, dim=16, heads=2)
    assert [lv.dim for lv in m.levels] == [16, 16, 16] and [lv.heads for lv in m.levels] == [2, 2, 2]
    assert [lv.window for lv in m.levels] == [32, 16, 4]  # half of seq_len / factor
    assert [lv.axial for lv in m.levels] == [1, 1, 2]
    t = make({"hierarchies": (1, 2)}, dim=(16, 32), heads=(2, 4), dim_head=(8, 4), ff_mult=(2, 3), window_sizes=(None, 0))
    assert [(lv.dim, lv.heads, lv.dim_head, lv.ff_mult, lv.window) for lv in t.levels] == [
        (16, 2, 8, 2.0, None), (32, 4, 4, 3.0, 0)]
    assert t.layers[0][1].attn is None and type(t.layers[0][0].attn).__name__ == "Attention"  # full, not local
    assert [blk.attn.window for blk in m.layers[0]] == [32, 16, 4]  # the local mixer got each stream's window
    assert t.embed.weight.shape == (V, 32)  # the embedding is as wide as the widest stream


@pytest.mark.parametrize("kw, match", [
    (dict(hierarchies=(1, 2), dim=(16, 16, 16)), r"^dim: 3 values for 2 hierarchies \[1, 2\]"),
    (dict(hierarchies=(1, 2, 4), heads=(2, 2)), r"^heads: 2 values for 3 hierarchies"),
    (dict(hierarchies=(1, 2), window_sizes=(4, 4, 4)), r"^window_sizes: 3 values"),
    (dict(hierarchies=(1, 2), ff_mult=(2,)), r"^ff_mult: 1 values"),
    (dict(hierarchies=(1, 4), hierarchical_stride=(1, 3)), r"^hierarchical_stride\[1\]: stride 3 must divide"),
    (dict(hierarchies=(2, 4)), r"^hierarchies: must start with 1"),
    (dict(hierarchies=(1, 4, 2)), r"^hierarchies: must start with 1 .* increase strictly"),
    (dict(hierarchies=(1, 2), window_sizes=(4, -1)), r"^window_sizes\[1\]: expected an integer ≥ 0"),
    (dict(hierarchies=(1, 2), compressor="mean"), r"^compressor: 'mean' is not allowed; allowed: attn, conv, vq"),
    (dict(hierarchies=1, dim=18, heads=4), r"^heads\[0\]: 4 heads do not divide width 18"),
    (dict(hierarchies=(1, 2), dim=(16, 32), tie_embeddings=True), r"^tie_embeddings: the head"),
])
def test_bad_arguments_are_one_line_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        make(kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sets, match", [
    (["model.family_options.hierarchies=[1,2]", "model.family_options.dims=[32,48,64]"],
     r"^model.family_options.dims: 3 values for 2 hierarchies"),
    (["model.family_options.windows=8"], r"^model.family_options.windows: unknown key for kind 'hierarchical'"),
    (["model.family_options.hierarchies=[1,2]", "model.family_options.dims=[32,64]"], r"^model.tie_embeddings: "),
    (["model.position.kind=learned"], r"^model.position.kind: 'learned' adds to the embeddings, which the streams"),
    (["model.layers.overrides={'0': {ffn: {kind: gelu}}}"], r"^model.layers.overrides: not used by family"),
    (["model.family_options.compressor=pool"], r"^model.family_options.compressor: 'pool' is not allowed"),
    (["model.bias=true"], r"^model.bias: biases in linear layers are not supported"),
    (["model.kv_heads=2"], r"^model.kv_heads: grouped-query attention is not supported"),
    (["model.family_options.kind=lm"], r"^model.family_options.kind: not an option"),
])
def test_config_errors(tiny_config, sets, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config("model.family=hierarchical", *sets)


def test_lm_family_takes_no_options(tiny_config):
    with pytest.raises(ConfigError, match=r"^model.family_options: family 'lm' takes no options, got hierarchies$"):
        tiny_config("model.family_options.hierarchies=[1,2]")


def test_config_and_python_api_build_the_same_module(tiny_config, build):
    cfg = tiny_config("model.family=hierarchical", "model.layers.default.ffn.kind=gelu", "model.tie_embeddings=false",
                      "model.max_seq_len=32", "model.family_options.hierarchies=[1,2,8]",
                      "model.family_options.hierarchical_stride=[1,1,4]", "model.family_options.dims=[32,32,48]",
                      "model.family_options.heads=[4,4,6]", "model.family_options.window_sizes=[8,null,0]",
                      "model.layers.default.ffn.mult=2", "model.family_options.compressor=attn")
    from_cfg = build(cfg, double=True)
    torch.manual_seed(0)
    api = HierarchicalTransformer(num_tokens=256, dim=(32, 32, 48), depth=2, heads=(4, 4, 6), seq_len=32,
                                  ff_mult=2, hierarchies=(1, 2, 8), hierarchical_stride=(1, 1, 4),
                                  window_sizes=(8, None, 0), compressor="attn").eval().double()
    sa, sb = from_cfg.state_dict(), api.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
    ids = torch.randint(0, 256, (2, 20))
    torch.testing.assert_close(from_cfg(ids).logits, api(ids).logits, rtol=0, atol=0)


def test_model_section_knobs_reach_the_model(tiny_config, build):
    ids = torch.randint(0, 256, (2, 16))
    base = build(tiny_config("model.family=hierarchical"), double=True)(ids).logits
    for sets in (["model.position.base=500"], ["model.position.kind=none"], ["model.position.fraction=0.5"],
                 ["model.position.kind=alibi"], ["model.position.kind=t5"],
                 ["model.layers.default.norm.eps=0.5"], ["model.family_options.token_shift=false"]):
        other = build(tiny_config("model.family=hierarchical", *sets), double=True)
        assert not torch.allclose(other(ids).logits, base), sets
    # a learnable rotary knob starts at plain RoPE (same output) but adds trainable frequencies per stream
    n = sum(p.numel() for p in build(tiny_config("model.family=hierarchical"), double=True).parameters())
    learned = build(tiny_config("model.family=hierarchical", "model.position.learn_freq=true"), double=True)
    assert sum(p.numel() for p in learned.parameters()) > n
    assert all(any(p.requires_grad for p in pos.parameters()) for pos in learned.positions)


# ----------------------------------------------------------------------------- losses


def test_aux_losses_are_named_and_weighted():
    m = make("vq", aux_loss_weight=0.3, vq_weight=0.5)
    ids = ids_for(T=24)
    res = m(ids, return_loss=True)  # ids (B, T+1): predicts ids[:, 1:]
    assert set(res.aux) == {"nll_x4", "vq_x4"}
    torch.testing.assert_close(res.loss, res.nll + 0.3 * res.aux["nll_x4"] + 0.5 * res.aux["vq_x4"])
    out = m(ids[:, :-1], targets=ids[:, 1:])
    torch.testing.assert_close(out.nll, res.nll)  # bits per byte come from the fine stream alone
    torch.testing.assert_close(out.loss, res.loss)
    with pytest.raises(ValueError, match="return_loss takes ids"):
        m(ids, return_loss=True, targets=ids)
    quiet = make("vq", aux_loss_weight=0.0, vq_weight=0.0)
    assert len(quiet.aux_heads) == 0
    q = quiet(ids[:, :-1], targets=ids[:, 1:])
    assert set(q.aux) == {"vq_x4"} and torch.equal(q.loss, q.nll)


def test_coarse_targets_are_the_tokens_after_each_window():
    m = make("h14_strided")  # stride 4: token j ends at 4j and predicts ids[4j + 1]
    ids = ids_for(T=17)
    out = m(ids[:, :-1], targets=ids[:, 1:])
    logits = m.stream_predictions(ids[:, :-1])[1][0]
    expect = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1::4][:, :logits.shape[1]].reshape(-1))
    torch.testing.assert_close(out.aux["nll_x4"], expect)


def test_every_parameter_gets_a_gradient():
    for name in ("h128_mixed", "attn_pool", "vq", "merge_all", "t5_strided", "cope_local"):
        m = make(name).train()
        loss = m(ids_for(T=24), return_loss=True).loss
        loss.backward()
        missing = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: no gradient for {missing}"


def test_switches_change_the_output():
    ids = ids_for()
    base = make("h14_axial_local")
    for change in (dict(token_shift=False), dict(window_sizes=(None, 1)), dict(window_sizes=(2, 3))):
        other = make("h14_axial_local", **change)
        other.load_state_dict(base.state_dict())
        assert not torch.allclose(base(ids).logits, other(ids).logits), change


# ----------------------------------------------------------------------------- the flat case


def test_flat_is_a_plain_transformer(tiny_config, build):
    cfg = tiny_config("model.layers.default.ffn.kind=gelu")  # rope, rms pre-norm, tied head
    lm = build(cfg, double=True)
    flat = make({"hierarchies": 1, "window_sizes": None}, dim=32, heads=4, ff_mult=4, num_tokens=256,
                token_shift=False, tie_embeddings=True)
    assert len(flat.compressors) == len(flat.merges) == len(flat.aux_heads) == 0
    assert len(flat.layers) == 2 and all(len(row) == 1 for row in flat.layers)
    mapping = {"embed.weight": "embed.weight", "norm.weight": "norm.weight"}
    for i in range(2):
        mapping.update({f"layers.{i}.0.attn.qkv.weight": f"blocks.{i}.mixer.qkv.weight",
                        f"layers.{i}.0.attn.out.weight": f"blocks.{i}.mixer.out.weight",
                        f"layers.{i}.0.norm1.weight": f"blocks.{i}.norm1.weight",
                        f"layers.{i}.0.norm2.weight": f"blocks.{i}.norm2.weight",
                        f"layers.{i}.0.ffn.up.weight": f"blocks.{i}.ffn.up.weight",
                        f"layers.{i}.0.ffn.down.weight": f"blocks.{i}.ffn.down.weight"})
    ours = {k for k in flat.state_dict() if k != "head.weight"}
    assert ours == set(mapping)
    flat.load_state_dict({k: lm.state_dict()[mapping.get(k, "embed.weight")] for k in flat.state_dict()})
    ids = torch.randint(0, 256, (2, 19))
    torch.testing.assert_close(flat(ids).logits, lm(ids).logits, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- through the Trainer


def test_trains_through_the_trainer(corpus, tmp_path):
    from archlab.cli import main
    from archlab.train import Trainer

    cfg = load_config(None, [
        "model.family=hierarchical", "model.dim=32", "model.depth=2", "model.heads=4", "model.max_seq_len=32",
        "model.family_options.hierarchies=[1,2,4]", "model.family_options.hierarchical_stride=[1,1,4]",
        "model.family_options.window_sizes=[8,auto,null]", "model.dropout=0.1", "data.corpus=path", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "train.steps=12",
        "train.batch=4", "train.seq_len=32", "train.eval_every=6", "train.eval_tokens=512", "train.log_every=4",
        "train.ckpt_every=6", "train.warmup=2", "train.tensorboard=false",
    ])
    summary = Trainer(cfg, tmp_path / "r", progress=False).fit()
    recs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if "loss" in r]
    assert {"nll_x2", "nll_x4"} <= set(train[-1])
    assert train[-1]["loss"] < train[0]["loss"]
    assert summary["final_val_loss"] < 5.0  # log(256) = 5.55: it learned something
    assert main(["eval", str(tmp_path / "r")]) == 0
    assert main(["generate", str(tmp_path / "r"), "--prompt", "def ", "--max-new-tokens", "8"]) == 0


def test_hf_export_refuses_the_family(tiny_config, build, tmp_path):
    pytest.importorskip("transformers")
    from archlab.data import ByteTokenizer
    from archlab.hf.export import export_run
    from archlab.train.run import LoadedRun

    cfg = tiny_config("model.family=hierarchical")
    run = LoadedRun(cfg=cfg, model=build(cfg), tokenizer=ByteTokenizer(), state={}, path=tmp_path / "ckpt")
    with pytest.raises(ConfigError, match=r"family 'hierarchical' has no Hugging Face adapter"):
        export_run(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- packaging and benchmark


def test_import_archlab_stays_light():
    import subprocess
    import sys

    code = ("import sys, archlab; assert 'torch' not in sys.modules; "
            "from archlab import HierarchicalTransformer; print(HierarchicalTransformer.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "HierarchicalTransformer"


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_hier_bench_bookkeeping(tmp_path, clock):
    """Keys and ratios of ``archlab bench hier`` on a tiny shape (no speed is asserted)."""
    from archlab.bench import hierarchical as hier_bench

    contenders = "ours,peer-sht-lean" if hier_bench.importlib.util.find_spec(hier_bench.PEER) else "ours"
    out = tmp_path / "hier.json"
    argv = ["--dim", "16", "--heads", "2", "--dim-head", "8", "--ff-mult", "2", "--depth", "1", "--seq-len", "16",
            "--batch", "2", "--rounds", "2", "--warmup", "0", "--contenders", contenders, "--clock", clock,
            "--generate", "--new-tokens", "3", "--out", str(out)] + (["--no-flops"] if clock == "cpu" else [])
    assert hier_bench.main(argv, mode="hier") == 0
    res = json.loads(out.read_text())
    assert res["config"]["hierarchies"] == [1, 2] and res["clock"] == clock
    assert ("work" in res) == (clock == "wall")
    if "work" in res:
        assert res["work"]["matmul_peak_gflops"] > 0
        assert all(r["counted_flops_per_token"] > 0 for r in res["work"]["contenders"].values())
        if "peer-sht-lean" in contenders:
            assert res["work"]["goal"]["needs_fraction_of_peak"] > 0
    for part in ("train", "generate"):
        names = res[part]["contenders"]
        assert set(names) == set(contenders.split(","))
        assert all(r["tokens_per_s"] > 0 for r in names.values())
    if "peer-sht-lean" in contenders:
        assert set(res["train"]["comparison"]["ratios"]) == {"ours"}
        assert res["train"]["contenders"]["ours"]["info"]["n_params"] > 0


def test_counted_flops_match_the_formula():
    """The work bound's counter: a linear layer 6·M·d² (forward, input and weight gradients),
    fused attention as explicit products 3 × 4·B·H·T²·D."""
    from archlab.bench.hierarchical import counted_flops

    B, T, d, H = 2, 8, 16, 2

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, d)
            self.lin = torch.nn.Linear(d, d, bias=False)

        def forward(self, ids):
            h = self.lin(self.emb(ids)).view(ids.shape[0], -1, H, d // H).transpose(1, 2)
            return torch.nn.functional.scaled_dot_product_attention(h, h, h, is_causal=True).mean()

    fl = counted_flops(Tiny(), lambda m, tokens: m(tokens[:, :-1]), batch=B, seq_len=T, vocab=V)
    assert fl["total"] == 6 * B * T * d * d + 3 * 4 * B * H * T * T * (d // H)
