"""The speech front end: Whisper's log-mel features (parity with transformers' Whisper feature
extractor, and with openai-whisper when installed, on real speech from espeak-ng), the mel
filter bank, the resampler, and one-line errors for files that are not usable audio."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from archlab.data.speech.audio import AudioError, as_mono_16k, load_audio, resample
from archlab.data.speech.features import LogMelFrontEnd, log_mel_spectrogram, mel_filters, pad_or_trim


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """A sentence spoken by espeak-ng (22.05 kHz WAV), loaded at 16 kHz."""
    exe = shutil.which("espeak-ng")
    assert exe, "espeak-ng is not installed (make test installs it: apt-get install espeak-ng)"
    path = tmp_path_factory.mktemp("speech") / "s.wav"
    subprocess.run([exe, "-v", "en-us", "-s", "160", "-w", str(path), "set a timer for twenty five minutes"],
                   check=True, capture_output=True)
    return load_audio(path)


def test_mel_filter_bank_is_slaney():
    from transformers.audio_utils import mel_filter_bank

    for n in (80, 128):
        ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n, min_frequency=0.0, max_frequency=8000.0,
                              sampling_rate=16000, norm="slaney", mel_scale="slaney")
        np.testing.assert_allclose(mel_filters(n, dtype=torch.float64).numpy(), ref.T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_parity_with_transformers_whisper_features(speech, n_mels):
    from transformers import WhisperFeatureExtractor

    ref = WhisperFeatureExtractor(feature_size=n_mels)(speech, sampling_rate=16000, return_tensors="np")
    ours = log_mel_spectrogram(pad_or_trim(speech, 480000), n_mels).numpy()
    assert ours.shape == ref.input_features[0].shape == (n_mels, 3000)
    assert np.abs(ours - ref.input_features[0]).max() <= 1e-3


def test_parity_with_openai_whisper(speech):
    whisper_audio = pytest.importorskip("whisper.audio")  # optional peer
    ref = whisper_audio.log_mel_spectrogram(torch.from_numpy(pad_or_trim(speech, 480000)), 80)
    assert (log_mel_spectrogram(pad_or_trim(speech, 480000), 80) - ref).abs().max() <= 1e-3


def test_batch_rows_equal_single_utterances(speech):
    quiet = speech[:32000] * 0.01  # a different level: the clamp at max − 8 is per utterance
    batch = log_mel_spectrogram(np.stack([speech[:32000], quiet]))
    for i, a in enumerate((speech[:32000], quiet)):
        torch.testing.assert_close(batch[i], log_mel_spectrogram(a))
    assert batch.shape == (2, 80, 200)


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 44101, 48000])  # 44101: 16000 phases
def test_resampler_keeps_a_tone(sr):
    t = np.arange(int(0.5 * sr)) / sr
    y = resample(np.sin(2 * np.pi * 1000 * t), sr, 16000)
    assert len(y) == -(-len(t) * 16000 // sr)
    ref = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / 16000)
    mid = slice(400, len(y) - 400)  # away from the edges
    assert np.abs(y[mid] - ref[mid]).max() < 2e-4


def test_resampler_removes_what_16k_cannot_hold():
    t = np.arange(48000) / 48000
    y = resample(np.sin(2 * np.pi * 10000 * t), 48000, 16000)  # 10 kHz > 8 kHz Nyquist
    assert 20 * np.log10(np.sqrt(np.mean(y[400:-400] ** 2)) / np.sqrt(0.5)) < -60


def test_identity_and_mono():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert np.array_equal(resample(x, 16000, 16000), x)
    stereo = np.stack([x, -x + 2], axis=1)
    np.testing.assert_allclose(as_mono_16k(stereo, 16000), np.ones(1000), atol=1e-6)


def test_flac_round_trip(tmp_path, speech):
    sf.write(tmp_path / "a.flac", speech, 16000, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac"), speech, atol=1e-6)


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "text.wav").write_text("not audio\n")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "full.wav", np.zeros(16000, np.float32), 16000)
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:30])
    cases = {"missing.wav": "no such file", "text.wav": "not a readable audio file", "empty.wav": r"empty \(0 samples\)",
             "cut.wav": "not a readable audio file|empty"}
    for name, what in cases.items():
        with pytest.raises(AudioError, match=what) as e:
            load_audio(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    assert issubclass(AudioError, ValueError)


def test_front_end_pads_and_trims(speech):
    fe = LogMelFrontEnd(n_mels=80, n_frames=3000)
    long = np.tile(speech, 20)  # > 30 s
    out = fe([speech, long])
    assert out.shape == (2, 80, 3000)
    torch.testing.assert_close(out[0], log_mel_spectrogram(pad_or_trim(speech, 480000)))
    torch.testing.assert_close(out[1], log_mel_spectrogram(long[:480000]))


def test_frontend_bench_runs_and_writes_ratios(tmp_path, capsys):
    from archlab.bench.frontend import main

    assert main(["--seconds", "0.5", "--batch", "2", "--rounds", "1", "--out", str(tmp_path / "fe.json")]) == 0
    out = json.loads((tmp_path / "fe.json").read_text())
    assert out["threads"] == 1 and out["speedup"]["transformers"] > 0
    assert "transformers / ours" in capsys.readouterr().out
