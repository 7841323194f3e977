"""Speech → text (corpus 'speech'): teacher-forced character loss while training, word and
character error rates of greedy transcriptions when scored.

The data is ``data.speech``: a corpus spoken by espeak-ng (generated once into the cache
folder; archlab.data.speech.synth) or the user's folder with a manifest per split. Utterances
are featurised once per split to the family's ``n_mels`` × ``2 · n_audio_ctx`` log-mel frames
(archlab.data.speech.dataset). Transcripts are normalised (lowercase words) and tokenised as
characters of ``data.speech.alphabet`` (archlab.data.speech.text.CharTokenizer).

``train.seq_len`` is the decoder's width in tokens: it must hold every split's longest
transcript plus its start token (so a ``train.tokens`` budget and ``train.eval_tokens`` count
padded decoder slots, ``ceil(tokens / seq_len)`` utterances). Scores: ``wer`` and ``cer``
(jiwer, corpus-level: total edits over total reference words / characters) of greedy decoding
with the cache, and ``loss`` (mean nats per target character, end token included).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from archlab.registry import ConfigError
from archlab.train.objectives.base import Objective

SPLITS = ("train", "validation", "test")
_SCORES = ("wer", "cer", "loss")


def _needs_speech_extra() -> None:
    missing = []
    for mod in ("soundfile", "jiwer"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ConfigError(f"data.corpus: 'speech' needs {' and '.join(missing)} (pip install -e '.[speech]')")


def _speech_cache(cfg) -> Path:
    """``<data.cache_dir or the default cache>/speech``: generated corpora and feature files."""
    from archlab.data import default_cache_dir

    root = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir is not None else default_cache_dir()
    return root / "speech"


def corpus_folder(cfg) -> Path:
    """Where the run's utterances are: ``data.speech.path``, or the generated corpus in the cache."""
    s = cfg.data.speech
    if s.path is not None:
        return Path(s.path).expanduser()
    return _speech_cache(cfg) / f"espeak-seed{s.seed}-{s.n_train}-{s.n_valid}-{s.n_test}"


def _manifest(folder: Path, split: str) -> Path:
    for cand in (folder / f"{split}.jsonl", folder / f"{split}.csv", folder / split):
        if cand.exists():
            return cand
    raise ConfigError(f"data.speech.path: {folder} has no {split}.jsonl, {split}.csv or {split}/ folder "
                      f"(each of {', '.join(SPLITS)} is needed)")


def load_splits(cfg, tokenizer: Any, splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """The named splits of a speech config, featurised (cached beside the corpus)."""
    from archlab.data.speech.dataset import build_split
    from archlab.data.speech.manifest import ManifestError, load_manifest
    from archlab.data.speech.synth import generate_corpus

    _needs_speech_extra()
    s, opts = cfg.data.speech, cfg.model.family_config()
    folder = corpus_folder(cfg)
    if s.path is None:
        try:
            generate_corpus(folder, n_train=s.n_train, n_valid=s.n_valid, n_test=s.n_test, seed=s.seed)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"data.speech: {e}") from None
    elif not folder.is_dir():
        raise ConfigError(f"data.speech.path: {folder} is not a folder")
    cache = _speech_cache(cfg) / "features"
    out = {}
    for split in splits:
        src = _manifest(folder, split)
        try:
            out[split] = build_split(split, load_manifest(src), tokenizer, n_mels=opts.n_mels,
                                     n_frames=2 * opts.n_audio_ctx, where=str(src), cache_dir=cache)
        except (ManifestError, ValueError) as e:
            raise ConfigError(f"data.speech: {e}") from None
    return out


def check_lengths(splits: Mapping[str, Any], *, seq_len: int, max_seq_len: int) -> None:
    """Every transcript fits the decoder: start token + characters ≤ train.seq_len ≤ model.max_seq_len."""
    for name, sp in splits.items():
        need = sp.max_text_len
        if need > seq_len:
            raise ConfigError(f"train.seq_len: {seq_len} is shorter than split {name}'s longest transcript "
                              f"({need - 1} characters + the start token); allowed: ≥ {need}")
    if seq_len > max_seq_len:
        raise ConfigError(f"train.seq_len: {seq_len} exceeds model.max_seq_len {max_seq_len} (the decoder's "
                          "n_text_ctx)")


@torch.no_grad()
def evaluate_speech(model: Any, split: Any, *, tokenizer: Any, batch_size: int, max_utterances: int | None = None,
                    max_new_tokens: int = 0, device: Any = None, autocast: Any = None,
                    progress: bool = False) -> dict[str, Any]:
    """wer, cer (greedy decoding with the cache) and loss (teacher-forced, nats per target) on
    the first ``max_utterances`` of ``split``; also ``utterances`` and the first few
    ``examples`` (reference, hypothesis)."""
    import contextlib

    import jiwer
    import numpy as np

    from archlab.models.lm import IGNORE_INDEX
    from archlab.models.echo import greedy_decode

    n = len(split) if max_utterances is None else min(len(split), max_utterances)
    device = device or next(model.parameters()).device
    ctx = autocast or contextlib.nullcontext
    limit = model.n_text_ctx
    new = max_new_tokens or (max(len(t) for t in split.tokens[:n]) + 10)
    new = min(new, limit - 1)
    was = model.training
    model.eval()
    hyps, nll, count = [], 0.0, 0
    steps = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="transcribing", unit="batch", leave=False)
    try:
        for lo in steps:
            idx = np.arange(lo, min(n, lo + batch_size))
            feats, labels = split.batch(idx, ignore_index=IGNORE_INDEX)
            feats, labels = feats.to(device), labels.to(device)
            with ctx():
                memory = model.encode(feats)  # once for the loss and the transcription
                out = model(None, targets=labels, memory=memory)
                k = int((labels[:, 1:] != IGNORE_INDEX).sum())
                nll += float(out.nll) * k
                count += k
                start = torch.full((len(idx), 1), split.sot, dtype=torch.long, device=device)
                ids = greedy_decode(model, None, start, memory=memory, max_new_tokens=new, eos_token_id=split.eot)
            hyps += [tokenizer.decode(r[1:]).strip() for r in ids.tolist()]
    finally:
        model.train(was)
    refs = split.texts[:n]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {"wer": float(words.wer), "cer": float(chars.cer), "loss": nll / max(count, 1), "utterances": n,
            "examples": [[r, h] for r, h in zip(refs[:3], hyps[:3])]}


@torch.no_grad()
def transcribe_run(run: Any, files: list[str], *, batch: int, max_new_tokens: int | None,
                   on_error: Callable[[str], None], progress: Callable[[int], None] | None = None) -> list[dict]:
    """[{"file", "text"}] of greedy transcriptions by a loaded speech run (Echo or Whisper
    family), through archlab's own front end; an unreadable or too long file goes to ``on_error``."""
    from archlab.data.speech.audio import AudioError, load_audio
    from archlab.data.speech.features import N_SAMPLES_PER_FRAME, log_mel_spectrogram, pad_or_trim
    from archlab.models.echo import greedy_decode

    opts = run.cfg.model.family_config()
    n = 2 * opts.n_audio_ctx * N_SAMPLES_PER_FRAME
    good: list[tuple[str, Any]] = []
    for f in files:
        try:
            audio = load_audio(f)
        except AudioError as e:
            on_error(str(e))
            continue
        if len(audio) > n:
            on_error(f"{f}: lasts {len(audio) / 16000:.2f} s, longer than the model's audio context ({n / 16000:g} s)")
            continue
        good.append((str(f), log_mel_spectrogram(pad_or_trim(audio, n), opts.n_mels)))
    tok, model = run.tokenizer, run.model.eval()
    new = min(max_new_tokens or model.n_text_ctx, model.n_text_ctx - 1)
    out = []
    for i in range(0, len(good), batch):
        chunk = good[i:i + batch]
        feats = torch.stack([x for _, x in chunk])
        start = torch.full((len(chunk), 1), tok.sot_id, dtype=torch.long)
        ids = greedy_decode(model, feats, start, max_new_tokens=new, eos_token_id=tok.eot_id)
        out += [{"file": name, "text": tok.decode(r[1:]).strip()} for (name, _), r in zip(chunk, ids.tolist())]
        if progress is not None:
            progress(len(chunk))
    return out


class SpeechObjective(Objective):
    kind = "speech"
    inputs = "audio"
    val_metrics = ("loss", "wer", "cer")
    primary = "wer"

    def handles(self, data_cfg) -> bool:
        return data_cfg.corpus == "speech"

    def tokenizer_kind(self, cfg) -> str:
        return "chars"

    def new_tokenizer(self, cfg, *, log: Callable[[str], None] | None) -> Any:
        from archlab.data.speech.text import CharTokenizer

        return CharTokenizer(cfg.data.speech.alphabet)

    def prepare(self, cfg, tokenizer: Any, run_dir: Path) -> Mapping[str, Any]:
        if tokenizer.alphabet != "".join(sorted(cfg.data.speech.alphabet)):
            raise ConfigError(f"data.speech.alphabet: the run's tokenizer.json in {run_dir} has another alphabet")
        splits = load_splits(cfg, tokenizer)
        check_lengths(splits, seq_len=cfg.train.seq_len, max_seq_len=cfg.model.max_seq_len)
        return splits

    def sampler(self, train: Any, cfg, *, ignore_index: int, rank: int, world: int) -> Any:
        from archlab.data.speech.dataset import SpeechSampler

        t = cfg.train
        return SpeechSampler(train, batch_size=t.batch, seed=t.seed, ignore_index=ignore_index, rank=rank,
                             world_size=world)

    def evaluate(self, model: Any, split: Any, cfg, *, tokenizer: Any, batch_size: int, limit: int | None,
                 device: Any, autocast: Any) -> dict[str, float]:
        """The limit is in decoder slots: the first ``ceil(limit / train.seq_len)`` utterances."""
        n = None if limit is None else -(-limit // cfg.train.seq_len)
        res = evaluate_speech(model, split, tokenizer=tokenizer, batch_size=batch_size, max_utterances=n,
                              max_new_tokens=cfg.data.speech.max_new_tokens, device=device, autocast=autocast)
        return {k: v for k, v in res.items() if k != "examples"}

    def metric_names(self, exp) -> list[str]:
        return list(_SCORES)

    def check_experiment(self, exp, ev: dict, path: Path) -> None:
        if "seq_lens" in ev:
            raise ConfigError(f"{path}: eval.seq_lens: not used by a speech experiment (utterances are scored whole)")

    def experiment_metrics(self, exp, trainer) -> tuple[dict[str, Any], dict[str, Any]]:
        """wer, cer and loss on ``eval.split`` (its first ``ceil(eval.max_tokens / seq_len)``
        utterances; all without a cap)."""
        t = trainer.cfg.train
        cap = exp.eval_max_tokens
        n = None if cap is None else -(-cap // t.seq_len)
        res = evaluate_speech(trainer.model, trainer.streams[exp.eval_split], tokenizer=trainer.tokenizer, batch_size=trainer.micro,
                              max_utterances=n, max_new_tokens=trainer.cfg.data.speech.max_new_tokens,
                              device=trainer.device, autocast=trainer.autocast)
        return ({k: res[k] for k in _SCORES} | {"utterances": res["utterances"]},
                {"examples": res["examples"]})

    def cli_eval(self, run, *, split: str, batch: int, max_tokens: int | None, seq_len: int | None,
                 progress: bool) -> tuple[dict[str, Any], str]:
        if split not in SPLITS:
            raise ConfigError(f"--split: '{split}'; allowed: {', '.join(SPLITS)}")
        if seq_len is not None:
            raise ConfigError("--seq-len: not used for a speech run (utterances are transcribed whole)")
        cfg = run.cfg
        sp = load_splits(cfg, run.tokenizer, (split,))[split]
        n = None if max_tokens is None else max(1, math.ceil(max_tokens / cfg.train.seq_len))
        res = evaluate_speech(run.model, sp, tokenizer=run.tokenizer, batch_size=batch, max_utterances=n,
                              max_new_tokens=cfg.data.speech.max_new_tokens, progress=progress)
        return res, "{split}: WER {wer:.4f}  CER {cer:.4f}  loss {loss:.4f} nats  ({utterances} utterances, step {step})"
