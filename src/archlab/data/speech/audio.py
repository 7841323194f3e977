"""16 kHz mono audio from files (through ``soundfile``) and a band-limited resampler.

Resampling by a rational factor L/M (``math.gcd``): y[n] = Σ_k x[k] · h(n·M/L − k), with h a
Kaiser-windowed sinc (the window centred on each output instant, like the sinc) whose cut-off
is the lower of the two Nyquist frequencies, less a 3 % guard band (anti-aliasing when going
down, no imaging when going up), evaluated as one polyphase table of L phases, each normalised
to unit gain at DC. Output n = j·L + r has phase (r·M) mod L and starts at input j·M + ⌊r·M/L⌋,
so each of the L phases is one matrix-vector product over a strided (copy-free) window view of
the input: memory stays O(T), and 30 s at 44.1 kHz takes about 10 ms. Measured: a 1 kHz tone
from 8/22.05/44.1/48 kHz within 5e-5 of the exact 16 kHz sine; a 10 kHz tone from 48 kHz
attenuated by 90 dB (tests/test_speech_frontend.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file that cannot be used as audio; the message is one line naming the file."""


def _kernel(up: int, down: int, *, zeros: int = 16, beta: float = 8.6) -> tuple[np.ndarray, int]:
    """Polyphase filter taps (up, 2·width + 1) and the half-width in input samples."""
    cutoff = min(1.0, up / down) * 0.97  # of the input Nyquist; a little guard band
    width = int(math.ceil(zeros / cutoff))
    k = np.arange(-width, width + 1, dtype=np.float64)
    phase = np.arange(up, dtype=np.float64) / up  # fractional input offset of output phase p = (n·down) mod up
    t = k[None, :] - phase[:, None]  # distance (in input samples) from the output instant to each tap
    window = np.i0(beta * np.sqrt(np.clip(1.0 - (t / (width + 1)) ** 2, 0.0, 1.0))) / np.i0(beta)
    taps = cutoff * np.sinc(cutoff * t) * window  # the window centred on the output instant, like the sinc
    return taps / taps.sum(axis=1, keepdims=True), width  # unit gain at DC for every phase


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """``x`` (T,) at ``orig_sr`` -> float32 at ``new_sr`` (length ⌈T·new/orig⌉)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"resample takes one channel (samples,), got shape {x.shape}")
    if orig_sr == new_sr:
        return x.astype(np.float32)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    taps, width = _kernel(up, down)
    n_out = -(-len(x) * up // down)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, (width, width + 1)), 2 * width + 1)
    out = np.empty(n_out)
    for r in range(min(up, n_out)):  # one phase: outputs r, r + L, r + 2L, ...
        rows = windows[(r * down) // up :: down][: len(range(r, n_out, up))]
        out[r::up] = rows @ taps[(r * down) % up]
    return out.astype(np.float32)


def as_mono_16k(samples: np.ndarray, sr: int) -> np.ndarray:
    """(T,) or (T, channels) samples at ``sr`` -> float32 mono at 16 kHz (channels averaged)."""
    a = np.asarray(samples, dtype=np.float32)
    if a.ndim == 2:
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (samples, channels), got shape {a.shape}")
    return resample(a, sr, SAMPLE_RATE)


def load_audio(path: str | Path) -> np.ndarray:
    """A WAV/FLAC/OGG (whatever libsndfile reads) file -> float32 mono at 16 kHz."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a folder, not an audio file")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with a multi-line text
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AudioError(f"{p}: not a readable audio file (soundfile: {reason})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: empty (0 samples)")
    return as_mono_16k(data, sr)
