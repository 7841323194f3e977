"""A speech corpus generated offline: sentences spoken by espeak-ng, 16 kHz mono WAV + JSONL.

Sentences come from templates (times, dates, numbers, short commands, word-list phrases) and are
written as they are spoken: lowercase words, numbers in words, no punctuation. A *speaker* is
an espeak-ng English voice with a variant (``en-us+f2``) and its own rate, pitch and loudness
ranges. Speakers and sentences are split between train / validation / test so that no speaker
and no sentence occurs in two splits: the held-out WER measures new voices saying new
sentences. Everything is a function of the seed (espeak-ng itself is deterministic).

    generate_corpus("runs/speech", n_train=2000, n_valid=100, n_test=100, seed=0)
    -> runs/speech/{train,validation,test}/000000.wav …, {split}.jsonl, corpus.json
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from archlab.data.speech.audio import SAMPLE_RATE, load_audio

SPLITS = ("train", "validation", "test")
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3")

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
        "twelve": "twelfth"}
MONTHS = "january february march april may june july august september october november december".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
WORDS = ("light lights door window music song kitchen bedroom office garden car radio alarm timer meeting "
         "dinner lunch coffee water weather news message email phone call video picture map train bus ticket "
         "doctor friend mother father sister brother family team class lesson book page story game movie "
         "red green blue yellow black white small big warm cold quiet loud early late next last first new "
         "open close start stop play pause turn call send read write find show check set move bring take "
         "today tomorrow tonight morning evening week weekend year time minute hour day night home work").split()
COMMANDS = ("turn on the {w}", "turn off the {w}", "open the {w}", "close the {w}", "play the next {w}",
            "call my {w}", "show me the {w}", "send a message to my {w}", "check the {w} for {day}",
            "stop the {w}", "find a {a} {w}", "read the {a} {w}", "move the {w} to the {w2}")


def number_words(n: int) -> str:
    """0 ≤ n ≤ 9999 in words: 2025 -> 'two thousand twenty five', 110 -> 'one hundred ten'."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number out of range 0..9999: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        head = _ONES[n // 100] + " hundred"
        return head if n % 100 == 0 else f"{head} {number_words(n % 100)}"
    head = _ONES[n // 1000] + " thousand"
    return head if n % 1000 == 0 else f"{head} {number_words(n % 1000)}"


def ordinal_words(n: int) -> str:
    """1 ≤ n ≤ 31 as an ordinal: 3 -> 'third', 21 -> 'twenty first', 20 -> 'twentieth'."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORD:
        words[-1] = _ORD[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def sentence(rng: random.Random) -> str:
    """One sentence from a template, as spoken."""
    kind = rng.randrange(5)
    if kind == 0:  # a time
        h, m = rng.randint(1, 12), rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50])
        t = f"{number_words(h)} o clock" if m == 0 else f"{number_words(h)} {number_words(m)}"
        return rng.choice(["set an alarm for {t}", "wake me up at {t}", "the bus leaves at {t}",
                           "remind me at {t} to {v} the {w}"]).format(t=t, v=rng.choice(["check", "open", "call"]),
                                                                       w=rng.choice(WORDS))
    if kind == 1:  # a date
        d = f"{rng.choice(MONTHS)} {ordinal_words(rng.randint(1, 31))}"
        return rng.choice(["the meeting is on {d}", "my birthday is {d}", "book a table for {day} {d}",
                           "the {w} is due on {d}"]).format(d=d, day=rng.choice(DAYS), w=rng.choice(WORDS))
    if kind == 2:  # a number
        n = number_words(rng.choice([rng.randint(0, 99), rng.randint(100, 999), rng.randint(1000, 9999)]))
        return rng.choice(["set a timer for {n} minutes", "the code is {n}", "add {n} to the list",
                           "it costs {n} dollars", "call extension {n}"]).format(n=n)
    if kind == 3:  # a command
        w, w2 = rng.sample(WORDS, 2)
        return rng.choice(COMMANDS).format(w=w, w2=w2, a=rng.choice(WORDS), day=rng.choice(DAYS))
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))  # a phrase from the word list


def speakers(seed: int) -> dict[str, list[dict]]:
    """Every voice × variant as a speaker with its own rate/pitch/amplitude, split 70/15/15
    between the splits (disjoint)."""
    rng = random.Random(f"speakers-{seed}")
    pool = [{"voice": f"{v}+{var}", "rate": rng.randint(135, 185), "pitch": rng.randint(30, 70),
             "amplitude": rng.randint(80, 140)} for v in VOICES for var in VARIANTS]
    rng.shuffle(pool)
    a, b = int(0.7 * len(pool)), int(0.85 * len(pool))
    out = {"train": pool[:a], "validation": pool[a:b], "test": pool[b:]}
    for split, group in out.items():
        for i, s in enumerate(group):
            s["id"] = f"{split[:2]}{i:03d}-{s['voice']}"
    return out


def plan(*, n_train: int, n_valid: int, n_test: int, seed: int) -> dict[str, list[dict]]:
    """The utterances of every split: (text, speaker, rate, pitch), sentences unique across splits."""
    rng = random.Random(f"sentences-{seed}")
    spk = speakers(seed)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, n in zip(SPLITS, (n_train, n_valid, n_test)):
        items, tries = [], 0
        while len(items) < n:
            tries += 1
            if tries > 200 * max(n, 1) + 1000:
                raise ValueError(f"cannot draw {n} distinct {split} sentences; ask for fewer utterances")
            text = sentence(rng)
            if text in seen:
                continue
            seen.add(text)
            s = rng.choice(spk[split])
            items.append({"text": text, "speaker": s["id"], "voice": s["voice"],
                          "rate": s["rate"] + rng.randint(-10, 10), "pitch": s["pitch"] + rng.randint(-5, 5),
                          "amplitude": s["amplitude"]})
        out[split] = items
    return out


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (make test installs it)")
    return exe


def speak(item: dict, path: Path, exe: str) -> float:
    """Speak one utterance into a 16 kHz mono 16-bit WAV at ``path``; returns its duration (s)."""
    import soundfile as sf

    raw = path.with_suffix(".raw.wav")
    subprocess.run([exe, "-v", item["voice"], "-s", str(item["rate"]), "-p", str(item["pitch"]),
                    "-a", str(item["amplitude"]), "-w", str(raw), item["text"]], check=True, capture_output=True)
    audio = load_audio(raw)
    raw.unlink()
    sf.write(str(path), np.clip(audio, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


def generate_corpus(out_dir: str | Path, *, n_train: int, n_valid: int, n_test: int, seed: int = 0,
                    jobs: int = 2) -> dict:
    """Write the corpus into ``out_dir`` (built in a temporary folder beside it, then renamed, so
    an interrupted run leaves nothing that looks complete). A folder holding the same corpus is
    reused; one holding another is refused in one line."""
    out = Path(out_dir)
    settings = {"n_train": n_train, "n_valid": n_valid, "n_test": n_test, "seed": seed, "voices": list(VOICES),
                "variants": list(VARIANTS), "espeak": "espeak-ng", "sample_rate": SAMPLE_RATE}
    for k in ("n_train", "n_valid", "n_test"):
        if not isinstance(settings[k], int) or settings[k] < 0:
            raise ValueError(f"{k}: must be an integer ≥ 0, got {settings[k]!r}")
    meta = out / "corpus.json"
    if out.exists():
        if meta.exists():
            have = json.loads(meta.read_text())
            if have.get("settings") == settings:
                return have
            raise ValueError(f"{out}: holds a generated corpus with other settings ({have.get('settings')}); "
                             "choose another folder or delete it")
        raise ValueError(f"{out}: exists and is not a generated corpus (no corpus.json); choose another folder")
    exe = _espeak()
    utterances = plan(n_train=n_train, n_valid=n_valid, n_test=n_test, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        counts, digest = {}, hashlib.sha256()
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for split in SPLITS:
                (tmp / split).mkdir()
                items = utterances[split]
                paths = [tmp / split / f"{i:06d}.wav" for i in range(len(items))]
                seconds = list(pool.map(lambda ip: speak(ip[0], ip[1], exe), zip(items, paths)))
                lines = [json.dumps({"audio": f"{split}/{p.name}", "text": it["text"], "speaker": it["speaker"],
                                     "seconds": round(s, 4)}) for it, p, s in zip(items, paths, seconds)]
                text = "".join(line + "\n" for line in lines)
                (tmp / f"{split}.jsonl").write_text(text)
                digest.update(text.encode())
                counts[split] = {"utterances": len(items), "seconds": round(sum(seconds), 2),
                                 "speakers": len({it["speaker"] for it in items})}
        info = {"settings": settings, "counts": counts, "fingerprint": digest.hexdigest()[:16]}
        (tmp / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
