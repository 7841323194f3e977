"""Exact bits per byte: float64 NLLs over exactly the scored targets, divided by exactly their
UTF-8 bytes, for the byte tokenizer and a BPE, with and without an evaluation cap."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from archlab.data import load_tokenizer, make_tokenizer, prepare_corpus
from archlab.data.stream import TokenStream
from archlab.train.evaluate import evaluate, token_byte_lengths

LN2 = math.log(2)


class Uniform(nn.Module):
    """Zero logits over ``vocab`` ids: every target costs log(vocab) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return type("Out", (), {"logits": torch.zeros(*x.shape, self.vocab)})()


class Bigram(nn.Module):
    """Logits depend on the current input id only, so each target's NLL is independent of the
    window it falls in and a hand computation needs no windowing."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * 3)

    def forward(self, x):  # a bare tensor, as a peer model returns
        return self.table[x]


def hand_nats(model: Bigram, ids: np.ndarray, n_targets: int) -> float:
    logp = torch.log_softmax(model.table.detach(), dim=-1)
    prev, nxt = torch.as_tensor(ids[:n_targets]), torch.as_tensor(ids[1:n_targets + 1])
    return float(-logp[prev.long(), nxt.long()].sum())


@pytest.mark.parametrize("max_tokens", [None, 5000])
def test_a_uniform_byte_model_scores_exactly_8_bits_per_byte(max_tokens):
    ids = np.random.default_rng(0).integers(0, 256, size=20011).astype(np.uint8)
    for stream in (TokenStream.from_array(ids), ids):  # a bare array counts as byte ids
        res = evaluate(Uniform(256), stream, seq_len=64, batch_size=8, max_tokens=max_tokens)
        assert res["bpb"] == pytest.approx(8.0, abs=1e-12)
        assert res["bits_per_token"] == pytest.approx(8.0, abs=1e-12)
        assert res["tokens"] == res["bytes"] == (max_tokens or len(ids) - 1)


@pytest.fixture(scope="module")
def bpe():
    rng = random.Random(1)
    words = ["return", "self", "import", "lambda", "café", "naïve", "漢字", "def", "class"]
    texts = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(300)]
    return make_tokenizer("bpe", vocab_size=320, train_texts=texts, log=None)


@pytest.fixture(scope="module")
def bpe_stream(bpe):
    # The prefix is text the BPE learned (long tokens), the rest random letters (about a byte
    # a token): the scored prefix's bytes per token is far from the split's average.
    rng = random.Random(2)
    words = ["return", "self", "import", "lambda", "café", "naïve", "漢字", "def", "class"]
    head = " ".join(rng.choice(words) for _ in range(300))
    tail = "".join(rng.choice("qzxjkvw QZXJ") for _ in range(3000))
    text = head + " " + tail
    ids = np.asarray(bpe.encode(text), dtype=np.int64)
    assert len(bpe.decode_bytes(ids)) == len(text.encode("utf-8"))
    return TokenStream.from_array(ids, n_bytes=len(text.encode("utf-8")), unit="token", vocab_size=bpe.vocab_size)


def test_byte_length_table_matches_decoding(bpe, bpe_stream):
    table = token_byte_lengths(bpe)
    assert table.shape == (bpe.vocab_size,) and table.max() > 1  # merges: multi-byte tokens
    ids = bpe_stream.tokens
    assert int(table[ids].sum()) == len(bpe.decode_bytes(ids)) == bpe_stream.n_bytes
    assert (token_byte_lengths(make_tokenizer("bytes")) == 1).all()


@pytest.mark.parametrize("max_tokens", [None, 400, 997])
def test_bpe_bpb_is_nats_over_ln2_over_the_bytes_of_the_scored_targets(bpe, bpe_stream, max_tokens):
    model = Bigram(bpe.vocab_size)
    ids = bpe_stream.tokens
    res = evaluate(model, bpe_stream, seq_len=48, batch_size=3, max_tokens=max_tokens,
                   token_bytes=token_byte_lengths(bpe))
    n = max_tokens or len(ids) - 1
    nats = hand_nats(model, ids, n)
    n_bytes = len(bpe.decode_bytes(ids[1:n + 1]))
    assert res["tokens"] == n and res["bytes"] == n_bytes
    assert res["loss"] == pytest.approx(nats / n, rel=1e-12)
    assert res["bpb"] == pytest.approx(nats / LN2 / n_bytes, rel=1e-12)
    old = nats / n / LN2 / bpe_stream.bytes_per_token  # the split's average bytes per token
    if max_tokens is not None:
        assert abs(old - res["bpb"]) > 0.05 * res["bpb"]  # the old formula was off by more than 5 %


def test_a_token_stream_without_a_byte_table_is_refused(bpe, bpe_stream):
    with pytest.raises(ValueError, match="token_bytes") as e:
        evaluate(Bigram(bpe.vocab_size), bpe_stream, seq_len=48, batch_size=3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="token id .* no entry in token_bytes"):
        evaluate(Bigram(bpe.vocab_size), bpe_stream, seq_len=48, batch_size=3, token_bytes=np.ones(256, int))
    with pytest.raises(ValueError, match="integer byte lengths"):
        evaluate(Bigram(bpe.vocab_size), bpe_stream, seq_len=48, batch_size=3, token_bytes=np.ones(320) * 1.5)


def _bpe_run_cfg(corpus, tmp_path, *extra):
    from archlab.config import load_config

    return load_config(None, [
        "model.dim=16", "model.depth=1", "model.heads=2", "data.corpus=path", f"data.path={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.tokenizer=bpe", "data.bpe_vocab=300",
        "train.steps=2", "train.batch=2", "train.seq_len=16", "train.eval_every=2", "train.eval_tokens=100",
        "train.warmup=1", *extra,
    ])


def test_trainer_and_cli_eval_divide_by_the_bytes_of_the_scored_bpe_targets(corpus, tmp_path, capsys):
    from archlab.cli import main
    from archlab.train import Trainer

    out = tmp_path / "run"
    tr = Trainer(_bpe_run_cfg(corpus, tmp_path), out, progress=False, log=lambda s: None, quiet=True)
    tr.fit()
    ids = tr.streams["validation"].tokens
    res = tr.evaluate()
    assert res["tokens"] == 100 and res["bytes"] == len(tr.tokenizer.decode_bytes(ids[1:101]))
    assert res["bpb"] * res["bytes"] == pytest.approx(res["bits_per_token"] * res["tokens"], rel=1e-12)
    tr.close()

    capsys.readouterr()
    assert main(["eval", str(out), "--split", "test", "--json", "--max-tokens", "77"]) == 0
    got = json.loads(capsys.readouterr().out)
    tok = load_tokenizer(out)
    test = prepare_corpus(corpus="path", path=corpus, tokenizer=tok, cache_dir=tmp_path / "cache")["test"]
    assert got["tokens"] == 77 and got["bytes"] == len(tok.decode_bytes(test.tokens[1:78]))
