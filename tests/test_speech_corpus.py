"""The generated speech corpus (espeak-ng): deterministic, disjoint speakers and sentences
between splits, atomic, reused or refused on re-run; the number words; and the user-corpus
loader with one-line errors naming the file and line."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf

from archlab.data.speech.manifest import ManifestError, load_manifest, normalise_text
from archlab.data.speech.synth import generate_corpus, number_words, ordinal_words, plan, sentence, speakers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "speech"
    return out, generate_corpus(out, n_train=6, n_valid=3, n_test=3, seed=0)


def test_files_and_manifests(corpus):
    out, info = corpus
    for split, n in (("train", 6), ("validation", 3), ("test", 3)):
        utts = load_manifest(out / f"{split}.jsonl")
        assert len(utts) == n == info["counts"][split]["utterances"]
        for u in utts:
            data, sr = sf.read(u.audio)
            assert sr == 16000 and data.ndim == 1 and len(data) > 8000
            assert abs(len(data) / sr - u.seconds) < 1e-3


def test_splits_share_no_speaker_and_no_sentence():
    p = plan(n_train=300, n_valid=60, n_test=60, seed=3)
    texts = {s: {u["text"] for u in p[s]} for s in p}
    spk = {s: {u["speaker"] for u in p[s]} for s in p}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not texts[a] & texts[b] and not spk[a] & spk[b]
    voices = {s: {x["voice"] for x in g} for s, g in speakers(3).items()}
    assert not voices["train"] & voices["test"]
    assert all(len(texts[s]) == len(p[s]) for s in p)  # no sentence twice within a split either


def test_deterministic_under_the_seed(tmp_path, corpus):
    out, info = corpus
    again = generate_corpus(tmp_path / "again", n_train=6, n_valid=3, n_test=3, seed=0)
    assert again["fingerprint"] == info["fingerprint"]
    for split in ("train", "test"):
        assert (tmp_path / "again" / f"{split}.jsonl").read_text() == (out / f"{split}.jsonl").read_text()
        a, b = sf.read(tmp_path / "again" / split / "000000.wav")[0], sf.read(out / split / "000000.wav")[0]
        assert np.array_equal(a, b)
    assert plan(n_train=5, n_valid=2, n_test=2, seed=1) != plan(n_train=5, n_valid=2, n_test=2, seed=0)


def test_reused_or_refused_on_rerun(corpus, tmp_path):
    out, info = corpus
    assert generate_corpus(out, n_train=6, n_valid=3, n_test=3, seed=0) == info  # nothing regenerated
    with pytest.raises(ValueError, match="holds a generated corpus with other settings") as e:
        generate_corpus(out, n_train=7, n_valid=3, n_test=3, seed=0)
    assert "\n" not in str(e.value)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="is not a generated corpus"):
        generate_corpus(tmp_path / "other", n_train=1, n_valid=1, n_test=1)
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]  # no temporary folder left


def test_number_words():
    known = {0: "zero", 13: "thirteen", 40: "forty", 99: "ninety nine", 110: "one hundred ten",
             2025: "two thousand twenty five", 9999: "nine thousand nine hundred ninety nine", 3000: "three thousand"}
    assert all(number_words(n) == w for n, w in known.items())
    assert ordinal_words(3) == "third" and ordinal_words(21) == "twenty first" and ordinal_words(20) == "twentieth"
    assert len({number_words(n) for n in range(10000)}) == 10000  # one spelling per number


def test_sentences_are_spoken_form():
    rng = random.Random(0)
    for _ in range(500):
        s = sentence(rng)
        assert s == normalise_text(s) and all(c.isalpha() or c == " " for c in s), s


def test_user_corpora_folder_jsonl_csv(tmp_path):
    for name, text in (("a", "Hello, world!"), ("b", "it's fine")):
        sf.write(tmp_path / f"{name}.wav", np.zeros(1600, np.float32), 16000)
        (tmp_path / f"{name}.txt").write_text(text)
    utts = load_manifest(tmp_path)
    assert [u.text for u in utts] == ["Hello, world!", "it's fine"]
    (tmp_path / "m.jsonl").write_text('{"audio": "a.wav", "text": "one"}\n\n{"audio": "b.wav", "text": "two"}\n')
    assert [u.text for u in load_manifest(tmp_path / "m.jsonl")] == ["one", "two"]
    (tmp_path / "m.csv").write_text("audio,text,speaker\na.wav,one,s1\nb.wav,two,s2\n")
    assert [u.speaker for u in load_manifest(tmp_path / "m.csv")] == ["s1", "s2"]
    assert normalise_text("Hello, World! It's 'quoted'  ") == "hello world it's quoted"


@pytest.mark.parametrize("content, suffix, match", [
    ('{"audio": "a.wav", "text": "ok"}\n{"audio": "gone.wav", "text": "x"}\n', ".jsonl", r"m.jsonl:2: audio 'gone.wav' does not exist"),
    ('{"audio": "a.wav", "text": "  "}\n', ".jsonl", r"m.jsonl:1: empty transcript for 'a.wav'"),
    ('{"audio": "a.wav"}\n', ".jsonl", r"m.jsonl:1: needs an object with 'audio' and 'text' keys"),
    ('{"audio": "a.wav", \n', ".jsonl", r"m.jsonl:1: not valid JSON"),
    ("file,text\na.wav,one\n", ".csv", r"m.csv:1: the header has no audio column"),
    ("audio,text\na.wav,one\nb.wav,\n", ".csv", r"m.csv:3: empty transcript for 'b.wav'"),
])
def test_manifest_errors_name_file_and_line(tmp_path, content, suffix, match):
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    sf.write(tmp_path / "b.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / f"m{suffix}").write_text(content)
    with pytest.raises(ManifestError, match=match) as e:
        load_manifest(tmp_path / f"m{suffix}")
    assert "\n" not in str(e.value)


def test_folder_without_transcript_is_refused(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(ManifestError, match=r"a.wav: no transcript a.txt beside it"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no such file or folder"):
        load_manifest(tmp_path / "nothing")


def test_char_tokenizer_round_trip_and_hf_twin():
    from archlab.data.speech.text import CharTokenizer

    tok = CharTokenizer.from_texts(["set a timer", "call mom"])
    ids = tok.encode("call a timer")
    assert tok.decode(ids) == "call a timer" and tok.decode(ids + [0, 5]) == "call a timer"
    assert tok.decode(tok.encode("call 9")) == "call "  # unknown characters are <unk>, dropped on decoding
    hf = tok.to_hf()
    assert hf("call a timer", add_special_tokens=False)["input_ids"] == ids
    assert hf.decode([1, *ids, 0], skip_special_tokens=True) == "call a timer"
