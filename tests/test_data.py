"""Tests for archlab.data: tokenizers, corpora/splits, cached streams, samplers."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from archlab.data import (
    BPETokenizer,
    ByteTokenizer,
    Enwik8Corpus,
    PathCorpus,
    StdlibCorpus,
    TokenStream,
    WindowSampler,
    count_eval_targets,
    eval_windows,
    load_tokenizer,
    make_tokenizer,
    open_corpus,
    prepare_corpus,
    read_split,
    split_of_relpath,
    stdlib_root,
    stdlib_split_files,
)
from archlab.data import stream as stream_mod


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's real cache from tests."""
    monkeypatch.setenv("ARCHLAB_CACHE", str(tmp_path / "cache"))


def _random_text(rng: random.Random, n: int) -> str:
    """Arbitrary Unicode (no lone surrogates), biased towards tricky code points."""
    pools = [
        (0x00, 0x7F),  # ASCII incl. controls and NUL
        (0x80, 0x7FF),  # 2-byte UTF-8
        (0x800, 0xD7FF),  # 3-byte, below surrogates
        (0xE000, 0xFFFF),  # 3-byte, above surrogates
        (0x10000, 0x10FFFF),  # 4-byte (emoji etc.)
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


TRICKY = ["", " ", "  leading", "trailing  ", "\r\n\t\x00", "héllo wörld", "😀👍🏽 日本語", "a\u0301", "\ufeffbom"]


# --------------------------------------------------------------------------- tokenizers


def test_byte_roundtrip_arbitrary_unicode():
    tok = ByteTokenizer()
    rng = random.Random(0)
    for s in TRICKY + [_random_text(rng, rng.randint(0, 200)) for _ in range(200)]:
        ids = tok.encode(s)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == s
        assert tok.decode_bytes(ids) == s.encode("utf-8")
        assert tok.encode_bytes(s.encode("utf-8")).dtype == np.uint8
    assert tok.decode(torch.tensor([104, 105])) == "hi"
    assert tok.decode([0xFF]) == "\ufffd"  # invalid UTF-8 is replaced, not raised


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    texts = [p.read_text(encoding="utf-8") for p in sorted((stdlib_root() / "json").glob("*.py"))]
    texts.append("".join(TRICKY) * 20)
    return BPETokenizer.train(texts, vocab_size=300)


def test_bpe_roundtrip_exact(bpe):
    assert bpe.vocab_size == 300 and bpe.name == "bpe" and bpe.unit == "token"
    rng = random.Random(1)
    samples = TRICKY + [_random_text(rng, rng.randint(0, 200)) for _ in range(200)]
    samples.append((stdlib_root() / "json" / "decoder.py").read_text(encoding="utf-8"))
    for s in samples:
        ids = bpe.encode(s)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == s
        assert bpe.decode_bytes(ids) == s.encode("utf-8")
    code = "def f(x):\n    return x + 1\n"
    assert len(bpe.encode(code)) < len(code.encode())  # merges were learnt and used


def test_bpe_deterministic_and_save_load(bpe, tmp_path):
    texts = [p.read_text(encoding="utf-8") for p in sorted((stdlib_root() / "json").glob("*.py"))]
    texts.append("".join(TRICKY) * 20)
    again = BPETokenizer.train(texts, vocab_size=300)
    assert again.fingerprint() == bpe.fingerprint()
    bpe.save(tmp_path / "t")
    loaded = load_tokenizer(tmp_path / "t")
    assert isinstance(loaded, BPETokenizer) and loaded.fingerprint() == bpe.fingerprint()
    assert BPETokenizer.load(tmp_path / "t").encode("x = 1\n") == bpe.encode("x = 1\n")
    ByteTokenizer().save(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "tokenizer.json").read_text()) == {"kind": "bytes"}
    assert isinstance(load_tokenizer(tmp_path / "b"), ByteTokenizer)


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^data\.tokenizer: unknown kind 'x'; allowed: bytes, bpe$"):
        make_tokenizer("x")
    with pytest.raises(ValueError, match="needs train_texts"):
        make_tokenizer("bpe")
    with pytest.raises(ValueError, match="tokenizer.json: tokenizer file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: corrupt"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "words"}')
    with pytest.raises(ValueError, match="unrecognised"):
        load_tokenizer(tmp_path)
    assert isinstance(make_tokenizer("bytes"), ByteTokenizer)
    assert make_tokenizer("bpe", vocab_size=260, train_texts=["abab abab"] * 10).vocab_size <= 260


# --------------------------------------------------------------------------- corpora


def test_stdlib_splits_disjoint_complete_deterministic():
    root = stdlib_root()
    corpus = StdlibCorpus()
    first = corpus.all_splits()
    again = {s: stdlib_split_files(s) for s in ("train", "validation", "test")}
    assert first == again  # deterministic; also equals the per-split API
    sets = {s: set(v) for s, v in first.items()}
    assert all(sets.values()), "every split must be non-empty"
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"] or sets["validation"] & sets["test"])
    expected = {
        p
        for p in root.rglob("*.py")
        if not {"site-packages", "dist-packages", "__pycache__"} & set(p.relative_to(root).parts)
        and p.is_file()
    }
    assert set().union(*sets.values()) == expected
    for s, files in first.items():
        rels = [p.relative_to(root).as_posix() for p in files]
        assert rels == sorted(rels)
        assert all(split_of_relpath(r) == s for r in rels)
    # Roughly 90/5/5 by file count.
    n = len(expected)
    assert 0.85 < len(first["train"]) / n < 0.95


def test_split_names():
    corpus = StdlibCorpus()
    assert corpus.split_files("val") == corpus.split_files("validation")
    with pytest.raises(ValueError, match=r"unknown split 'dev'; allowed: train, validation \(alias val\), test"):
        corpus.split_files("dev")
    with pytest.raises(ValueError, match="unknown corpus 'books'; allowed: stdlib, path, enwik8"):
        open_corpus("books")


def _make_folder(root: Path, n_files: int = 60) -> Path:
    rng = random.Random(5)
    for i in range(n_files):
        sub = root / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        # No NUL characters: those would (correctly) mark the file as binary.
        body = _random_text(rng, 50).replace("\x00", "")
        (sub / f"f{i:03d}.txt").write_text(f"file {i}\n" + body, encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("hidden dir, skipped")
    (root / ".hidden.txt").write_text("hidden file, skipped")
    (root / "blob.bin").write_bytes(b"\x89PNG\x00\x00binary")
    return root


def test_path_corpus_folder(tmp_path):
    root = _make_folder(tmp_path / "folder")
    corpus = PathCorpus(root)
    files = {s: corpus.split_files(s) for s in ("train", "validation", "test")}
    all_files = [p for v in files.values() for p in v]
    assert len(all_files) == len(set(all_files)) == 60
    assert not any(".git" in p.parts or p.name in (".hidden.txt", "blob.bin") for p in all_files)
    train = corpus.read("train")
    assert train == b"".join(p.read_bytes() + b"\n\n" for p in files["train"])
    streams = prepare_corpus(corpus="path", path=root, tokenizer=ByteTokenizer())
    assert bytes(streams["train"].tokens) == train


def test_path_corpus_single_file(tmp_path):
    f = tmp_path / "book.txt"
    text = "".join(f"line {i} ünïcödé 😀\n" for i in range(3000))
    f.write_text(text, encoding="utf-8")
    data = text.encode("utf-8")
    parts = [read_split("path", s, path=f) for s in ("train", "validation", "test")]
    assert b"".join(parts) == data  # contiguous, complete, in order
    n = len(data)
    assert abs(len(parts[0]) - 0.90 * n) <= 4 and abs(len(parts[1]) - 0.05 * n) <= 4
    for p in parts:
        p.decode("utf-8")  # cuts never split a character
    # Chunking of a large single file (many chunks) still concatenates exactly.
    from archlab.data import corpus as corpus_mod

    with open(f, "rb") as fh:
        chunks = list(corpus_mod._iter_region(fh, 0, n, chunk=1000))
    assert len(chunks) > 10 and b"".join(chunks) == data
    assert all(c.endswith(b"\n") for c in chunks[:-1])
    nl_free = ("é" * 3000).encode()
    chunks = list(corpus_mod._iter_region(io.BytesIO(nl_free), 0, len(nl_free), chunk=999))
    assert b"".join(chunks) == nl_free and all(c.decode("utf-8") for c in chunks)


def test_path_missing_is_clear(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="path not found: .*nope$"):
        prepare_corpus(corpus="path", path=missing, tokenizer=ByteTokenizer())
    with pytest.raises(FileNotFoundError, match="nope"):
        open_corpus("enwik8", missing)
    with pytest.raises(ValueError, match="needs a path"):
        open_corpus("path")


def test_enwik8_small_synthetic_zip(tmp_path):
    rng = np.random.default_rng(0)
    data = bytes(rng.integers(32, 127, size=2000, dtype=np.uint8))
    zpath = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", data)
    corpus = Enwik8Corpus(tmp_path, train_bytes=1500, validation_bytes=200, test_bytes=100)
    assert corpus.file == zpath.resolve()
    streams = prepare_corpus(corpus=corpus, tokenizer=ByteTokenizer())
    assert [len(streams[s]) for s in ("train", "validation", "test")] == [1500, 200, 100]
    assert bytes(streams["train"].tokens) == data[:1500]
    assert bytes(streams["validation"].tokens) == data[1500:1700]
    assert bytes(streams["test"].tokens) == data[1700:1800]
    # A raw (unzipped) file gives the same split.
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "enwik8").write_bytes(data)
    raw = Enwik8Corpus(tmp_path / "raw" / "enwik8", train_bytes=1500, validation_bytes=200, test_bytes=100)
    assert raw.read("val") == data[1500:1700]
    # With the standard sizes a short file is refused, naming the file.
    with pytest.raises(ValueError, match=r"enwik8\.zip holds 2,000 bytes but the split needs 100,000,000"):
        open_corpus("enwik8", zpath)


# --------------------------------------------------------------------------- streams and cache


def test_prepare_stdlib_bytes_and_cache_reuse(tmp_path, monkeypatch):
    tok = ByteTokenizer()
    streams = prepare_corpus(corpus="stdlib", tokenizer=tok)
    tr = streams["train"]
    assert tr.unit == "byte" and tr.dtype == np.uint8 and isinstance(tr.tokens, np.memmap)
    assert len(tr) == tr.n_bytes and tr.bytes_per_token == 1.0
    assert all(len(streams[s]) > 0 for s in ("train", "validation", "test"))
    val_files = stdlib_split_files("validation")
    assert len(streams["validation"]) == sum(p.stat().st_size + 2 for p in val_files)
    assert not tr.tokens.flags.writeable

    cache = Path(os.environ["ARCHLAB_CACHE"])
    bins = sorted(cache.rglob("*.bin"))
    assert len(bins) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in bins}

    def boom(*a, **k):
        raise AssertionError("re-tokenised although the cache was valid")

    monkeypatch.setattr(stream_mod, "_tokenize_split", boom)
    again = prepare_corpus(corpus="stdlib", tokenizer=tok)
    assert {p: p.stat().st_mtime_ns for p in bins} == mtimes
    assert np.array_equal(again["test"].tokens, streams["test"].tokens)
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]

    # Pickling sends the path, not 28 MB of tokens, and re-maps on load.
    blob = pickle.dumps(tr)
    assert len(blob) < 10_000
    assert np.array_equal(pickle.loads(blob).tokens[:1000], tr.tokens[:1000])


def test_cache_atomic_on_crash_and_corruption(tmp_path, monkeypatch):
    root = _make_folder(tmp_path / "folder")
    cache = tmp_path / "c"
    tok = ByteTokenizer()
    calls = {"n": 0}
    real = tok.encode_bytes_batch

    def flaky(chunks):
        calls["n"] += 1
        raise RuntimeError("simulated crash mid-tokenisation")

    monkeypatch.setattr(tok, "encode_bytes_batch", flaky)
    with pytest.raises(RuntimeError):
        prepare_corpus(corpus="path", path=root, tokenizer=tok, cache_dir=cache)
    assert calls["n"] == 1
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # nothing half-written survives
    monkeypatch.setattr(tok, "encode_bytes_batch", real)
    good = prepare_corpus(corpus="path", path=root, tokenizer=tok, cache_dir=cache)
    # A truncated .bin (e.g. copied partially) is detected and rebuilt.
    bin_path = good["train"].path
    n = len(good["train"])
    del good
    with open(bin_path, "r+b") as f:
        f.truncate(n // 2)
    rebuilt = prepare_corpus(corpus="path", path=root, tokenizer=tok, cache_dir=cache)
    assert len(rebuilt["train"]) == n
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]
    # Changing the source changes the cache key.
    (root / "d0" / "new.txt").write_text("new file")
    changed = prepare_corpus(corpus="path", path=root, tokenizer=tok, cache_dir=cache)
    assert changed["train"].path.parent != rebuilt["train"].path.parent


def test_prepare_with_bpe(bpe, tmp_path):
    root = _make_folder(tmp_path / "folder")
    streams = prepare_corpus(corpus="path", path=root, tokenizer=bpe)
    tr = streams["train"]
    assert tr.unit == "token" and tr.dtype == np.uint16 and tr.vocab_size == 300
    raw = read_split("path", "train", path=root)
    assert tr.n_bytes == len(raw)
    assert bpe.decode_bytes(tr.tokens) == raw  # valid UTF-8 input: exact
    assert tr.bytes_per_token == tr.n_bytes / len(tr)
    # A different tokenizer gets its own cache entry.
    other = prepare_corpus(corpus="path", path=root, tokenizer=ByteTokenizer())
    assert other["train"].path.parent != tr.path.parent


# --------------------------------------------------------------------------- samplers


def _arange_stream(n: int) -> TokenStream:
    # Distinct values make windows identifiable (int32 so n may exceed 256).
    return TokenStream.from_array(np.arange(n, dtype=np.int32))


def test_window_sampler_properties():
    s = _arange_stream(5000)
    sampler = WindowSampler(s, seq_len=16, batch_size=8, seed=3)
    x, y = sampler.batch(7)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y, x + 1)  # y is x shifted by one in the underlying stream
    x2, y2 = WindowSampler(s, seq_len=16, batch_size=8, seed=3).batch(7)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # stateless: same step, same batch
    assert not torch.equal(sampler.batch(8)[0], x)
    assert not torch.equal(WindowSampler(s, seq_len=16, batch_size=8, seed=4).batch(7)[0], x)
    # Order of calls does not matter (resume = just know the step).
    sampler.batch(100)
    assert torch.equal(sampler.batch(7)[0], x)
    # Starts cover the full valid range, including the last one.
    tiny = WindowSampler(_arange_stream(6), seq_len=4, batch_size=64, seed=0)
    assert set(tiny.global_starts(0).tolist()) == {0, 1}


def test_window_sampler_ranks_concatenate():
    s = _arange_stream(3000)
    for step in (0, 1, 99):
        full_x, full_y = WindowSampler(s, seq_len=10, batch_size=8, seed=11).batch(step)
        parts = [WindowSampler(s, seq_len=10, batch_size=8, seed=11, rank=r, world_size=2).batch(step) for r in range(2)]
        assert all(p[0].shape == (4, 10) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
        assert torch.equal(torch.cat([p[1] for p in parts]), full_y)


def test_window_sampler_errors():
    s = _arange_stream(10)
    with pytest.raises(ValueError, match="not divisible by world_size 3"):
        WindowSampler(s, seq_len=4, batch_size=8, seed=0, world_size=3)
    with pytest.raises(ValueError, match="stream has 10 tokens, need at least seq_len \\+ 1 = 11"):
        WindowSampler(s, seq_len=10, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="rank"):
        WindowSampler(s, seq_len=4, batch_size=2, seed=0, rank=2, world_size=2)


@pytest.mark.parametrize("n,seq_len,batch_size,max_tokens", [(1000, 16, 4, None), (1001, 10, 3, None), (17, 16, 2, None), (500, 7, 5, 123), (2, 8, 1, None), (1, 8, 1, None)])
def test_eval_windows_cover_each_target_once(n, seq_len, batch_size, max_tokens):
    tokens = np.random.default_rng(n).integers(0, 256, size=n).astype(np.uint8)
    s = TokenStream.from_array(tokens)
    expected = count_eval_targets(s, max_tokens=max_tokens)
    assert expected == (min(n - 1, max_tokens) if max_tokens else max(n - 1, 0))
    targets, inputs = [], []
    for i, (x, y) in enumerate(eval_windows(s, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)):
        assert x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= seq_len
        assert torch.equal(x[:, 1:], y[:, :-1])
        targets.append(y.reshape(-1))
        inputs.append(x.reshape(-1))
    got = torch.cat(targets).numpy() if targets else np.zeros(0)
    assert len(got) == expected
    # Reconstruct the stream from the targets: tokens[1 : 1 + expected], in order.
    assert np.array_equal(got, tokens[1 : 1 + expected])
    if targets:
        assert torch.cat(inputs).numpy()[0] == tokens[0]
