"""User speech corpora: a folder of audio files with same-named ``.txt`` transcripts, or a
JSONL / CSV manifest (``audio`` and ``text`` fields; audio paths relative to the manifest).

Every problem is refused in one line naming the file (and, for a manifest, the line): a missing
audio file, an empty transcript, a missing field or column, malformed JSON.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


class ManifestError(ValueError):
    """A corpus that cannot be read; the message is one line naming the file (and line)."""


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str
    speaker: str | None = None
    seconds: float | None = None


def normalise_text(s: str) -> str:
    """The form transcripts are scored in (WER/CER): lowercase, every character that is not a
    letter, digit, space or in-word apostrophe becomes a space, spaces collapsed."""
    s = re.sub(r"[^\w' ]|_", " ", s.lower())
    s = re.sub(r"(?<!\w)'|'(?!\w)", " ", s)
    return " ".join(s.split())


def _utterance(base: Path, audio: str | None, text: str | None, where: str, speaker=None, seconds=None) -> Utterance:
    if not audio:
        raise ManifestError(f"{where}: no audio path")
    if text is None or not str(text).strip():
        raise ManifestError(f"{where}: empty transcript for '{audio}'")
    path = (base / audio).resolve()
    if not path.is_file():
        raise ManifestError(f"{where}: audio '{audio}' does not exist")
    return Utterance(audio=path, text=str(text).strip(), speaker=None if speaker is None else str(speaker),
                     seconds=None if seconds is None else float(seconds))


def load_manifest(source: str | Path) -> list[Utterance]:
    """The utterances of a folder, a ``.jsonl`` or a ``.csv`` manifest, in file order."""
    src = Path(source)
    if not src.exists():
        raise ManifestError(f"{src}: no such file or folder")
    if src.is_dir():
        out = []
        for audio in sorted(p for p in src.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
            txt = audio.with_suffix(".txt")
            if not txt.is_file():
                raise ManifestError(f"{audio}: no transcript {txt.name} beside it")
            out.append(_utterance(src, audio.name, txt.read_text(encoding="utf-8"), str(txt)))
        if not out:
            raise ManifestError(f"{src}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in the folder")
        return out
    base = src.parent
    if src.suffix.lower() == ".jsonl":
        out = []
        for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{src}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "audio" not in row or "text" not in row:
                raise ManifestError(f"{src}:{n}: needs an object with 'audio' and 'text' keys")
            out.append(_utterance(base, row["audio"], row["text"], f"{src}:{n}", row.get("speaker"), row.get("seconds")))
        return out
    if src.suffix.lower() == ".csv":
        with open(src, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("audio", "text") if c not in (reader.fieldnames or [])]
            if missing:
                raise ManifestError(f"{src}:1: the header has no {' and no '.join(missing)} column "
                                    f"(got: {', '.join(reader.fieldnames or []) or 'nothing'})")
            return [_utterance(base, row["audio"], row["text"], f"{src}:{n}", row.get("speaker"), row.get("seconds") or None)
                    for n, row in enumerate(reader, 2)]
    raise ManifestError(f"{src}: not a folder, .jsonl or .csv manifest")
