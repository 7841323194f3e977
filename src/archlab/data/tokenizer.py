"""Tokenizers for archlab: raw bytes, and a byte-level BPE trained in-process.

Both tokenizers share one small interface so the rest of the data layer (and
the evaluator) can treat them alike:

* ``name`` (``"bytes"`` / ``"bpe"``), ``vocab_size``, ``unit`` (``"byte"`` /
  ``"token"``) -- ``unit`` tells reports whether a loss is per byte or per token;
* ``encode(text) -> list[int]`` and ``decode(ids) -> str``;
* ``encode_bytes(b) -> np.ndarray`` and ``decode_bytes(ids) -> bytes`` -- the
  corpus layer works on raw bytes, so this is the path used for caching;
* ``fingerprint() -> str`` -- a stable identity used in cache keys;
* ``save(directory)`` writing ``tokenizer.json``; :func:`load_tokenizer` reads
  either kind back;
* ``to_json() -> str``: the tokenizer as a Hugging Face ``tokenizers`` JSON, which
  ``tokenizers.Tokenizer.from_str`` and ``transformers.AutoTokenizer`` load and which
  gives the same ids (for the byte tokenizer: a byte-level BPE without merges whose ids
  are the byte values; :func:`load_tokenizer` reads that file back as bytes).

The BPE is *byte level*: text is first mapped to UTF-8 bytes, each byte is shown
to the BPE model as one printable character, and the decoder maps back. So
``decode(encode(s)) == s`` for every Python string without lone surrogates, and
no unknown token is ever needed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from archlab.atomic import write_text_atomic

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_KINDS = ("bytes", "bpe")


def _as_id_array(ids: Any) -> np.ndarray:
    """Turn a list / numpy array / CPU torch tensor of ids into a flat int64 array."""
    if hasattr(ids, "detach"):  # torch tensor; avoid importing torch here
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids, dtype=np.int64)
    return arr.reshape(-1)


def _write_tokenizer_file(directory: Union[str, Path], text: str) -> Path:
    """``directory/tokenizer.json`` (the folder created if needed), written atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(d / TOKENIZER_FILE, text)


def _load_as(cls: type, directory: Union[str, Path], what: str) -> Any:
    """:func:`load_tokenizer`, refused unless it gives a ``cls``."""
    tok = load_tokenizer(directory)
    if not isinstance(tok, cls):
        raise ValueError(f"{Path(directory) / TOKENIZER_FILE}: not {what}")
    return tok


class ByteTokenizer:
    """Identity tokenizer over UTF-8 bytes: one token per byte, vocabulary 256."""

    name = "bytes"
    vocab_size = 256
    unit = "byte"

    def encode(self, text: str) -> list[int]:
        """Return the UTF-8 bytes of ``text`` as ints in ``[0, 256)``."""
        return list(text.encode("utf-8"))

    def encode_bytes(self, b: bytes) -> np.ndarray:
        """Return ``b`` as a ``uint8`` array (a copy, so callers may keep it)."""
        return np.frombuffer(b, dtype=np.uint8).copy()

    def encode_bytes_batch(self, chunks: Sequence[bytes]) -> list[np.ndarray]:
        """Batch form of :meth:`encode_bytes` (same interface as BPE)."""
        return [self.encode_bytes(c) for c in chunks]

    def decode_bytes(self, ids: Any) -> bytes:
        """Map ids back to the raw bytes they stand for."""
        arr = _as_id_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("ByteTokenizer.decode: ids must lie in [0, 255]")
        return arr.astype(np.uint8).tobytes()

    def decode(self, ids: Any) -> str:
        """Decode ids as UTF-8; invalid sequences (e.g. a cut-off character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """Stable identity for cache keys; the byte tokenizer has no parameters."""
        return "bytes-v1"

    def to_json(self) -> str:
        """The byte tokenizer as a Hugging Face ``tokenizers`` JSON (for exported models).

        A byte-level BPE with no merges whose vocabulary maps each byte's ByteLevel character
        to the byte's own value, so the ids are exactly ``list(text.encode())`` and decoding
        is the UTF-8 decoding of those bytes. The pre-tokenizer does not split (no regex):
        splitting changes nothing without merges, and it marks this file as the byte
        tokenizer for :func:`load_tokenizer` (a trained BPE always splits).
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        tok = HFTokenizer(models.BPE(vocab={c: b for b, c in enumerate(_BYTE_TO_CHAR)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok.to_str(pretty=True)

    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``tokenizer.json`` = ``{"kind": "bytes"}`` into ``directory``."""
        return _write_tokenizer_file(directory, json.dumps({"kind": "bytes"}) + "\n")

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "ByteTokenizer":
        """Counterpart of :meth:`save` (the file carries no state)."""
        return _load_as(cls, directory, "a byte tokenizer")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def _log_to_stderr(line: str) -> None:
    """Default ``log`` of :meth:`BPETokenizer.train`: stderr, flushed, so stdout stays clean."""
    print(line, file=sys.stderr, flush=True)


def _byte_to_char_table() -> list[str]:
    """The byte -> printable character map used by byte-level BPE.

    Bytes that are already visible, non-space Latin-1 characters stand for
    themselves; every other byte (controls, space, DEL, NBSP, soft hyphen) is
    moved, in increasing byte order, to code points 256, 257, ... This is the
    convention the ``tokenizers`` ByteLevel pre-tokenizer uses, and we need our
    own copy to turn token strings back into exact bytes in :meth:`decode_bytes`
    (the library's decoder only returns lossily decoded text).
    """
    visible = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: list[str] = []
    moved = 0
    for b in range(256):
        if b in visible:
            table.append(chr(b))
        else:
            table.append(chr(256 + moved))
            moved += 1
    return table


_BYTE_TO_CHAR = _byte_to_char_table()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}


class BPETokenizer:
    """Byte-level BPE backed by Hugging Face ``tokenizers``.

    Construct with :meth:`train` or :meth:`load`; ``BPETokenizer(hf_tokenizer)``
    wraps an existing ``tokenizers.Tokenizer`` whose decoder is ByteLevel.
    """

    name = "bpe"
    unit = "token"

    def __init__(self, hf_tokenizer: Any) -> None:
        self._tok = hf_tokenizer
        spec = json.loads(hf_tokenizer.to_str())
        if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get(
            "type"
        ) != "ByteLevel":
            raise ValueError("BPETokenizer needs a BPE model with a ByteLevel decoder")
        self.vocab_size: int = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))
        # Exact bytes for every id, precomputed once: decode_bytes is then a join.
        self._id_bytes: list[bytes] = [b""] * self.vocab_size
        for token, idx in hf_tokenizer.get_vocab(with_added_tokens=True).items():
            try:
                self._id_bytes[idx] = bytes(_CHAR_TO_BYTE[c] for c in token)
            except KeyError:  # an added/special token not written in the byte alphabet
                self._id_bytes[idx] = token.encode("utf-8")
        # Canonical JSON so the fingerprint does not depend on key order.
        self._fingerprint = hashlib.sha256(
            json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8")
        ).hexdigest()

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, *, log: Callable[[str], None] | None = _log_to_stderr
    ) -> "BPETokenizer":
        """Train a byte-level BPE on ``texts`` with at most ``vocab_size`` entries.

        The 256 single-byte tokens are always present (so any text can be
        encoded); ``vocab_size - 256`` merges are learnt if the text supports
        that many. Training is deterministic for the same input sequence.
        It takes up to a minute on a large corpus, so one line announces it
        through ``log`` (default: stderr; ``None``: silent).
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise ValueError(f"data.tokenizer: bpe vocab_size must be >= 256, got {vocab_size}")
        if log is not None:
            log(f"training a BPE tokenizer of {vocab_size} tokens on the training split "
                "(once per run; may take a minute on a large corpus) ...")
        tok = Tokenizer(models.BPE())
        # add_prefix_space=False keeps the round trip exact (no invented leading space).
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        """Token ids for ``text`` (no special tokens are added)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_bytes(self, b: bytes) -> np.ndarray:
        """Encode raw bytes; invalid UTF-8 is replaced by U+FFFD before encoding."""
        return self.encode_bytes_batch([b])[0]

    def encode_bytes_batch(self, chunks: Sequence[bytes]) -> list[np.ndarray]:
        """Encode several byte chunks at once (uses the library's parallel batch path)."""
        texts = [c.decode("utf-8", errors="replace") for c in chunks]
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def decode_bytes(self, ids: Any) -> bytes:
        """Exact bytes the ids stand for (may end mid-character)."""
        arr = _as_id_array(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"BPETokenizer.decode: ids must lie in [0, {self.vocab_size - 1}]")
        table = self._id_bytes
        return b"".join(table[i] for i in arr.tolist())

    def decode(self, ids: Any) -> str:
        """Decode to text; a partial UTF-8 character at the edges becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """SHA-256 of the canonical tokenizer JSON (changes whenever merges change)."""
        return "bpe-" + self._fingerprint

    def to_json(self) -> str:
        """The Hugging Face tokenizer JSON."""
        return self._tok.to_str()

    @property
    def hf_tokenizer(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer`` (for interop; do not mutate)."""
        return self._tok

    def save(self, directory: Union[str, Path]) -> Path:
        """Write the Hugging Face ``tokenizer.json`` into ``directory``.

        The file is recognised as ours by ``model.type == "BPE"`` with a
        ``ByteLevel`` decoder, so it also loads in plain ``tokenizers``.
        """
        return _write_tokenizer_file(directory, self._tok.to_str(pretty=True))

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "BPETokenizer":
        """Counterpart of :meth:`save`."""
        return _load_as(cls, directory, "a bpe tokenizer")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


Tokenizer = Union[ByteTokenizer, BPETokenizer]


def load_tokenizer(directory: Union[str, Path]) -> Tokenizer:
    """Load whichever tokenizer ``directory/tokenizer.json`` describes.

    Raises a one-line ``ValueError`` naming the file when it is missing,
    unreadable, or of an unknown kind.
    """
    path = Path(directory) / TOKENIZER_FILE
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
    except FileNotFoundError:
        raise ValueError(f"{path}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt tokenizer file ({type(e).__name__})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: corrupt tokenizer file (not a JSON object)")
    if spec.get("kind") == "bytes":
        return ByteTokenizer()
    if spec.get("kind") == "task_vocab":  # a synthetic task's vocabulary (archlab.data.taskdata)
        from .taskdata import WordTokenizer

        return WordTokenizer.from_spec(spec, path)
    if spec.get("kind") == "chars":  # a speech run's transcript characters (archlab.data.speech.text)
        from .speech.text import CharTokenizer

        return CharTokenizer.from_spec(spec, path)
    if _is_byte_identity(spec):  # ByteTokenizer.to_json(), e.g. in an exported HF folder
        return ByteTokenizer()
    if isinstance(spec.get("model"), dict) and spec["model"].get("type") == "BPE":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return BPETokenizer(HFTokenizer.from_str(text))
        except Exception as e:  # the Rust side raises a generic Exception on bad JSON
            raise ValueError(f"{path}: corrupt bpe tokenizer ({str(e).splitlines()[0]})") from None
    raise ValueError(f"{path}: unrecognised tokenizer (expected kind 'bytes' or a BPE model)")


def _is_byte_identity(spec: dict) -> bool:
    """Whether a ``tokenizers`` JSON is exactly :meth:`ByteTokenizer.to_json`'s tokenizer:
    no merges, no added tokens, the 256 byte characters at their byte values, no splitting."""
    model, pre = spec.get("model"), spec.get("pre_tokenizer")
    return (isinstance(model, dict) and model.get("type") == "BPE" and model.get("merges") == []
            and not spec.get("added_tokens") and spec.get("normalizer") is None
            and isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex") is False
            and model.get("vocab") == {c: b for b, c in enumerate(_BYTE_TO_CHAR)})


def check_tokenizer(tok: Tokenizer, *, kind: str, model_vocab: int | None, where: str) -> Tokenizer:
    """Refuse a saved tokenizer that is not the one the run's config describes (``kind``:
    ``bytes``, ``bpe`` or ``task``; ``model_vocab``: the model's vocabulary), in one line
    naming ``where``. A replaced or stale ``tokenizer.json`` would otherwise give wrong ids
    silently: bits per byte computed over the wrong units, garbage text from generation."""
    name = getattr(tok, "name", type(tok).__name__)
    expected = {"bytes": "bytes", "bpe": "bpe", "task": "task_vocab", "speech": "chars"}.get(kind, kind)
    if name != expected:
        raise ValueError(f"{where}: a '{name}' tokenizer, but the run's config says data.tokenizer "
                         f"'{kind}'; restore the run's own tokenizer.json")
    size = int(getattr(tok, "vocab_size", 0) or 0)
    if model_vocab is not None and size > model_vocab:
        raise ValueError(f"{where}: {size} tokens, more than the model's vocabulary of {model_vocab}; "
                         "restore the run's own tokenizer.json")
    return tok


def make_tokenizer(
    kind: str,
    *,
    vocab_size: int = 1024,
    train_texts: Iterable[str] | None = None,
    log: Callable[[str], None] | None = _log_to_stderr,
) -> Tokenizer:
    """Build a tokenizer by name.

    ``"bytes"`` needs nothing. ``"bpe"`` trains on ``train_texts`` (for example
    :func:`archlab.data.corpus.iter_texts` over a training split -- never the
    validation/test split, or the comparison leaks), announcing it in one line
    through ``log`` (``None``: silent).
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        if train_texts is None:
            raise ValueError("data.tokenizer: kind 'bpe' needs train_texts to train on")
        return BPETokenizer.train(train_texts, vocab_size, log=log)
    raise ValueError(f"data.tokenizer: unknown kind {kind!r}; allowed: {', '.join(TOKENIZER_KINDS)}")
