"""``archlab bench echo``: Echo against transformers' Whisper of the same dims, in one process.

    archlab bench echo                          # tiny shape: d 256, 4 + 4 layers, 4 heads, 5 s of audio
    archlab bench echo --threads 1 --rounds 6 --out runs/bench/echo.json

Contenders (random initialisation, nothing downloaded): ``whisper`` is
``WhisperForConditionalGeneration`` from a ``WhisperConfig`` of the same width, depth, heads,
feed-forward width, mel bins, audio context and vocabulary; ``echo`` is Echo's default recipe
(Givens rotations before RoPE + a clipped relative bias, positions in cross-attention);
``echo_rope`` is Echo with plain RoPE only (no relative bias, no positions in cross-attention).

* **train**: one AdamW step (forward, backward, update) on a batch of log-mel features and
  teacher-forced labels; the headline is Whisper's step time over each Echo's (> 1: Echo faster),
  the median of the per-round ratios of the interleaved rounds.
* **decode**: batch 1, greedy, a fixed number of new tokens after the start token, each model
  through its own ``generate``, and each Echo also through archlab's ``greedy_decode``
  (``<name>_own``: the lean path of archlab.models.echo_fastdecode); the same ratio.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from archlab.atomic import write_text_atomic
from archlab.bench.interleave import interleaved, paired_ratio
from archlab.environment import benchmark_environment


def _whisper(d: int, layers: int, heads: int, mels: int, audio_ctx: int, text_ctx: int, vocab: int):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=vocab, num_mel_bins=mels, d_model=d, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d,
                        decoder_ffn_dim=4 * d, max_source_positions=audio_ctx, max_target_positions=text_ctx,
                        pad_token_id=vocab - 2, bos_token_id=vocab - 2, eos_token_id=vocab - 2,
                        decoder_start_token_id=vocab - 1, begin_suppress_tokens=None, suppress_tokens=None)
    return WhisperForConditionalGeneration(cfg)


def _echo(d: int, layers: int, heads: int, mels: int, audio_ctx: int, text_ctx: int, vocab: int, **recipe: Any):
    from archlab.hf.echo import Echo, EchoConfig

    return Echo(EchoConfig(n_mels=mels, n_audio_ctx=audio_ctx, n_audio_state=d, n_audio_head=heads,
                           n_audio_layer=layers, vocab_size=vocab, n_text_ctx=text_ctx, n_text_state=d,
                           n_text_head=heads, n_text_layer=layers, bos_token_id=vocab - 2, eos_token_id=vocab - 2,
                           pad_token_id=vocab - 2, decoder_start_token_id=vocab - 1, **recipe))


RECIPES: dict[str, dict[str, Any]] = {
    "echo": {},
    "echo_rope": dict(position="rope", max_rel_dist=0, cross_attention=False),
}


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None, mode: str = "echo") -> int:
    from archlab.argparsing import ArgumentParser, plain
    from archlab.bench.options import common_options

    summary, examples = __doc__.split("\n\n")[:2]
    shared = common_options(rounds=5, max_foreign_cpu=None, out="runs/bench/echo.json")
    ap = ArgumentParser(prog=f"archlab bench {mode}", description=plain(summary), parents=[shared],
                        epilog="examples:\n" + examples.replace("    archlab", "  archlab"))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4, help="encoder and decoder layers (each)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mels", type=int, default=80)
    ap.add_argument("--audio-ctx", type=int, default=250, help="encoder positions (frames / 2)")
    ap.add_argument("--text-ctx", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--new-tokens", type=int, default=48, help="greedy tokens per decode")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    for k in ("dim", "layers", "heads", "mels", "audio_ctx", "text_ctx", "vocab", "batch", "new_tokens", "rounds"):
        if getattr(a, k) < 1:
            ap.error(f"--{k.replace('_', '-')}: must be ≥ 1, got {getattr(a, k)}")
    if a.dim % a.heads:
        ap.error(f"--heads: {a.heads} must divide --dim {a.dim}")
    if a.new_tokens >= a.text_ctx:
        ap.error(f"--new-tokens: {a.new_tokens} must be below --text-ctx {a.text_ctx}")
    torch.manual_seed(a.seed)
    shape = dict(d=a.dim, layers=a.layers, heads=a.heads, mels=a.mels, audio_ctx=a.audio_ctx, text_ctx=a.text_ctx,
                 vocab=a.vocab)
    models = {"whisper": _whisper(**shape), **{n: _echo(**shape, **r) for n, r in RECIPES.items()}}
    feats = torch.randn(a.batch, a.mels, 2 * a.audio_ctx)
    labels = torch.randint(0, a.vocab - 2, (a.batch, a.text_ctx))
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}

    def train_step(name: str) -> Callable[[], float]:
        m, opt = models[name], opts[name]

        def run() -> float:
            m.train()

            def step():
                out = m(input_features=feats, labels=labels)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            return _timed(step)
        return run

    one = feats[:1]
    gen_kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, num_beams=1)

    def decode(name: str, own: bool = False) -> Callable[[], float]:
        m = models[name]

        def run() -> float:
            m.eval()
            with torch.no_grad():
                if own:
                    from archlab.models.echo import greedy_decode

                    start = torch.full((1, 1), a.vocab - 1)
                    return _timed(lambda: greedy_decode(m.model, one, start, max_new_tokens=a.new_tokens))
                return _timed(lambda: m.generate(input_features=one, **gen_kw))
        return run

    for name in models:  # warm-up: first calls allocate and pick kernels
        train_step(name)()
        decode(name)()
    train = interleaved({n: train_step(n) for n in models}, rounds=a.rounds)
    dec_runs = {n: decode(n) for n in models}
    own = [f"{n}_own" for n in RECIPES]  # archlab's greedy_decode (its lean path where the parts allow)
    for n in RECIPES:
        dec_runs[f"{n}_own"] = decode(n, own=True)
    dec = interleaved(dec_runs, rounds=a.rounds)
    out = {
        "shape": {**shape, "batch": a.batch, "frames": 2 * a.audio_ctx, "new_tokens": a.new_tokens},
        "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
        "train_step_s": {n: r["median"] for n, r in train["results"].items()},
        "decode_s": {n: r["median"] for n, r in dec["results"].items()},
        "train_speedup_vs_whisper": {n: paired_ratio(train, "whisper", n) for n in RECIPES},
        "decode_speedup_vs_whisper": {n: paired_ratio(dec, "whisper", n) for n in (*RECIPES, *own)},
        "environment": benchmark_environment(),
        "rounds": a.rounds,
    }
    print(f"shape {out['shape']}; params {out['params']}")
    for n in RECIPES:
        print(f"train step: whisper / {n} = {out['train_speedup_vs_whisper'][n]:.2f}x  "
              f"({out['train_step_s']['whisper']:.3f} s vs {out['train_step_s'][n]:.3f} s)")
    for n in (*RECIPES, *own):
        print(f"greedy decode (batch 1, {a.new_tokens} tokens): whisper / {n} = "
              f"{out['decode_speedup_vs_whisper'][n]:.2f}x  ({out['decode_s']['whisper']:.3f} s vs {out['decode_s'][n]:.3f} s)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(a.out), json.dumps(out, indent=2) + "\n")
    return 0
