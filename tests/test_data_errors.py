"""Bad data is refused in one line naming the path and what is allowed (issue #11, data side).

Every case builds a tiny file or folder under ``tmp_path`` and asserts an
``archlab.registry.ConfigError`` whose message is a single line that names the
offending path, raised while the corpus is prepared -- before any model exists.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from archlab.data import (
    ByteTokenizer,
    CorpusNotFound,
    Enwik8Corpus,
    TokenStream,
    WindowSampler,
    check_streams,
    iter_texts,
    make_tokenizer,
    open_corpus,
    prepare_corpus,
    split_of_relpath,
)
from archlab.registry import ConfigError

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def refused(excinfo: pytest.ExceptionInfo, *needles: object) -> str:
    """The error's message, after checking it is one line holding every needle."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"
    return msg


@pytest.fixture
def bpe():
    return make_tokenizer("bpe", vocab_size=260, train_texts=["hello world, hello text\n"] * 20)


def _text(n: int = 4000) -> str:
    """Exactly ``n`` ASCII characters of numbered lines."""
    return "".join(f"line {i}: some text\n" for i in range(n // 10 + 1))[:n]


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --------------------------------------------------------------------------- corpus 'path'


def test_missing_path(tmp_path):
    missing = tmp_path / "no" / "such.txt"
    with pytest.raises(ConfigError) as e:
        prepare_corpus(corpus="path", path=missing, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    refused(e, missing, "path not found", "text file or a folder")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, CorpusNotFound)
    assert not _cache(tmp_path).exists()  # refused before the cache is touched


def test_empty_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        open_corpus("path", f)
    refused(e, f, "empty (0 bytes)")


def test_empty_folder_and_folder_without_text(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("skipped")
    with pytest.raises(ConfigError) as e:
        open_corpus("path", empty)
    refused(e, empty, "holds no files")

    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for i in range(3):
        (blobs / f"b{i}.bin").write_bytes(b"\x89PNG\x00\x00" + bytes(range(256)))
    with pytest.raises(ConfigError) as e:
        prepare_corpus(corpus="path", path=blobs, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    refused(e, blobs, "no text files", "3 binary")


def test_binary_file_bytes_ok_bpe_refused(tmp_path, bpe):
    f = tmp_path / "data.bin"
    payload = bytes(range(256)) * 8
    f.write_bytes(payload)
    # The byte tokenizer models any bytes: accepted, split by position as usual.
    streams = prepare_corpus(corpus="path", path=f, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    assert b"".join(bytes(streams[s].tokens) for s in ("train", "validation", "test")) == payload
    # BPE learns and encodes text: refused both for training it and for tokenising with it.
    with pytest.raises(ConfigError) as e:
        iter_texts("path", "train", path=f)
    refused(e, f, "looks binary", "data.tokenizer: bytes")
    with pytest.raises(ConfigError) as e:
        prepare_corpus(corpus="path", path=f, tokenizer=bpe, cache_dir=_cache(tmp_path))
    refused(e, f, "looks binary")


def test_text_file_fine_for_bpe(tmp_path, bpe):
    f = tmp_path / "book.txt"
    f.write_text(_text(), encoding="utf-8")
    streams = prepare_corpus(corpus="path", path=f, tokenizer=bpe, cache_dir=_cache(tmp_path))
    assert bpe.decode_bytes(streams["train"].tokens).startswith(b"line 0")
    assert next(iter(iter_texts("path", "train", path=f))).startswith("line 0")


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")
def test_unreadable_file_and_folder(tmp_path):
    f = tmp_path / "secret.txt"
    f.write_text("text")
    f.chmod(0)
    with pytest.raises(ConfigError) as e:
        open_corpus("path", f)
    refused(e, f, "cannot read")
    folder = tmp_path / "tree"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.txt").write_text("text")
    (folder / "locked").chmod(0)
    try:
        with pytest.raises(ConfigError) as e:
            open_corpus("path", folder)
        refused(e, folder / "locked", "cannot read folder")
    finally:
        (folder / "locked").chmod(0o755)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_special_file_is_not_a_corpus(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as e:
        open_corpus("path", fifo)
    refused(e, fifo, "not a regular file")
    with pytest.raises(ConfigError) as e:
        open_corpus("enwik8", fifo)
    refused(e, fifo, "not a regular file")


# --------------------------------------------------------------------------- corpus 'enwik8'


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


SMALL = {"train_bytes": 2000, "validation_bytes": 500, "test_bytes": 500}


def test_enwik8_missing(tmp_path):
    with pytest.raises(ConfigError) as e:
        open_corpus("enwik8", tmp_path / "enwik8.zip")
    refused(e, tmp_path / "enwik8.zip", "not found", "enwik8.zip")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(ConfigError) as e:
        open_corpus("enwik8", tmp_path)  # a folder holding neither
    refused(e, tmp_path, "no enwik8 or enwik8.zip in folder")


def test_enwik8_folder_where_file_expected(tmp_path):
    (tmp_path / "enwik8").mkdir()  # e.g. unzipped into a folder of the same name, one level too deep
    with pytest.raises(ConfigError) as e:
        open_corpus("enwik8", tmp_path)
    refused(e, tmp_path / "enwik8", "is not a file")


def test_enwik8_corrupt_and_truncated_zip(tmp_path):
    garbage = tmp_path / "garbage" / "enwik8.zip"
    garbage.parent.mkdir()
    garbage.write_bytes(b"PK\x03\x04 this is not really a zip archive" * 10)
    with pytest.raises(ConfigError) as e:
        Enwik8Corpus(garbage, **SMALL)
    refused(e, garbage, "not a readable zip archive")

    good = _zip(tmp_path / "good.zip", {"enwik8": _text(3000).encode()})
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a download that stopped halfway
    with pytest.raises(ConfigError) as e:
        Enwik8Corpus(cut, **SMALL)
    refused(e, cut, "not a readable zip archive")


def test_enwik8_damaged_member_data(tmp_path):
    # The zip directory is intact but the compressed bytes are damaged: only reading shows it.
    zpath = _zip(tmp_path / "enwik8.zip", {"enwik8": _text(3000).encode()})
    raw = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo("enwik8")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 50 : start + 90] = b"\xff" * 40
    zpath.write_bytes(bytes(raw))
    corpus = Enwik8Corpus(zpath, **SMALL)  # opens fine: the directory is intact
    with pytest.raises(ConfigError) as e:
        prepare_corpus(corpus=corpus, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    refused(e, zpath, "corrupt")
    assert not [p for p in _cache(tmp_path).rglob("*") if p.is_file()]  # no half-written cache


def test_enwik8_zip_without_enwik8(tmp_path):
    zpath = _zip(tmp_path / "enwik8.zip", {"readme.txt": b"hi", "data/enwik9": b"x" * 4000})
    with pytest.raises(ConfigError) as e:
        Enwik8Corpus(zpath, **SMALL)
    refused(e, zpath, "no member named enwik8", "readme.txt")
    empty = _zip(tmp_path / "empty.zip", {})
    with pytest.raises(ConfigError) as e:
        Enwik8Corpus(empty, **SMALL)
    refused(e, empty, "no member named enwik8", "no files")


def test_enwik8_too_short(tmp_path):
    raw = tmp_path / "enwik8"
    raw.write_bytes(_text(2500).encode())
    with pytest.raises(ConfigError) as e:
        open_corpus("enwik8", raw)  # the standard split
    refused(e, raw, "holds 2,500 bytes", "needs 100,000,000", "90,000,000 train", "standard enwik8")
    with pytest.raises(ConfigError) as e:
        Enwik8Corpus(raw, **SMALL)
    refused(e, raw, "holds 2,500 bytes", "needs 3,000")
    zpath = _zip(tmp_path / "enwik8.zip", {"enwik8": _text(2500).encode()})
    with pytest.raises(ConfigError) as e:
        Enwik8Corpus(zpath, **SMALL)
    refused(e, zpath, "holds 2,500 bytes")  # the member's size, not the archive's


# --------------------------------------------------------------------------- short and empty splits


def test_short_splits_refused_by_check_streams(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text(_text(1000), encoding="utf-8")  # 900 / 50 / 50 bytes
    streams = prepare_corpus(corpus="path", path=f, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    check_streams(streams, seq_len=32)  # fits: nothing raised
    with pytest.raises(ConfigError) as e:
        check_streams(streams, seq_len=64)
    refused(e, "split 'validation'", f, "has 50 tokens", "seq_len + 1 = 65")
    with pytest.raises(ConfigError) as e:
        check_streams(streams, seq_len=2000)
    refused(e, "split 'train'", f, "has 900 tokens", "seq_len + 1 = 2,001")
    with pytest.raises(ConfigError) as e:
        check_streams(streams, seq_len=64, splits=("test",))
    refused(e, "split 'test'", "has 50 tokens")
    # The sampler refuses on its own too, naming the split its stream came from.
    with pytest.raises(ConfigError) as e:
        WindowSampler(streams["train"], seq_len=900, batch_size=2, seed=0)
    refused(e, "split 'train'", f, "has 900 tokens", "seq_len + 1 = 901")


def test_empty_validation_split_refused(tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    names = [f"f{i}.txt" for i in range(200) if split_of_relpath(f"f{i}.txt") == "train"][:3]
    for name in names:
        (folder / name).write_text(_text(300))
    with pytest.warns(UserWarning, match="empty"):
        streams = prepare_corpus(corpus="path", path=folder, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    assert len(streams["validation"]) == 0
    with pytest.raises(ConfigError) as e:
        check_streams(streams, seq_len=16)
    refused(e, "split 'validation'", folder.resolve(), "has 0 tokens", "split 90/5/5")


def test_check_streams_names_missing_split_and_bad_seq_len():
    streams = {"train": TokenStream.from_array(np.zeros(100, np.uint8), split="train")}
    with pytest.raises(ConfigError) as e:
        check_streams(streams, seq_len=8)
    refused(e, "'validation' was not prepared", "train")
    with pytest.raises(ConfigError) as e:
        check_streams(streams, seq_len=0, splits=("train",))
    refused(e, "seq_len", "got 0")


# --------------------------------------------------------------------------- cache


def _prepared(tmp_path: Path):
    f = tmp_path / "book.txt"
    f.write_text(_text(), encoding="utf-8")
    def prep():
        return prepare_corpus(corpus="path", path=f, tokenizer=ByteTokenizer(), cache_dir=_cache(tmp_path))
    return prep, bytes(prep()["train"].tokens)


@pytest.mark.parametrize("damage", ["truncate", "pad", "not_json", "json_list", "bad_dtype", "str_count", "no_unit"])
def test_corrupt_cache_is_rebuilt(tmp_path, caplog, damage):
    prep, expected = _prepared(tmp_path)
    bin_path = next(_cache(tmp_path).rglob("train.bin"))
    meta_path = bin_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    if damage == "truncate":
        bin_path.write_bytes(bin_path.read_bytes()[:100])
    elif damage == "pad":
        bin_path.write_bytes(bin_path.read_bytes() + b"\0" * 7)
    elif damage == "not_json":
        meta_path.write_text('{"format": 1, "key": ')
    elif damage == "json_list":
        meta_path.write_text("[1, 2, 3]")
    else:
        changes = {"bad_dtype": {"dtype": "float128x"}, "str_count": {"n_tokens": "3600"}, "no_unit": {"unit": None}}
        meta.update(changes[damage])
        meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="archlab.data.stream"):
        again = prep()
    assert bytes(again["train"].tokens) == expected
    assert any("rebuilding" in r.getMessage() and "train.bin" in r.getMessage() for r in caplog.records)
    assert not [p for p in _cache(tmp_path).rglob("*.tmp*")]


def test_crash_while_rebuilding_keeps_old_files_whole(tmp_path, monkeypatch):
    prep, expected = _prepared(tmp_path)
    bin_path = next(_cache(tmp_path).rglob("train.bin"))
    bin_path.with_suffix(".json").write_text("garbage")  # forces a rebuild of train

    def crash(chunks):
        raise RuntimeError("simulated crash mid-write")

    monkeypatch.setattr(ByteTokenizer, "encode_bytes_batch", lambda self, chunks: crash(chunks))
    with pytest.raises(RuntimeError):
        prep()
    assert bin_path.read_bytes() == expected  # the old .bin, never a partial new one
    assert not [p for p in _cache(tmp_path).rglob("*.tmp*")]


def test_cache_dir_is_a_file(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(_text(), encoding="utf-8")
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as e:
        prepare_corpus(corpus="path", path=f, tokenizer=ByteTokenizer(), cache_dir=blocker)
    refused(e, "data.cache_dir", blocker, "must be a folder")


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_cache_dir_not_writable(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(_text(), encoding="utf-8")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError) as e:
            prepare_corpus(corpus="path", path=f, tokenizer=ByteTokenizer(), cache_dir=ro)
        refused(e, "data.cache_dir", ro)
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------- through the CLI


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from archlab.cli import main

    missing = tmp_path / "nope.txt"
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(json.dumps({
        "data": {"corpus": "path", "path": str(missing)},
        "model": {"dim": 16, "depth": 1, "heads": 2, "max_seq_len": 16},
        "train": {"steps": 1, "seq_len": 8, "batch": 2},
    }))  # JSON is YAML
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archlab: error: data.path:") and "\n" not in err and str(missing) in err
