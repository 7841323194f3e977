"""Transcript tokens for speech models: one token per character, plus the special tokens.

Ids: 0 ``<|endoftext|>`` (end of transcript, also padding), 1 ``<|startoftranscript|>`` (the
decoder's start token), 2 ``<unk>`` (a character outside the alphabet), then the alphabet in
sorted order. Characters suit small recognisers trained from nothing (a few dozen classes, no
tokenizer to train); :meth:`CharTokenizer.to_hf` gives the same mapping as a ``transformers``
fast tokenizer for saving beside a model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

EOT, SOT, UNK = "<|endoftext|>", "<|startoftranscript|>", "<unk>"
SPECIALS = (EOT, SOT, UNK)


#: The default alphabet of a speech run: the generated corpus's transcripts are lowercase words,
#: spaces and in-word apostrophes (``normalise_text``'s form); digits cover user corpora.
DEFAULT_ALPHABET = " '0123456789abcdefghijklmnopqrstuvwxyz"


class CharTokenizer:
    """Characters of a fixed alphabet as ids (see the module docstring); saved as a run's
    ``tokenizer.json`` (``{"kind": "chars", "alphabet": ...}``)."""

    name = "chars"
    unit = "token"

    def __init__(self, alphabet: Iterable[str]) -> None:
        chars = sorted(set(alphabet))
        if any(len(c) != 1 for c in chars):
            raise ValueError("the alphabet must be single characters")
        self.itos = [*SPECIALS, *chars]
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.eot_id, self.sot_id, self.unk_id = 0, 1, 2

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        return cls("".join(texts))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def alphabet(self) -> str:
        return "".join(self.itos[len(SPECIALS):])

    def fingerprint(self) -> str:
        return "chars-" + hashlib.sha256(self.alphabet.encode()).hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        """``directory/tokenizer.json``, written atomically."""
        from archlab.atomic import write_text_atomic

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(d / "tokenizer.json", json.dumps({"kind": "chars", "alphabet": self.alphabet}) + "\n")

    @classmethod
    def from_spec(cls, spec: dict, path: Path) -> "CharTokenizer":
        alphabet = spec.get("alphabet")
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"{path}: corrupt chars tokenizer (no alphabet)")
        try:
            tok = cls(alphabet)
        except ValueError as e:
            raise ValueError(f"{path}: corrupt chars tokenizer ({e})") from None
        if tok.alphabet != alphabet:
            raise ValueError(f"{path}: corrupt chars tokenizer (the alphabet must be sorted, without repeats)")
        return tok

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """The characters of ``ids`` up to the first end token; other special tokens dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                break
            if i >= len(SPECIALS) and i < len(self.itos):
                out.append(self.itos[i])
        return "".join(out)

    def to_hf(self):
        """The same ids as a ``transformers.PreTrainedTokenizerFast`` (a BPE with no merges:
        every character is its own token; decoding joins them)."""
        from tokenizers import Tokenizer, decoders, models
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.BPE(vocab=dict(self.stoi), merges=[], unk_token=UNK))
        tok.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT, bos_token=SOT,
                                       unk_token=UNK)
