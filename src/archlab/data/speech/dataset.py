"""Speech splits for training: log-mel features padded to the model's audio context, and
transcripts as character ids framed by the start and end tokens.

A split's features are computed once, when the split is built (the front end is fast: about
3 ms per utterance here), and kept in memory as float16 (half the memory; log-mel values lie in
[-1.5, 2.5] after Whisper's normalisation, where float16 keeps 3 decimal digits, below the
front end's own parity tolerance). Each utterance is padded with silence to ``n_frames``, as
at transcription time, so training and inference see the same inputs.

    labels row = [SOT, c₁, …, cₙ, EOT, ignore, …]     (the batch's longest row sets the width)

The model reads ``labels[:, :-1]`` (padding read as EOT) and is scored on ``labels[:, 1:]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from archlab.data.examples import ExampleSampler
from archlab.data.speech.features import N_SAMPLES_PER_FRAME, log_mel_spectrogram, pad_or_trim
from archlab.data.speech.manifest import Utterance, normalise_text
from archlab.data.speech.text import CharTokenizer


@dataclass
class SpeechSplit:
    """One split: ``features`` (N, n_mels, n_frames) float16, ``tokens`` the character ids of
    each transcript (no start/end token), ``texts`` the normalised transcripts (WER references)."""

    name: str
    features: torch.Tensor
    tokens: list[np.ndarray]
    texts: list[str]
    sot: int
    eot: int

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def max_text_len(self) -> int:
        """The longest decoder input: n characters + the start token."""
        return max(len(t) for t in self.tokens) + 1

    def labels(self, index: np.ndarray, *, ignore_index: int) -> torch.Tensor:
        rows = [np.concatenate([[self.sot], self.tokens[i], [self.eot]]) for i in index]
        out = np.full((len(rows), max(len(r) for r in rows)), ignore_index, dtype=np.int64)
        for j, r in enumerate(rows):
            out[j, :len(r)] = r
        return torch.from_numpy(out)

    def batch(self, index: np.ndarray, *, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(features float32 (b, n_mels, n_frames), labels (b, longest + 2))."""
        index = np.asarray(index, dtype=np.int64)
        return self.features[torch.from_numpy(index)].float(), self.labels(index, ignore_index=ignore_index)


def featurise(utterances: list[Utterance], *, n_mels: int, n_frames: int, where: str,
              cache: Path | None = None) -> torch.Tensor:
    """Log-mel features of every utterance, padded with silence to ``n_frames`` (float16).
    An utterance longer than ``n_frames`` is refused in one line (trimming would cut words the
    transcript still has). ``cache``: a .npy file reused when present (written atomically)."""
    from archlab.data.speech.audio import load_audio

    if cache is not None and cache.is_file():
        arr = np.load(cache)
        if arr.shape == (len(utterances), n_mels, n_frames):
            return torch.from_numpy(arr)
    n = n_frames * N_SAMPLES_PER_FRAME
    out = np.empty((len(utterances), n_mels, n_frames), dtype=np.float16)
    for i, u in enumerate(utterances):
        audio = load_audio(u.audio)
        if len(audio) > n:
            raise ValueError(f"{where}: '{u.audio.name}' lasts {len(audio) / 16000:.2f} s, longer than the model's "
                             f"audio context of {n_frames} frames ({n / 16000:g} s); raise "
                             "model.family_options.n_audio_ctx (frames = 2 × n_audio_ctx) or drop the utterance")
        out[i] = log_mel_spectrogram(pad_or_trim(audio, n), n_mels).numpy().astype(np.float16)
    if cache is not None:
        from archlab.atomic import replace_atomically

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
                np.save(f, out)

        cache.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(cache, write)
    return torch.from_numpy(out)


def features_key(utterances: list[Utterance], *, n_mels: int, n_frames: int) -> str:
    """A name for the features of these utterances (their paths and sizes) at these settings."""
    h = hashlib.sha256(json.dumps([n_mels, n_frames]).encode())
    for u in utterances:
        st = u.audio.stat()
        h.update(f"{u.audio}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_split(name: str, utterances: list[Utterance], tokenizer: CharTokenizer, *, n_mels: int, n_frames: int,
                where: str, cache_dir: Path | None = None) -> SpeechSplit:
    """A :class:`SpeechSplit`; a transcript with a character outside the tokenizer's alphabet
    is refused in one line (it could never be transcribed)."""
    texts, tokens = [], []
    for u in utterances:
        text = normalise_text(u.text)
        if not text:
            raise ValueError(f"{where}: the transcript of '{u.audio.name}' is empty once normalised ({u.text!r})")
        bad = sorted({c for c in text if c not in tokenizer.stoi})
        if bad:
            raise ValueError(f"{where}: the transcript of '{u.audio.name}' has characters outside "
                             f"data.speech.alphabet: {''.join(bad)!r}")
        texts.append(text)
        tokens.append(np.asarray(tokenizer.encode(text), dtype=np.int64))
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"features-{name}-{features_key(utterances, n_mels=n_mels, n_frames=n_frames)}.npy"
    feats = featurise(utterances, n_mels=n_mels, n_frames=n_frames, where=where, cache=cache)
    return SpeechSplit(name=name, features=feats, tokens=tokens, texts=texts, sot=tokenizer.sot_id,
                       eot=tokenizer.eot_id)


class SpeechSampler(ExampleSampler):
    """Training batches of a speech split: ``batch(step) -> (features, labels)`` of
    ``batch // world`` utterances each, drawn with replacement as a pure function of (seed, step)."""

    def rows(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.batch(index, ignore_index=self.ignore_index)
