"""An exported Hugging Face folder is a complete stand-in for its run: ``load_run`` (hence
``archlab eval`` / ``archlab generate``) opens it to the same config, weights, tokenizer and
numbers, and transformers' ``AutoTokenizer`` reads its tokenizer with archlab's ids.

Tiny runs (4 steps) on the shared test corpus, trained once per module, offline."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub are imported

import pytest
import torch

pytest.importorskip("transformers")

from archlab.cli import main  # noqa: E402
from archlab.train.checkpoint import CheckpointError  # noqa: E402
from archlab.train.run import load_run  # noqa: E402

TEXT = "class y: return self ☕\n\tdef  x(é)\x00 "


def train_and_export(corpus, root, tokenizer: str, *extra: str):
    from archlab.config import load_config
    from archlab.hf import export_run
    from archlab.train import Trainer

    cfg = load_config(None, [
        "model.dim=32", "model.depth=2", "model.heads=4", "data.corpus=path", f"data.path={corpus}",
        f"data.cache_dir={root / 'cache'}", f"data.tokenizer={tokenizer}", "data.bpe_vocab=300",
        "train.steps=4", "train.batch=4", "train.seq_len=32", "train.eval_every=4", "train.eval_tokens=256",
        "train.log_every=2", "train.ckpt_every=4", "train.warmup=1", *extra,
    ])
    run_dir = root / f"run-{tokenizer}"
    Trainer(cfg, run_dir, progress=False, quiet=True).fit()
    return run_dir, export_run(run_dir, root / f"hf-{tokenizer}")


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    """{tokenizer kind: (run folder, exported HF folder)}."""
    root = tmp_path_factory.mktemp("hf-folder")
    return {kind: train_and_export(corpus, root, kind) for kind in ("bytes", "bpe")}


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_load_run_opens_the_exported_folder_as_the_run(exported, kind):
    run_dir, hf_dir = exported[kind]
    run, hf = load_run(run_dir), load_run(hf_dir)
    assert hf.cfg.model == run.cfg.model
    assert hf.cfg.data == run.cfg.data
    assert hf.cfg.train.seq_len == run.cfg.train.seq_len == 32
    assert hf.state["step"] == run.state["step"] == 4
    assert hf.path.parent == hf_dir
    assert not hf.model.training
    assert type(hf.tokenizer) is type(run.tokenizer) and hf.tokenizer.name == kind
    assert hf.tokenizer.encode(TEXT) == run.tokenizer.encode(TEXT)
    ids = torch.tensor([run.tokenizer.encode(TEXT * 2)[:32]] * 2)
    with torch.no_grad():
        assert torch.equal(hf.model(ids).logits, run.model(ids).logits)


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_autotokenizer_reads_the_exported_tokenizer_with_archlab_ids(exported, kind):
    from transformers import AutoTokenizer

    run_dir, hf_dir = exported[kind]
    ours = load_run(run_dir).tokenizer
    theirs = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    for text in (TEXT, "", " ", "return x", "ünïcode ✓ 𝔘"):
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == text == ours.decode(ids)
    if kind == "bytes":
        assert len(theirs) == 256 and theirs("AB")["input_ids"] == [65, 66]


def test_eval_and_generate_give_the_runs_numbers(exported, capsys):
    run_dir, hf_dir = exported["bpe"]
    outs = []
    for where in (run_dir, hf_dir):
        assert main(["eval", str(where), "--split", "validation", "--max-tokens", "300", "--json"]) == 0
        assert main(["generate", str(where), "--prompt", "def ", "--max-new-tokens", "12", "--seed", "3"]) == 0
        outs.append(capsys.readouterr().out.splitlines())
    assert outs[0] == outs[1]
    res = json.loads(outs[0][0])
    assert res["step"] == 4 and res["tokens"] == 300


def test_an_adapted_run_loads_from_its_folder(corpus, tmp_path):
    """With train.dynamics the adapted rotary base lives in the exported model config; the
    folder opens without the controllers and computes what the run computes."""
    run_dir, hf_dir = train_and_export(
        corpus, tmp_path, "bytes",
        "train.dynamics=[{kind: rope_base, every: 2, decay: 0.5, threshold: 0.2, factor: 1.5}]")
    run, hf = load_run(run_dir), load_run(hf_dir)
    assert run.cfg.train.dynamics and hf.cfg.train.dynamics == []
    assert hf.model.position.base == run.model.position.base != 10000.0
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf.model(ids).logits, run.model(ids).logits, rtol=0, atol=1e-6)


def test_folders_that_are_not_an_exported_run_are_refused_in_one_line(exported, tmp_path, capsys):
    from archlab.hf import ArchlabForCausalLM

    bare = tmp_path / "bare"  # save_pretrained of a model: no record of a run
    ArchlabForCausalLM.from_archlab(load_run(exported["bytes"][0]).model).save_pretrained(bare)
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    capsys.readouterr()  # transformers' save progress bar
    for folder, match in ((bare, "no archlab_run record"), (other, "model type 'gpt2', not 'archlab'"),
                          (broken, "unreadable")):
        with pytest.raises(CheckpointError, match=match):
            load_run(folder)
        assert main(["eval", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("archlab: error: ") and match in err and err.count("\n") == 1


def test_bpe_training_announces_itself_in_one_line(capsys):
    from archlab.data import make_tokenizer

    texts = ["def x(self): return self.y\n" * 20] * 5
    make_tokenizer("bpe", vocab_size=280, train_texts=iter(texts))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("training a BPE tokenizer of 280 tokens on ") and captured.err.count("\n") == 1
    make_tokenizer("bpe", vocab_size=280, train_texts=iter(texts), log=None)
    assert capsys.readouterr().err == ""
