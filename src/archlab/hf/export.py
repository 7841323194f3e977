"""``archlab export RUN --hf DIR``: a trained run as a Hugging Face ``transformers`` folder.

The folder holds ``config.json`` (an :class:`~archlab.hf.configuration.ArchlabConfig`),
``generation_config.json``, ``model.safetensors``, ``tokenizer.json`` and
``tokenizer_config.json``. After ``import archlab.hf`` (the registration step), it loads offline with
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``, whose
ids are archlab's: the BPE file is the run's own ``tokenizers`` JSON copied byte for byte, and
the byte tokenizer (archlab's run folders store it as ``{"kind": "bytes"}``, which transformers
cannot read) is written as :meth:`~archlab.data.tokenizer.ByteTokenizer.to_json`'s byte-level
BPE without merges, ids 0..255 = the bytes. ``archlab.data.load_tokenizer(DIR)`` reads either
back as archlab's tokenizer. A synthetic task's word vocabulary is copied as is (archlab-only).

``config.json`` also records the run's data and train config and its step
(``archlab_run``), so ``archlab eval DIR`` / ``archlab generate DIR`` open the folder like the
run (:func:`archlab.train.run.load_run`).

A speech run is exported as its recogniser's own folder: family ``echo`` as an Echo folder
(:func:`archlab.hf.echo_processing.save_echo`: ``Echo``, the character tokenizer as a fast
tokenizer, the feature extractor; ``transformers.pipeline("automatic-speech-recognition")``
and ``archlab transcribe DIR`` read it), family ``whisper`` as a stock
``WhisperForConditionalGeneration`` folder with the same tokenizer and a
``WhisperFeatureExtractor`` of the run's audio context.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILE = "tokenizer.json"


def export_run(run: Any, out_dir: str | Path) -> Path:
    """Convert a run folder or checkpoint file (or an already loaded
    :class:`~archlab.train.run.LoadedRun`) into a ``from_pretrained`` folder at ``out_dir``.

    The weights are the checkpoint's, bit for bit, in their stored dtype. Returns ``out_dir``.
    Raises :class:`~archlab.train.checkpoint.CheckpointError` for a missing/corrupt run and a
    one-line :class:`~archlab.registry.ConfigError` when ``out_dir`` is not a folder (both are
    mapped to ``archlab: error: ...`` by the CLI, as is the ``ImportError`` of ``archlab.hf``
    when transformers is missing or too old).
    """
    from archlab.registry import ConfigError

    from archlab.hf.configuration import ArchlabConfig
    from archlab.hf.modeling import ArchlabForCausalLM
    from archlab.train.run import LoadedRun, load_run

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--hf {out}: exists and is not a folder")
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    family = loaded.cfg.model.family
    if family in SPEECH_EXPORTS:
        out.mkdir(parents=True, exist_ok=True)
        SPEECH_EXPORTS[family](loaded, out)
        return out
    if family != "lm":
        raise ConfigError(f"export --hf: model family '{family}' has no Hugging Face adapter; "
                          f"allowed: lm, {', '.join(SPEECH_EXPORTS)}")
    model_cfg = loaded.model.cfg
    if loaded.cfg.train.dynamics:
        # The adapted values (rotary base, window) live in the checkpoint's controller state,
        # not in the model config the HF folder is built from: they are written into the
        # config's knobs, and a model built from that config must reproduce the run's.
        from archlab.train.dynamics import adapted_model_config

        model_cfg = adapted_model_config(model_cfg, loaded.model, loaded.cfg.train.dynamics)
        _check_rebuilds(loaded.model, model_cfg)
    out.mkdir(parents=True, exist_ok=True)

    tok_name = getattr(loaded.tokenizer, "name", None)
    # Wrap the loaded LM in place (no copy); the extra config keys tell HF users how the
    # model was tokenised without needing archlab ("bytes" or "bpe"), and let archlab open
    # the folder as a run.
    config = ArchlabConfig.from_archlab(model_cfg, archlab_tokenizer=tok_name, archlab_run=run_record(loaded))
    model = ArchlabForCausalLM(config, lm=loaded.model)
    model.train(loaded.model.training)
    model.save_pretrained(out)
    _write_tokenizer(loaded, out)
    return out


def _export_echo(loaded: Any, out: Path) -> None:
    """An Echo folder of an ``echo`` run: the same weights, bit for bit."""
    from archlab.catalog.families import echo_namespace
    from archlab.hf.echo import Echo, EchoConfig
    from archlab.hf.echo_processing import save_echo

    m, tok = loaded.cfg.model, loaded.tokenizer
    fields = dict(vars(echo_namespace(m, m.family_config())))
    del fields["eos_token_id"]
    config = EchoConfig(**fields, bos_token_id=tok.eot_id, eos_token_id=tok.eot_id, pad_token_id=tok.eot_id,
                        decoder_start_token_id=tok.sot_id)
    model = Echo(config)
    model.model.load_state_dict(loaded.model.state_dict())
    save_echo(model.train(loaded.model.training), tok, out, n_frames=2 * fields["n_audio_ctx"])


def _export_whisper(loaded: Any, out: Path) -> None:
    """A ``WhisperForConditionalGeneration`` folder of a ``whisper`` run, with the run's
    character tokenizer and a ``WhisperFeatureExtractor`` of its audio context."""
    from transformers import WhisperFeatureExtractor

    from archlab.registry import ConfigError

    hf, tok = loaded.model.hf, loaded.tokenizer
    frames = 2 * hf.config.max_source_positions
    if frames % 100:
        raise ConfigError(f"export --hf: WhisperFeatureExtractor needs whole seconds of audio; the run's "
                          f"{frames} frames are {frames / 100:g} s (model.family_options.n_audio_ctx a multiple of 50)")
    hf.save_pretrained(out)
    tok.to_hf().save_pretrained(out)
    WhisperFeatureExtractor(feature_size=hf.config.num_mel_bins, chunk_length=frames // 100).save_pretrained(out)


SPEECH_EXPORTS = {"echo": _export_echo, "whisper": _export_whisper}


def run_record(loaded: Any) -> dict[str, Any]:
    """``ArchlabConfig.archlab_run`` of a loaded run: its data and train sections and progress.

    ``train.dynamics`` is recorded empty: the values its controllers adapted are already in the
    exported model config (see :func:`export_run`), and the folder has no controller state to
    resume them from, so the exported model is a static one.
    """
    from archlab.registry import to_dict

    train = to_dict(loaded.cfg.train)
    train["dynamics"] = []
    state = {k: loaded.state[k] for k in ("step", "tokens") if isinstance(loaded.state.get(k), int)}
    return {"data": to_dict(loaded.cfg.data), "train": train, "state": state}


def _write_tokenizer(loaded: Any, out: Path) -> None:
    """tokenizer.json (+ tokenizer_config.json for AutoTokenizer) from the run's tokenizer."""
    from archlab.data.tokenizer import ByteTokenizer

    tok = loaded.tokenizer
    src = loaded.path.parent / TOKENIZER_FILE
    if isinstance(tok, ByteTokenizer):
        (out / TOKENIZER_FILE).write_text(tok.to_json(), encoding="utf-8")
    elif src.is_file():
        shutil.copyfile(src, out / TOKENIZER_FILE)
    else:  # a run folder predating saved tokenizers: write the equivalent file
        tok.save(out)
    if getattr(tok, "name", None) in ("bytes", "bpe"):
        # Both files are `tokenizers` JSON; this names the transformers class that reads them
        # (and keeps decode from "cleaning up" spaces, which would break the round trip).
        (out / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False},
                       indent=2) + "\n",
            encoding="utf-8",
        )
    else:  # a task vocabulary: no transformers class reads it (drop one left by an earlier export)
        (out / "tokenizer_config.json").unlink(missing_ok=True)


def _check_rebuilds(model: Any, model_cfg: Any) -> None:
    """A model built from ``model_cfg`` with ``model``'s weights gives ``model``'s logits on a
    probe, or a one-line ConfigError: the exported config must describe the trained model."""
    import torch

    from archlab.models import build_model
    from archlab.registry import ConfigError

    device = next(model.parameters()).device
    fresh = build_model(model_cfg).to(device).eval()
    fresh.load_state_dict(model.state_dict())
    T = min(64, model_cfg.max_seq_len)
    ids = torch.randint(0, model_cfg.vocab_size or 256, (2, T), generator=torch.Generator().manual_seed(0)).to(device)
    was = model.training
    model.eval()
    with torch.no_grad():
        a, b = model(ids).logits, fresh(ids).logits
    model.train(was)
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
        raise ConfigError("export --hf: the adapted values of train.dynamics could not be written into a config that "
                          f"reproduces the model (max logit difference {float((a - b).abs().max()):.3g})")


__all__ = ["export_run"]
