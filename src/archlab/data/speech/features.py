"""Whisper's log-mel spectrogram, computed in torch.

    S = |STFT(x)|²  (n_fft 400, hop 160, periodic Hann, centred with reflect padding; last frame dropped)
    M = mel · S      (Slaney mel scale, Slaney area normalisation; 80 or 128 bins, 0 … 8 kHz)
    L = log10(max(M, 1e-10));  L = max(L, max(L) − 8);  features = (L + 4) / 4

The maximum is per utterance. 30 s of audio (480,000 samples) gives 3000 frames, the input of
an encoder with 1500 positions after its stride-2 convolution.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np
import torch

from archlab.data.speech.audio import SAMPLE_RATE, load_audio

N_FFT = 400
HOP = 160
N_SAMPLES_PER_FRAME = HOP

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = 3.0 * f / 200.0
    logstep = np.log(6.4) / 27.0
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / logstep, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)


@lru_cache(maxsize=None)
def _mel_numpy(n_mels: int) -> np.ndarray:
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz = _mel_to_hz(mel_pts)
    lower = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1] - hz[:-2])[:, None]
    upper = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:] - hz[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (hz[2:] - hz[:-2]))[:, None]  # each triangle has unit area (Slaney)


def mel_filters(n_mels: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (n_mels, 201) Slaney filter bank, built once per (n_mels, device, dtype): do not modify it."""
    if n_mels < 1:
        raise ValueError(f"n_mels must be ≥ 1, got {n_mels}")
    return _mel_tensor(n_mels, torch.device(device or "cpu"), dtype)


@lru_cache(maxsize=None)
def _mel_tensor(n_mels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(_mel_numpy(n_mels)).to(device=device, dtype=dtype)


def pad_or_trim(array: ArrayT, length: int, axis: int = -1) -> ArrayT:
    """Zero-pad or cut ``array`` (numpy or torch) to ``length`` along ``axis``."""
    n = array.shape[axis]
    if isinstance(array, torch.Tensor):
        if n > length:
            return array.narrow(axis, 0, length)
        if n < length:
            pad = [0, 0] * (array.dim() - 1 - (axis % array.dim())) + [0, length - n]
            return torch.nn.functional.pad(array, pad)
        return array
    if n > length:
        return np.take(array, np.arange(length), axis=axis)
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return np.pad(array, widths)
    return array


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = 80, padding: int = 0,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """audio (T,) or (B, T) at 16 kHz -> (n_mels, frames) or (B, n_mels, frames), frames = T // 160
    (after ``padding`` zeros are appended)."""
    x = audio if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio, dtype=np.float32))
    x = x.to(device=device, dtype=torch.float32)
    if x.dim() not in (1, 2):
        raise ValueError(f"audio must be (samples,) or (batch, samples), got shape {tuple(x.shape)}")
    single = x.dim() == 1
    if single:
        x = x[None]
    if padding:
        x = torch.nn.functional.pad(x, (0, padding))
    window = torch.hann_window(N_FFT, device=x.device)
    filters = mel_filters(n_mels, device=x.device)
    # One STFT per utterance: measured 4× faster on CPU than one batched call, whose (B, 201, F)
    # complex output is strided badly for the power and the matmul that follow.
    rows = []
    for row in x:
        stft = torch.stft(row, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
        power = stft[:, :-1].abs() ** 2
        log = torch.clamp(filters @ power, min=1e-10).log10()
        rows.append((torch.maximum(log, log.max() - 8.0) + 4.0) / 4.0)
    return rows[0] if single else torch.stack(rows)


class LogMelFrontEnd:
    """Audio (1-D arrays at 16 kHz, or file paths) -> a batch (B, n_mels, n_frames) of features:
    each utterance zero-padded or trimmed to n_frames·160 samples (30 s for 3000 frames)."""

    def __init__(self, n_mels: int = 80, n_frames: int = 3000, device: torch.device | str | None = None) -> None:
        if n_frames < 1:
            raise ValueError(f"n_frames must be ≥ 1, got {n_frames}")
        self.n_mels, self.n_frames, self.device = n_mels, n_frames, device

    def __call__(self, items: Sequence[np.ndarray | str | Path]) -> torch.Tensor:
        n = self.n_frames * N_SAMPLES_PER_FRAME
        waves = [pad_or_trim(load_audio(a) if isinstance(a, (str, Path)) else np.asarray(a, np.float32), n)
                 for a in items]
        return log_mel_spectrogram(np.stack(waves), self.n_mels, device=self.device)
