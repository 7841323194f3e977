"""Transcript tokens for speech models: one token per character, plus the special tokens.

Ids: 0 ``<|endoftext|>`` (end of transcript, also padding), 1 ``<|startoftranscript|>`` (the
decoder's start token), 2 ``<unk>`` (a character outside the alphabet), then the alphabet in
sorted order. Characters suit small recognisers trained from nothing (a few dozen classes, no
tokenizer to train); :meth:`CharTokenizer.to_hf` gives the same mapping as a ``transformers``
fast tokenizer for saving beside a model.
"""

from __future__ import annotations

from typing import Iterable

EOT, SOT, UNK = "<|endoftext|>", "<|startoftranscript|>", "<unk>"
SPECIALS = (EOT, SOT, UNK)


class CharTokenizer:
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
