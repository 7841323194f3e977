"""Tokenised corpora on disk, and the two ways models read them.

* :func:`prepare_corpus` tokenises each split once and caches it as a flat
  binary array next to a JSON sidecar; later calls memory-map the cache.
* :class:`WindowSampler` draws random training windows. It is counter-based:
  the batch for ``step`` depends only on ``(seed, step)``, so resuming needs no
  sampler state and any number of data-parallel ranks see the same global batch.
* :func:`eval_windows` walks a split in contiguous, non-overlapping windows so
  every target token is scored exactly once.
* :func:`check_streams` refuses, in one line, splits too short for a window of
  ``seq_len + 1`` tokens -- call it before building a model.

Cache layout: ``<cache_dir>/<corpus>-<tokenizer>-<key>/{split}.bin`` plus
``{split}.json``. ``key`` hashes the corpus identity (resolved path and a
fingerprint of its files, or the Python version for ``stdlib``), the tokenizer
fingerprint and the cache format. A split is trusted only if its sidecar exists,
names the same key, has every field a reader needs, and its ``.bin`` has exactly
``n_tokens * itemsize`` bytes; anything else (a truncated or padded ``.bin``, a
garbage sidecar) is logged and the split rebuilt. Both files are written to a
temporary name and moved into place with ``os.replace`` -- the ``.bin`` first,
the sidecar last -- so a crash at any moment leaves either no sidecar (the split
is redone), the previous pair, or a complete new pair.
Concurrent writers (e.g. several ranks) are safe: they produce identical files
and the last ``os.replace`` wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from archlab.atomic import replace_atomically
from archlab.registry import ConfigError

from .corpus import SPLITS, Corpus, canonical_split, open_corpus, require_text
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Texts are handed to the tokenizer in batches of roughly this many bytes: big
# enough for the BPE's parallel batch encoder to pay off, small enough to keep
# peak memory (ids are 8 bytes each before narrowing) modest.
_ENCODE_BATCH_BYTES = 8 << 20


def default_cache_dir() -> Path:
    """``$ARCHLAB_CACHE`` if set, else ``~/.cache/archlab``."""
    env = os.environ.get("ARCHLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archlab"


_TOKEN_DTYPES = ("uint8", "uint16", "int32")  # all token_dtype can choose


def token_dtype(vocab_size: int) -> np.dtype:
    """Narrowest unsigned dtype for ids below ``vocab_size`` (int32 beyond 65536)."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


class TokenStream:
    """A read-only 1-D array of token ids plus the size of the text they came from.

    ``tokens`` is an ``np.memmap`` when opened from the cache (or any 1-D array
    when built with :meth:`from_array`). ``n_bytes`` is the raw byte length of
    the text the tokens came from -- for both tokenizers -- and ``bytes_per_token``
    the split's average. That average is *not* how evaluation reports bits per byte:
    a capped evaluation scores a prefix whose bytes per token differ, so
    :func:`archlab.train.evaluate.evaluate` divides by the bytes of exactly the
    scored targets (``token_byte_lengths``).
    Pickling a cache-backed stream (e.g. into DataLoader workers) sends the
    path, not the data; the receiver re-opens the memmap.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        n_bytes: int,
        unit: str,
        split: Optional[str] = None,
        vocab_size: Optional[int] = None,
        path: Optional[Path] = None,
        source: Optional[str] = None,
    ) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"TokenStream: tokens must be 1-D, got shape {tokens.shape}")
        self._tokens = tokens
        self.n_bytes = int(n_bytes)
        self.unit = unit
        self.split = split
        self.vocab_size = vocab_size
        self.path = path
        # The corpus file or folder the tokens came from, for error messages.
        self.source = source

    @classmethod
    def from_array(
        cls, tokens: Any, *, n_bytes: Optional[int] = None, unit: str = "byte", **kw: Any
    ) -> "TokenStream":
        """In-memory stream (tests, small experiments). ``n_bytes`` defaults to ``len``."""
        arr = np.asarray(tokens)
        return cls(arr, n_bytes=len(arr) if n_bytes is None else n_bytes, unit=unit, **kw)

    @classmethod
    def open(cls, bin_path: Union[str, Path]) -> "TokenStream":
        """Memory-map a cached split, reading its JSON sidecar for dtype and sizes."""
        bin_path = Path(bin_path)
        meta = json.loads(bin_path.with_suffix(".json").read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        n = int(meta["n_tokens"])
        # np.memmap cannot map an empty file; an empty split is a plain empty array.
        arr = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return cls(
            arr,
            n_bytes=meta["n_bytes"],
            unit=meta["unit"],
            split=meta.get("split"),
            vocab_size=meta.get("vocab_size"),
            path=bin_path,
            source=_source_label(meta.get("source")),
        )

    @property
    def tokens(self) -> np.ndarray:
        """The token ids (read-only memmap for cached streams)."""
        return self._tokens

    @property
    def dtype(self) -> np.dtype:
        return self._tokens.dtype

    def __len__(self) -> int:
        return int(self._tokens.shape[0])

    @property
    def bytes_per_token(self) -> float:
        """``n_bytes / n_tokens`` (1.0 for the byte tokenizer; nan for an empty stream)."""
        return self.n_bytes / len(self) if len(self) else float("nan")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.path is not None and isinstance(self._tokens, np.memmap):
            state["_tokens"] = None  # re-mapped on the other side instead of copied
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._tokens is None:
            self._tokens = TokenStream.open(self.path)._tokens

    def __repr__(self) -> str:
        return (
            f"TokenStream(split={self.split!r}, n_tokens={len(self):,}, n_bytes={self.n_bytes:,}, "
            f"unit={self.unit!r}, dtype={self.dtype})"
        )


def _as_array(stream: Union[TokenStream, np.ndarray, Any]) -> np.ndarray:
    return stream.tokens if isinstance(stream, TokenStream) else np.asarray(stream)


def _source_label(fingerprint: Any) -> Optional[str]:
    """The path a corpus fingerprint names (its ``root`` or ``file``), if any."""
    if isinstance(fingerprint, dict):
        where = fingerprint.get("root") or fingerprint.get("file")
        return str(where) if where else None
    return None


def _check_length(stream: Any, seq_len: int, split: Optional[str] = None) -> None:
    """One-line refusal of a stream shorter than one window, named by split and source path."""
    n = len(_as_array(stream))
    if n >= seq_len + 1:
        return
    split, source = split or getattr(stream, "split", None), getattr(stream, "source", None)
    what = "stream" if split is None else f"split {split!r}" + (f" of {source}" if source else "")
    hint = ""
    if n == 0 and source and Path(source).is_dir():
        hint = "; a folder's files are split 90/5/5 by a hash of their path, so a few files can leave a split empty"
    raise ConfigError(
        f"data: {what} has {n:,} tokens, need at least seq_len + 1 = {seq_len + 1:,} (one window); "
        f"use a longer corpus or a smaller seq_len{hint}"
    )


def check_streams(
    streams: dict[str, Any], *, seq_len: int, splits: tuple[str, ...] = ("train", "validation")
) -> None:
    """Refuse, in one line, any of ``splits`` too short for one window of ``seq_len + 1`` tokens.

    A shorter ``train`` crashes the sampler; a shorter ``validation`` scores a
    fraction of a window (or nothing: NaN). Call it right after
    :func:`prepare_corpus`, before a model is built. ``test`` is unchecked by
    default since training does not read it; pass ``splits=("test",)`` to eval it.
    """
    if int(seq_len) < 1:
        raise ConfigError(f"train.seq_len: must be >= 1, got {seq_len}")
    for split in (canonical_split(s) for s in splits):
        if split not in streams:
            raise ConfigError(f"data: split {split!r} was not prepared; prepared: {', '.join(streams) or 'none'}")
        _check_length(streams[split], int(seq_len), split)


# --------------------------------------------------------------------------- cache


def _cache_key(src: Corpus, tokenizer: Tokenizer) -> tuple[str, dict[str, Any]]:
    """Hash of everything that determines the tokens, and the identity it was made from."""
    ident = {
        "format": CACHE_FORMAT,
        "corpus": src.name,
        "source": src.fingerprint(),
        "tokenizer": tokenizer.fingerprint(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode("utf-8")).hexdigest(), ident


def _atomic_write(target: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``target``, then replace ``target`` with it
    (:func:`archlab.atomic.replace_atomically`: fsync, rename, folder fsync). Readers only ever
    see the old file or the complete new one: the temp name is hidden and never matches a
    cache name, and a failed write (Ctrl-C included) leaves no temp file behind."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    replace_atomically(target, to_file)


def _load_cached(bin_path: Path, key: str) -> Optional[TokenStream]:
    """The cached split if its sidecar is complete and consistent with its ``.bin``, else None.

    None means "tokenise again": a missing sidecar is the normal first run; any
    other inconsistency is a damaged cache and is logged before it is rebuilt.
    """
    meta_path = bin_path.with_suffix(".json")
    if not meta_path.exists():
        return None
    problem = _cache_problem(bin_path, meta_path, key)
    if problem is None:
        try:
            return TokenStream.open(bin_path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = f"cannot be mapped ({e})"
    log.warning("data: cache %s %s; rebuilding it", bin_path, problem)
    return None


def _cache_problem(bin_path: Path, meta_path: Path, key: str) -> Optional[str]:
    """Why a cached split cannot be trusted, or None when it can."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"has an unreadable sidecar ({e})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        return "has a sidecar of another format or key"
    n, n_bytes, dtype = meta.get("n_tokens"), meta.get("n_bytes"), meta.get("dtype")
    if not (isinstance(n, int) and isinstance(n_bytes, int) and n >= 0 and n_bytes >= 0
            and isinstance(meta.get("unit"), str) and dtype in _TOKEN_DTYPES):
        return "has a sidecar with missing or invalid fields"
    try:
        size: Optional[int] = bin_path.stat().st_size if bin_path.is_file() else None
    except OSError:
        size = None
    expected = n * np.dtype(dtype).itemsize
    return None if size == expected else f"holds {size} bytes, not n_tokens * itemsize = {expected}"


def _tokenize_split(
    src: Corpus, split: str, tokenizer: Tokenizer, bin_path: Path, key: str, ident: dict[str, Any]
) -> TokenStream:
    """Tokenise one split chunk by chunk straight into the cache; returns the stream."""
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {"tokens": 0, "bytes": 0}

    def encode(batch: list[bytes], f: Any) -> None:
        for ids in tokenizer.encode_bytes_batch(batch):
            f.write(np.asarray(ids).astype(dtype, copy=False).tobytes())
            counts["tokens"] += len(ids)

    def write_bin(f: Any) -> None:
        batch: list[bytes] = []
        pending = 0
        for chunk in src.iter_chunks(split):
            counts["bytes"] += len(chunk)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= _ENCODE_BATCH_BYTES:
                encode(batch, f)
                batch, pending = [], 0
        if batch:
            encode(batch, f)

    _atomic_write(bin_path, write_bin)
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "split": split,
        "corpus": src.name,
        "source": ident["source"],
        "tokenizer": ident["tokenizer"],
        "vocab_size": tokenizer.vocab_size,
        "unit": tokenizer.unit,
        "dtype": dtype.name,
        "n_tokens": counts["tokens"],
        "n_bytes": counts["bytes"],
    }
    payload = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode("utf-8")
    _atomic_write(bin_path.with_suffix(".json"), lambda f: f.write(payload))
    return TokenStream.open(bin_path)


def prepare_corpus(
    *,
    corpus: Union[str, Corpus] = "stdlib",
    path: Optional[Union[str, os.PathLike]] = None,
    tokenizer: Tokenizer,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, TokenStream]:
    """Tokenise (or load from cache) every split of a corpus.

    ``corpus`` is a name (``"stdlib"``, ``"path"``, ``"enwik8"``; ``path`` as in
    :func:`archlab.data.corpus.open_corpus`) or a ready :class:`Corpus` object.
    Returns ``{"train": ..., "validation": ..., "test": ...}`` (or the requested
    ``splits``, canonicalised). Warns when a split comes out empty; call
    :func:`check_streams` with the run's ``seq_len`` to refuse short splits.
    A bad path, a binary file for a text tokenizer, or an unusable cache folder
    is a one-line :class:`ConfigError` before anything is tokenised.
    """
    src = open_corpus(corpus, path) if isinstance(corpus, str) else corpus
    wanted = [canonical_split(s) for s in splits]
    if getattr(tokenizer, "unit", None) != "byte":
        require_text(src)
    key, ident = _cache_key(src, tokenizer)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / f"{src.name}-{tokenizer.name}-{key[:16]}"
    _make_cache_folder(folder, root, from_config=cache_dir is not None)
    out: dict[str, TokenStream] = {}
    for split in wanted:
        bin_path = folder / f"{split}.bin"
        stream = _load_cached(bin_path, key)
        if stream is None:
            # Checked only on a miss: a complete cache in a read-only folder is fine to read.
            if not os.access(folder, os.W_OK):
                raise ConfigError(
                    f"{_cache_setting(cache_dir is not None)}: {folder} is not writable, so split {split!r} "
                    "cannot be cached; give a writable folder"
                )
            log.info("tokenising %s/%s with %s into %s", src.name, split, tokenizer.name, folder)
            stream = _tokenize_split(src, split, tokenizer, bin_path, key, ident)
        if len(stream) == 0:
            warnings.warn(f"data: split {split!r} of corpus {src.name!r} is empty", stacklevel=2)
        out[split] = stream
    return out


def _cache_setting(from_config: bool) -> str:
    return "data.cache_dir" if from_config else "$ARCHLAB_CACHE (or data.cache_dir)"


def _make_cache_folder(folder: Path, root: Path, *, from_config: bool) -> None:
    """Create the cache folder, or refuse in one line naming the setting that chose it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{_cache_setting(from_config)}: {root} (or a folder above it) is a file; it must be a folder"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"{_cache_setting(from_config)}: cannot create the token cache in {root} ({e.strerror or e}); "
            "give a writable folder"
        ) from None


# --------------------------------------------------------------------------- reading


class WindowSampler:
    """Random training windows, a pure function of ``(seed, step)``.

    For step ``s`` the *global* batch is ``batch_size`` window starts drawn
    uniformly from ``0 .. len - seq_len - 1`` by ``np.random.default_rng([seed,
    s])``; rank ``r`` of ``world_size`` takes rows ``r*b : (r+1)*b`` with ``b =
    batch_size // world_size``. Hence: resuming at step ``s`` is exact with no
    saved state, and concatenating all ranks' batches gives the 1-rank batch.
    Windows may overlap (sampling with replacement), which is what makes the
    draw independent of everything but the step.
    """

    def __init__(
        self,
        stream: Union[TokenStream, np.ndarray],
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tokens = _as_array(stream)
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"WindowSampler: seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"WindowSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ConfigError(
                f"WindowSampler: batch_size {batch_size} is not divisible by world_size {world_size}"
            )
        # A short stream would make rng.integers(0, <=0) fail at the first batch, far from the cause.
        _check_length(stream, int(seq_len))
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_batch_size = self.batch_size // self.world_size
        self._offsets = np.arange(self.seq_len + 1, dtype=np.int64)

    def global_starts(self, step: int) -> np.ndarray:
        """The ``batch_size`` window starts of ``step`` across all ranks."""
        if step < 0:
            raise ValueError(f"WindowSampler: step must be >= 0, got {step}")
        rng = np.random.default_rng([self.seed, int(step)])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size, dtype=np.int64)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` int64 tensors of shape ``(batch_size // world_size, seq_len)``; ``y`` is ``x`` shifted by one."""
        b = self.local_batch_size
        starts = self.global_starts(step)[self.rank * b : (self.rank + 1) * b]
        # One fancy-index gather reads just the needed pages of the memmap.
        win = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches from step 0 (use :meth:`batch` directly to resume)."""
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def count_eval_targets(stream: Union[TokenStream, np.ndarray], *, max_tokens: Optional[int] = None) -> int:
    """How many targets :func:`eval_windows` yields: ``len - 1``, capped at ``max_tokens``."""
    n = max(len(_as_array(stream)) - 1, 0)
    return n if max_tokens is None else min(n, max(int(max_tokens), 0))


def eval_windows(
    stream: Union[TokenStream, np.ndarray],
    *,
    seq_len: int,
    batch_size: int,
    max_tokens: Optional[int] = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous, non-overlapping ``(x, y)`` windows from the start of the stream.

    Window ``i`` predicts tokens ``i*seq_len + 1 .. (i+1)*seq_len`` from the
    ``seq_len`` tokens before each, so every token after the first is a target
    exactly once (``count_eval_targets`` in total). Full windows come in
    batches of up to ``batch_size`` rows; a final partial window is yielded last
    as its own batch of shape ``(1, r)`` with ``r < seq_len`` rather than being
    dropped. Context restarts at each window boundary, so this measures loss
    with on average ``seq_len / 2`` tokens of context -- the usual convention.
    """
    if seq_len < 1 or batch_size < 1:
        raise ConfigError(f"eval_windows: seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    tokens = _as_array(stream)
    n_targets = count_eval_targets(tokens, max_tokens=max_tokens)
    n_full, rem = divmod(n_targets, seq_len)
    offsets = np.arange(seq_len + 1, dtype=np.int64)
    for first in range(0, n_full, batch_size):
        starts = np.arange(first, min(first + batch_size, n_full), dtype=np.int64) * seq_len
        win = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64))
        yield win[:, :-1].contiguous(), win[:, 1:].contiguous()
    if rem:
        start = n_full * seq_len
        win = torch.from_numpy(np.asarray(tokens[start : start + rem + 1]).astype(np.int64))[None, :]
        yield win[:, :-1].contiguous(), win[:, 1:].contiguous()
