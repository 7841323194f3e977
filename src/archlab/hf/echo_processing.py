"""What an Echo folder needs beside the weights to transcribe: its feature extractor and tokenizer.

* :class:`EchoFeatureExtractor` (a ``transformers`` ``SequenceFeatureExtractor``, registered for
  ``model_type="echo"`` with ``AutoFeatureExtractor``): raw audio at any rate -> Whisper's log-mel
  features (:mod:`archlab.data.speech.features`), padded or trimmed to ``n_frames``.
* :func:`save_echo` writes model + tokenizer (:class:`~archlab.data.speech.text.CharTokenizer`'s
  fast twin) + feature extractor, so that ``transformers.pipeline("automatic-speech-recognition",
  model=folder)`` and ``archlab transcribe folder …`` work offline.
* :func:`transcribe_files` is what ``archlab transcribe`` runs: every readable file is transcribed;
  a file that cannot be read is reported in one line and skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

from archlab.data.speech.audio import SAMPLE_RATE, AudioError, as_mono_16k, load_audio
from archlab.data.speech.features import LogMelFrontEnd


class EchoFeatureExtractor(SequenceFeatureExtractor):
    model_input_names = ["input_features"]

    def __init__(self, feature_size: int = 80, sampling_rate: int = SAMPLE_RATE, n_frames: int = 3000,
                 padding_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         **kwargs)
        self.n_frames = n_frames

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors: str | None = None,
                 **kwargs: Any) -> BatchFeature:
        """One 1-D array (or a list of them) at ``sampling_rate`` (default 16 kHz) -> features
        (B, feature_size, n_frames)."""
        batch = raw_speech if isinstance(raw_speech, (list, tuple)) else [raw_speech]
        sr = sampling_rate or self.sampling_rate
        waves = [as_mono_16k(np.asarray(x, dtype=np.float32), sr) for x in batch]
        feats = LogMelFrontEnd(self.feature_size, self.n_frames)(waves)
        return BatchFeature({"input_features": feats.numpy()}, tensor_type=return_tensors)


def save_echo(model, tokenizer, folder: str | Path, *, n_frames: int) -> Path:
    """Model, tokenizer and feature extractor in one folder (``from_pretrained``/pipeline-ready)."""
    out = Path(folder)
    model.save_pretrained(out)
    tokenizer.to_hf().save_pretrained(out)
    EchoFeatureExtractor(feature_size=model.config.n_mels, n_frames=n_frames).save_pretrained(out)
    return out


def load_echo(folder: str | Path):
    """(model, fast tokenizer, feature extractor) of a folder :func:`save_echo` wrote."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    from archlab.hf.echo import Echo

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: not an Echo folder (no config.json)")
    return (Echo.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder),
            AutoFeatureExtractor.from_pretrained(folder))


@torch.no_grad()
def transcribe_files(folder: str | Path, files: Sequence[str | Path], *, batch: int = 8, max_new_tokens: int | None = None,
                     num_beams: int = 1, on_error: Callable[[str], None] = print,
                     progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """[{"file", "text"}] for every readable file, in order; unreadable ones go to ``on_error``."""
    model, tok, fe = load_echo(folder)
    good: list[tuple[str, np.ndarray]] = []
    for f in files:
        try:
            good.append((str(f), load_audio(f)))
        except AudioError as e:
            on_error(str(e))
    out: list[dict[str, Any]] = []
    limit = max_new_tokens or model.config.n_text_ctx - 1
    for i in range(0, len(good), batch):
        chunk = good[i:i + batch]
        feats = torch.as_tensor(fe([w for _, w in chunk])["input_features"])
        ids = model.generate(input_features=feats, max_new_tokens=limit, num_beams=num_beams, do_sample=False)
        for (name, _), row in zip(chunk, ids):
            out.append({"file": name, "text": tok.decode(row, skip_special_tokens=True).strip()})
        if progress is not None:
            progress(len(chunk))
    return out


def register_pipeline() -> None:
    """Let ``pipeline("automatic-speech-recognition")`` decode Echo as the sequence-to-sequence
    model it is. transformers picks seq2seq decoding from a static table of its own class names,
    which ``AutoModelForSpeechSeq2Seq.register`` does not extend; without this it would run Echo
    as a CTC model. The task is re-registered (public ``PIPELINE_REGISTRY.register_pipeline``)
    with the same model classes and default as before and a subclass that changes only that
    choice, and only for Echo (its ``type`` attribute is the pipeline's decoding switch; there is
    no public way to set it)."""
    from transformers.pipelines import PIPELINE_REGISTRY, SUPPORTED_TASKS
    from transformers.pipelines.automatic_speech_recognition import AutomaticSpeechRecognitionPipeline

    from archlab.hf.echo import Echo

    entry = SUPPORTED_TASKS["automatic-speech-recognition"]
    if getattr(entry.get("impl"), "_archlab_echo", False):
        return

    class ASRPipeline(AutomaticSpeechRecognitionPipeline):
        _archlab_echo = True

        def __init__(self, model, *args: Any, **kwargs: Any) -> None:
            super().__init__(model, *args, **kwargs)
            if isinstance(model, Echo):
                self.type = "seq2seq"

    PIPELINE_REGISTRY.register_pipeline("automatic-speech-recognition", pipeline_class=ASRPipeline,
                                        pt_model=entry["pt"], default=entry.get("default"), type=entry.get("type"))
