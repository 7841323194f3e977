"""``archlab bench frontend``: log-mel feature speed, ours against the Whisper front ends.

    archlab bench frontend                        # 8 utterances of 30 s, one thread
    archlab bench frontend --batch 1 --threads 2

Contenders on the same audio (seeded noise shaped like speech levels), interleaved round by
round in one process: ``ours`` (:func:`archlab.data.speech.features.log_mel_spectrogram`, one
call for the batch), ``transformers`` (``WhisperFeatureExtractor``, numpy or torch as it chooses, on the
audio as it is: ``padding="longest"``, no truncation, not its default 30 s) and,
when installed, ``openai-whisper`` (``whisper.audio.log_mel_spectrogram`` per utterance). The
headline is each peer's median time over ours (> 1: ours faster).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from archlab.atomic import write_text_atomic
from archlab.bench.interleave import interleaved, paired_ratio
from archlab.environment import benchmark_environment


def main(argv: list[str] | None = None, mode: str = "frontend") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options
    from archlab.data.speech.features import log_mel_spectrogram

    summary, examples = __doc__.split("\n\n")[:2]
    shared = common_options(rounds=10, max_foreign_cpu=None, threads=False, out="runs/bench/frontend.json")
    ap = ArgumentParser(prog=f"archlab bench {mode}", description=plain(summary), parents=[shared],
                        epilog="examples:\n" + examples.replace("    archlab", "  archlab"))
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each utterance")
    ap.add_argument("--batch", type=int, default=8, help="utterances per call")
    ap.add_argument("--n-mels", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or min(a.batch, a.rounds, a.n_mels, a.threads) < 1:
        ap.error("--seconds must be > 0 and --batch, --rounds, --n-mels, --threads ≥ 1")
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    audio = (0.1 * rng.standard_normal((a.batch, int(a.seconds * 16000)))).astype(np.float32)

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return run

    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=a.n_mels)
    runs = {"ours": timed(lambda: log_mel_spectrogram(audio, a.n_mels)),
            "transformers": timed(lambda: fe(list(audio), sampling_rate=16000, return_tensors="np",
                                             padding="longest", truncation=False))}
    if importlib.util.find_spec("whisper") is not None:
        import whisper.audio as wa

        runs["openai-whisper"] = timed(lambda: [wa.log_mel_spectrogram(torch.from_numpy(x), a.n_mels) for x in audio])
    for fn in runs.values():  # warm-up
        fn()
    res = interleaved(runs, rounds=a.rounds)
    out = {"batch": a.batch, "seconds": a.seconds, "n_mels": a.n_mels, "threads": a.threads,
           "median_s": {n: r["median"] for n, r in res["results"].items()},
           "speedup": {n: paired_ratio(res, n, "ours") for n in runs if n != "ours"},
           "environment": benchmark_environment()}
    for n, r in out["speedup"].items():
        print(f"{n} / ours = {r:.2f}x  ({out['median_s'][n] * 1e3:.1f} ms vs {out['median_s']['ours'] * 1e3:.1f} ms "
              f"for {a.batch} × {a.seconds:g} s)")
    if "openai-whisper" not in runs:
        print("openai-whisper is not installed: pip install openai-whisper to add it")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(a.out), json.dumps(out, indent=2) + "\n")
    return 0
