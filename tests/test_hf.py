"""Hugging Face transformers interop (archlab.hf): registration, save/load round trip,
generation parity with archlab's own generate, labels loss, padding, run export.

Everything runs offline (HF_HUB_OFFLINE=1 and local_files_only=True) on tiny models."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub are imported

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from transformers.generation.logits_process import LogitsProcessorList  # noqa: E402

from archlab.hf import ArchlabCache, ArchlabConfig, ArchlabForCausalLM, ArchlabLogitsWarper, export_run  # noqa: E402
from archlab.hf.modeling import CACHE_ARG  # noqa: E402
from archlab.models import generate  # noqa: E402
from archlab.models.lm import IGNORE_INDEX  # noqa: E402
from tests.conftest import build_seeded, make_tiny_config  # noqa: E402

V = 256


def ids_of(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def tiny_lm(*sets: str, seed: int = 0):
    return build_seeded(make_tiny_config(*sets), seed)


def wrap(lm) -> ArchlabForCausalLM:
    return ArchlabForCausalLM.from_archlab(lm).eval()


def load(path) -> ArchlabForCausalLM:
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


def run_python(*codes: str) -> list[str]:
    """Run each snippet in a fresh interpreter (concurrently: each pays the transformers import)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(c)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for c in codes]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


# ----------------------------------------------------------------------------- registration


def test_import_archlab_does_not_import_transformers():
    """``import archlab`` (and the CLI module) loads neither transformers nor torch and leaves
    the import machinery as it was: registration is ``import archlab.hf``, nothing implicit."""
    [out] = run_python("""
        import sys
        before = list(sys.meta_path)
        import archlab, archlab.cli
        print(sorted(m for m in ("transformers", "torch") if m in sys.modules), sys.meta_path == before)
    """)
    assert out.split() == ["[]", "True"]


def test_import_archlab_hf_registers_with_the_auto_classes(tmp_path):
    """``import archlab.hf`` is the registration step, whichever of the two is imported first;
    without it the Auto classes do not know model type "archlab"."""
    wrap(tiny_lm()).save_pretrained(tmp_path)
    archlab_first, transformers_first, without = run_python(f"""
        import archlab.hf
        from transformers import AutoConfig, AutoModelForCausalLM
        c = AutoConfig.for_model("archlab", archlab={{"dim": 32, "depth": 2, "heads": 4}})
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, local_files_only=True)
        print(type(c).__name__, c.hidden_size, type(m).__name__)
    """, f"""
        from transformers import AutoConfig, AutoModelForCausalLM
        import archlab.hf
        m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, local_files_only=True)
        print(type(AutoConfig.for_model("archlab")).__name__, type(m).__name__)
    """, """
        import archlab
        from transformers import AutoConfig
        try:
            AutoConfig.for_model("archlab")
        except ValueError:
            print("unknown")
    """)
    assert archlab_first.split() == ["ArchlabConfig", "32", "ArchlabForCausalLM"]
    assert transformers_first.split() == ["ArchlabConfig", "ArchlabForCausalLM"]
    assert without.split() == ["unknown"]


def test_config_roundtrips_archlab_model_config(tmp_path):
    lm = tiny_lm("model.position.kind=alibi", "model.kv_heads=2", "model.layers.overrides={'1': {ffn: gelu}}")
    cfg = ArchlabConfig.from_archlab(lm.cfg)
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "archlab" and raw["archlab"]["position"]["kind"] == "alibi"
    back = AutoConfig.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(back, ArchlabConfig)
    assert back.archlab == cfg.archlab
    assert back.archlab_model_config() == lm.cfg
    assert (back.hidden_size, back.num_hidden_layers, back.num_key_value_heads) == (32, 2, 2)


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("sets", [
    (),
    ("model.position.kind=alibi",),  # non-persistent buffer (slopes) restored after load
    ("model.position.kind=sinusoidal",),
    ("model.position.kind=learned",),  # one table shared by the model and every attention
    ("model.tie_embeddings=false", "model.position.kind=learned"),  # shared table, untied head
    ("model.position.kind=givens_rope",),  # a shared scheme with a persistent buffer (pairs)
    ("model.layers.default.norm.placement={kind: laurel, rank: 4, previous: 3}",),  # a policy with parameters
    ("model.depth=4", "model.layers.default.norm.placement={kind: mixln, alpha: 0.5}"),
    ("model.layers.default.mixer={kind: memory, projections: true, learn_temperature: true}",
     "model.layers.default.ffn.kind=none"),
    ("model.layers.default.mixer={kind: attention, persistent: 4, pid: {p: 0.5}}",),
], ids=["rope-tied", "alibi", "sinusoidal", "learned-shared", "untied-learned", "givens-shared-buffer",
        "laurel", "mixln", "memory", "persistent-pid"])
def test_save_load_is_bit_exact(tmp_path, sets):
    lm = tiny_lm(*sets)
    with torch.no_grad():  # make the norms non-trivial so they are really checked
        for b in lm.blocks:
            b.norm1.weight.mul_(1.5)
        for p in lm.position.parameters() if lm.position is not None else ():
            p.add_(0.25)  # trained-looking position parameters (Givens angles start at 0)
    model = wrap(lm)
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}

    for loaded in (load(tmp_path), ArchlabForCausalLM.from_pretrained(tmp_path, local_files_only=True)):
        assert isinstance(loaded, ArchlabForCausalLM) and not loaded.training
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
        bufs = dict(model.named_buffers())
        for k, buf in loaded.named_buffers():
            assert torch.equal(buf, bufs[k]), k
        # the sharing survives: tied head, shared position tables
        shared = {n: p for n, p in loaded.named_parameters(remove_duplicate=False)}
        for alias, source in model._tied_weights_keys.items():
            assert shared[alias] is shared[source], alias
        assert (loaded.model.head.weight is loaded.model.embed.weight) == lm.cfg.tie_embeddings
        ids = ids_of(2, 12)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, loaded(ids).logits)
            assert torch.equal(lm(ids).logits, loaded(ids, use_cache=False).logits)


def test_missing_checkpoint_keys_get_archlab_init(tmp_path):
    from safetensors.torch import load_file, save_file

    lm = tiny_lm("model.position.kind=alibi")
    wrap(lm).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    gone = {"model.blocks.0.norm1.weight", "model.blocks.1.mixer.out.weight", "model.blocks.0.ffn.up.weight"}
    save_file({k: v for k, v in weights.items() if k not in gone}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    model, info = ArchlabForCausalLM.from_pretrained(tmp_path, output_loading_info=True, local_files_only=True)
    assert set(info["missing_keys"]) == gone
    blocks = model.model.blocks
    assert torch.equal(blocks[0].norm1.weight, torch.ones(32))
    # archlab's default rule: std 1/sqrt(3 * fan_in); residual output projections also / sqrt(2 * depth)
    out, up = blocks[1].mixer.out, blocks[0].ffn.up
    out_std = (3 * out.in_features) ** -0.5 / (2 * lm.cfg.depth) ** 0.5
    assert 0.8 * out_std < float(out.weight.detach().std()) < 1.2 * out_std
    up_std = (3 * up.in_features) ** -0.5
    assert 0.8 * up_std < float(up.weight.detach().std()) < 1.2 * up_std
    assert torch.equal(blocks[1].mixer.qkv.weight, lm.blocks[1].mixer.qkv.weight)
    assert torch.equal(blocks[0].mixer.position.slopes, lm.blocks[0].mixer.position.slopes)


def test_fresh_model_has_archlab_init():
    cfg = make_tiny_config()
    lm = build_seeded(cfg, 3)
    torch.manual_seed(3)
    model = ArchlabForCausalLM(ArchlabConfig.from_archlab(cfg.model))
    for (k, a), b in zip(lm.state_dict().items(), model.model.state_dict().values()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------- forward


def test_labels_loss_equals_archlab_nll_on_shifted_targets():
    lm = tiny_lm()
    model = wrap(lm)
    ids = ids_of(2, 16)
    labels = ids.clone()
    labels[0, :5] = IGNORE_INDEX  # a masked prompt
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    with torch.no_grad():
        out = model(ids, labels=labels)
        ref = lm(ids, targets=targets)
    assert torch.equal(out.loss, ref.nll)
    assert torch.equal(out.logits, ref.logits)
    as_tuple = model(ids, labels=labels, return_dict=False)
    assert torch.equal(as_tuple[0], out.loss)


def test_cache_is_threaded_through_forward():
    """`cache=` (transformers >= 5.24) and its old name `past_key_values=` are the same input;
    the output carries the cache under the installed transformers' field name."""
    model = wrap(tiny_lm())
    ids = ids_of(2, 10)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :7])
        cache = first[CACHE_ARG]
        assert isinstance(cache, ArchlabCache) and cache.get_seq_length() == 7
        rest = model(ids[:, 7:], cache=cache)
        again = model(ids[:, :7])[CACHE_ARG]
        rest_old_name = model(ids[:, 7:], past_key_values=again)
    torch.testing.assert_close(rest.logits, full[:, 7:], rtol=1e-5, atol=1e-5)
    assert torch.equal(rest_old_name.logits, rest.logits)
    with pytest.raises(TypeError, match="ArchlabCache"):
        model(ids, cache=object())
    with pytest.raises(TypeError, match="not both"):
        model(ids, cache=model.new_cache(), past_key_values=model.new_cache())
    with pytest.raises(TypeError, match="unexpected keyword arguments: cu_seq_lens_q"):
        model(ids, cu_seq_lens_q=torch.tensor([0, 10]))


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generate_matches_archlab(use_cache):
    lm = tiny_lm()
    model = wrap(lm)
    ids = ids_of(2, 6)
    ours = generate(lm, ids, max_new_tokens=12, temperature=0, use_cache=use_cache)
    theirs = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=use_cache)
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("knobs, how", [
    ({"temperature": 0.8, "top_k": 40, "top_p": 0.9}, "processor"),
    ({"temperature": 1.3, "top_p": 0.5}, "processor"),
    ({"temperature": 0.7, "top_k": 20}, "kwargs"),  # transformers' own temperature and top-k are exact
    ({}, "defaults"),  # the model's generation_config: archlab's defaults, not HF's global top_k=50
], ids=["t-k-p", "t-p", "t-k-hf", "defaults"])
def test_sampling_generate_matches_archlab(use_cache, knobs, how):
    lm = tiny_lm(seed=4)
    model = wrap(lm)
    ids = ids_of(3, 5)
    if how == "processor":
        extra = {"do_sample": True, "logits_processor": LogitsProcessorList([ArchlabLogitsWarper(**knobs)])}
    else:
        extra = {"do_sample": True, **knobs} if how == "kwargs" else {}
    for seed in (0, 1, 2):
        ours = generate(lm, ids, max_new_tokens=16, use_cache=use_cache,
                        generator=torch.Generator().manual_seed(seed), **knobs)
        torch.manual_seed(seed)
        theirs = model.generate(ids, max_new_tokens=16, use_cache=use_cache, **extra)
        assert torch.equal(theirs, ours), seed


def test_default_generation_config_survives_save_and_load(tmp_path):
    """Without top_k=0 in the saved generation_config.json, a reloaded model would sample
    with transformers' global top_k=50 again."""
    wrap(tiny_lm()).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert (saved["do_sample"], saved["top_k"]) == (True, 0)
    loaded = load(tmp_path)
    assert (loaded.generation_config.do_sample, loaded.generation_config.top_k) == (True, 0)


def test_logits_warper_refuses_bad_knobs():
    for bad, match in (({"temperature": 0}, "temperature"), ({"top_k": -1}, "top_k"),
                       ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")):
        with pytest.raises(ValueError, match=match):
            ArchlabLogitsWarper(**bad)


def test_top_p_boundary_follows_archlab_rule():
    """transformers' own nucleus rule and archlab's keep the same set in exact arithmetic but
    can disagree at the boundary (float rounding, ties); with ArchlabLogitsWarper passed,
    generate uses archlab's."""
    from transformers.generation.logits_process import LogitsProcessor, TopPLogitsWarper

    from archlab.models.generation import filter_logits

    # one token of probability 0.8 and 100 of 0.002: top_p = 0.9 falls exactly on a boundary,
    # where the two float evaluations keep 51 vs 52 tokens.
    row = torch.full((1, V), float("-inf"))
    row[0, 0] = torch.tensor(0.8).log()
    row[0, 1:101] = torch.tensor(0.002).log()
    top_p = 0.9
    if torch.equal(TopPLogitsWarper(top_p)(None, row), filter_logits(row, top_p=top_p)):
        pytest.skip("the two rules agree on this input with this torch build; nothing to distinguish")

    class Fixed(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return row.expand_as(scores).clone()

    model = wrap(tiny_lm())
    out = model.generate(ids_of(2, 3), max_new_tokens=1, do_sample=True,
                         logits_processor=LogitsProcessorList([Fixed(), ArchlabLogitsWarper(top_p=top_p)]),
                         output_scores=True, return_dict_in_generate=True)
    assert torch.equal(out.scores[0], filter_logits(row, top_p=top_p).expand(2, V))


def test_left_padded_batch_matches_unpadded_rows():
    lm = tiny_lm("model.position.kind=alibi", seed=2)
    model = wrap(lm)
    rng = random.Random(0)
    rows = [torch.tensor([rng.randrange(V) for _ in range(n)]) for n in (4, 9, 6)]
    width = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, r in enumerate(rows):
        batch[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    for use_cache in (True, False):
        out = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False, use_cache=use_cache)
        for i, r in enumerate(rows):
            alone = generate(lm, r[None], max_new_tokens=10, temperature=0)
            assert torch.equal(out[i, width:], alone[0, len(r):]), (use_cache, i)


def test_generate_continues_from_a_given_cache():
    """A cache passed to generate is filled by it; a second generate on the output continues
    from the cache (transformers feeds it only the tokens the cache has not seen)."""
    model = wrap(tiny_lm())
    ids = ids_of(2, 5)
    whole = model.generate(ids, max_new_tokens=8, do_sample=False)
    cache = model.new_cache()
    first = model.generate(ids, max_new_tokens=4, do_sample=False, **{CACHE_ARG: cache})
    assert cache.get_seq_length() == 5 + 3  # the last token is generated, not yet consumed
    second = model.generate(first, max_new_tokens=4, do_sample=False, **{CACHE_ARG: cache})
    assert cache.get_seq_length() == 5 + 7
    assert torch.equal(second, whole)


def test_beam_search_reorders_the_cache():
    model = wrap(tiny_lm())
    ids = ids_of(2, 5)
    beams = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)
    no_cache = model.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False)
    assert beams.shape == (2, 11)
    assert torch.equal(beams, no_cache)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_export_run(corpus, tmp_path, tokenizer):
    from archlab.config import load_config
    from archlab.train import Trainer
    from archlab.train.run import load_run

    cfg = load_config(None, [
        "model.dim=32", "model.depth=2", "model.heads=4", "data.corpus=path", f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}", f"data.tokenizer={tokenizer}", "data.bpe_vocab=300",
        "train.steps=4", "train.batch=4", "train.seq_len=32", "train.eval_every=4", "train.eval_tokens=256",
        "train.log_every=2", "train.ckpt_every=4", "train.warmup=1",
    ])
    run_dir = tmp_path / "run"
    Trainer(cfg, run_dir, progress=False).fit()
    out = export_run(run_dir, tmp_path / "hf")

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    if tokenizer == "bpe":  # already a `tokenizers` file: copied as is
        assert (out / "tokenizer.json").read_bytes() == (run_dir / "tokenizer.json").read_bytes()
    else:  # archlab's {"kind": "bytes"} becomes a `tokenizers` file transformers can read
        assert json.loads((run_dir / "tokenizer.json").read_text()) == {"kind": "bytes"}
        assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    run = load_run(run_dir)
    model = load(out)
    assert model.config.archlab_tokenizer == tokenizer
    for k, v in run.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[k], v), k

    prompt = torch.tensor([run.tokenizer.encode("def x(self")])
    ours = generate(run.model, prompt, max_new_tokens=8, temperature=0)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False), ours)

    from archlab.data import load_tokenizer

    assert load_tokenizer(out).encode("return x") == run.tokenizer.encode("return x")
    assert load_tokenizer(out).name == tokenizer
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "class y: return self ☕"
    assert hf_tok(text)["input_ids"] == run.tokenizer.encode(text)
    assert hf_tok.decode(run.tokenizer.encode(text)) == text


# ----------------------------------------------------------------------------- retention (RetNet)

RETNET_SETS = ("model.layers.default.mixer.kind=retention", "model.layers.default.ffn.kind=swiglu")


@pytest.mark.parametrize("hybrid", [False, True], ids=["retnet", "hybrid"])
def test_a_retnet_round_trips_and_generates_through_transformers(tmp_path, hybrid):
    """A RetNet (or a retention/attention hybrid) saves and loads bit-exactly; transformers'
    greedy and beam generation, with its cache (the retention state) or without, and a
    left-padded batch give archlab's tokens."""
    sets = RETNET_SETS + (('model.layers.overrides={"1": {"mixer": {"kind": "attention"}}}',) if hybrid else ())
    lm = tiny_lm(*sets, seed=3)
    model = wrap(lm)
    model.save_pretrained(tmp_path)
    loaded = load(tmp_path)
    assert type(loaded.model.blocks[0].mixer).__name__ == "MultiScaleRetention"
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert_generates_like_archlab(lm, loaded)


@pytest.mark.parametrize("sets", [
    ("model.layers.default.mixer={kind: memory, norm: true}", "model.layers.default.ffn.kind=none"),
    ("model.layers.default.mixer={kind: attention, persistent: 4, pid: {}}", "model.layers.default.ffn.kind=none"),
    ("model.layers.default.norm.placement={kind: laurel, rank: 4, previous: 3}",),
], ids=["memory", "all-attention-pid", "laurel"])
def test_memory_and_residual_variants_generate_through_transformers(tmp_path, sets):
    lm = tiny_lm(*sets, seed=3)
    wrap(lm).save_pretrained(tmp_path)
    assert_generates_like_archlab(lm, load(tmp_path))


def assert_generates_like_archlab(lm, loaded) -> None:
    """transformers' greedy and beam generation, with its cache or without, and a left-padded
    batch give archlab's tokens."""
    ids = ids_of(2, 6)
    ours = generate(lm, ids, max_new_tokens=10, temperature=0)
    for use_cache in (True, False):
        assert torch.equal(loaded.generate(ids, max_new_tokens=10, do_sample=False, use_cache=use_cache), ours)
    beams = loaded.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False)
    assert torch.equal(beams, loaded.generate(ids, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=False))
    rows = [ids[0, :3], ids[1]]
    batch = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, r in enumerate(rows):
        batch[i, 6 - len(r):], mask[i, 6 - len(r):] = r, 1
    out = loaded.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    for i, r in enumerate(rows):
        assert torch.equal(out[i, 6:], generate(lm, r[None], max_new_tokens=8, temperature=0)[0, len(r):]), i
