"""Text corpora, each split deterministically into train / validation / test.

Three sources:

``"stdlib"`` (the default; needs no download)
    Every ``*.py`` file under the running interpreter's standard library
    (``sysconfig.get_paths()["stdlib"]``), recursively, skipping any path with a
    ``site-packages``, ``dist-packages`` or ``__pycache__`` component (relative
    to the stdlib root). A file's split is decided by a hash of its *relative*
    POSIX path alone -- ``sha1(relpath) % 100``: 0-89 train, 90-94 validation,
    95-99 test -- and each split is the concatenation, in sorted relative-path
    order, of its files' raw bytes, each followed by ``b"\\n\\n"``.

    Stability: the assignment of a given file never depends on the machine, so
    two machines with the same Python minor version split identically *as long
    as they ship the same files*. Content still differs a little between patch
    releases, and some distributions package the ``test/`` tree separately
    (Debian/Ubuntu ``libpython3.X-testsuite``) or add vendor modules, so sizes
    can differ; compare numbers only across identical interpreters (the cache
    key includes the full Python version for that reason).

``"path"``
    A local folder: all regular, non-hidden files below it (hidden files and
    directories are skipped, as are files with a NUL byte in their first 8 KiB,
    i.e. binaries), split by the same relative-path hash as ``stdlib``. Small
    folders can leave a split empty -- :func:`archlab.data.stream.check_streams`
    refuses that before training. A folder with no text file is refused.
    A single file: split *by position*, first 90% of bytes train, next 5%
    validation, last 5% test; each cut is moved forward to the next UTF-8
    character start so no character is split. An empty file is refused. A
    binary file (NUL byte in its first 8 KiB) is accepted for the ``bytes``
    tokenizer, which models any bytes, and refused for ``bpe``, which learns and
    encodes UTF-8 text (see :func:`require_text`).

``"enwik8"``
    A local ``enwik8`` or ``enwik8.zip`` (the path may name the file or a folder
    holding it). The standard split: first 90,000,000 bytes train, next
    5,000,000 validation, next 5,000,000 test. Split sizes are parameters of
    :class:`Enwik8Corpus` (for tests on a small synthetic file); a file shorter
    than the sum of the split sizes is an error. A zip must hold a member
    named ``enwik8``; a zip that cannot be opened or decompressed is refused.

Every corpus hands out a split as an iterator of byte chunks
(:meth:`Corpus.iter_chunks`) so a tokenizer can work chunk by chunk in bounded
memory: one chunk per file for file trees, and ~4 MiB pieces cut after a
newline for single files and enwik8.

Every bad path is refused with a one-line :class:`archlab.registry.ConfigError`
naming the path and what is allowed, at construction time where that is cheap
(existence, type, emptiness, readability, zip directory), else while reading.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from archlab.registry import ConfigError

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
CORPORA = ("stdlib", "path", "enwik8")

FILE_SEPARATOR = b"\n\n"
ENWIK8_SIZES = (90_000_000, 5_000_000, 5_000_000)
# Target size of chunks cut from one big file; large enough that per-chunk
# overhead is nothing, small enough that BPE on a chunk stays in modest memory.
CHUNK_BYTES = 4 << 20
_BINARY_SNIFF = 8192
_EXCLUDED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})

PathLike = Union[str, os.PathLike]

_PATH_ALLOWED = "corpus 'path' takes a text file or a folder of text files"
_ENWIK8_ALLOWED = "corpus 'enwik8' takes the enwik8 file, enwik8.zip, or a folder holding one"
# What a zip archive can throw on a damaged member: bad headers, bad deflate data,
# early end, encryption (RuntimeError) or an unsupported method (NotImplementedError).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)


class CorpusNotFound(ConfigError, FileNotFoundError):
    """A missing corpus path: one line for the CLI, and still a FileNotFoundError for callers."""


def _why(e: BaseException) -> str:
    """An exception as a short single-line reason (OS errors without the errno prefix)."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    return " ".join(text.split())


def canonical_split(split: str) -> str:
    """Return the canonical split name (``"val"`` -> ``"validation"``) or raise ConfigError."""
    try:
        return _SPLIT_ALIASES[split]
    except (KeyError, TypeError):
        raise ConfigError(
            f"data: unknown split {split!r}; allowed: train, validation (alias val), test"
        ) from None


def split_of_relpath(relpath: str) -> str:
    """The split a file belongs to, from its POSIX path relative to the corpus root."""
    digest = hashlib.sha1(relpath.encode("utf-8", errors="surrogateescape")).hexdigest()
    bucket = int(digest, 16) % 100
    if bucket < 90:
        return "train"
    if bucket < 95:
        return "validation"
    return "test"


def _walk_tree(
    root: Path, *, suffix: Optional[str], skip_dirs: frozenset[str], skip_hidden: bool
) -> list[tuple[str, Path]]:
    """All regular files below ``root`` as (relative POSIX path, path), sorted by relpath.

    An unreadable sub-folder is an error rather than silently missing from the corpus.
    """

    def refuse(e: OSError) -> None:
        raise ConfigError(f"data.path: cannot read folder {e.filename} ({_why(e)}); fix its permissions")

    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=refuse):
        # Pruning dirnames in place stops os.walk from descending into them.
        dirnames[:] = [
            d for d in dirnames if d not in skip_dirs and not (skip_hidden and d.startswith("."))
        ]
        for fname in filenames:
            if suffix is not None and not fname.endswith(suffix):
                continue
            if skip_hidden and fname.startswith("."):
                continue
            full = Path(dirpath) / fname
            if not full.is_file():  # broken symlinks, sockets, fifos
                continue
            out.append((full.relative_to(root).as_posix(), full))
    out.sort(key=lambda t: t[0])
    return out


def _is_binary(path: Path) -> bool:
    """True when the first 8 KiB hold a NUL byte (the usual text/binary sniff)."""
    try:
        with open(path, "rb") as f:
            return b"\x00" in f.read(_BINARY_SNIFF)
    except OSError as e:
        raise ConfigError(f"data.path: cannot read {path} ({_why(e)}); fix its permissions") from None


def _utf8_safe_cut(buf: bytes) -> int:
    """Largest cut <= len(buf) that does not split a UTF-8 character (len(buf) if unsure)."""
    n = len(buf)
    for j in range(n - 1, max(n - 4, 0) - 1, -1):
        b = buf[j]
        if (b & 0xC0) != 0x80:  # ASCII or a lead byte: a character starts here
            need = 4 if b >= 0xF0 else 3 if b >= 0xE0 else 2 if b >= 0xC0 else 1
            cut = j if n - j < need else n
            return cut if cut > 0 else n
    return n  # not UTF-8 here; any cut is as good as another


def _iter_region(f: BinaryIO, start: int, length: int, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield ``length`` bytes of ``f`` from ``start`` in pieces of about ``chunk`` bytes.

    Pieces end just after a newline when there is one, so a BPE sees whole
    lines; a newline-free stretch is cut before a UTF-8 continuation byte so no
    character is split. Concatenating the pieces gives the region exactly.
    """
    f.seek(start)
    remaining = length
    carry = b""
    while remaining > 0:
        block = f.read(min(chunk, remaining))
        if not block:
            raise OSError(f"unexpected end of data ({remaining} bytes short)")
        remaining -= len(block)
        buf = carry + block
        if remaining == 0:
            carry = buf
            break
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            cut = _utf8_safe_cut(buf)
        yield buf[:cut]
        carry = buf[cut:]
    if carry:
        yield carry


class Corpus:
    """Base class: a named source of bytes with three deterministic splits."""

    name: str = "corpus"
    # True for a source that is not text (a single binary file): only a byte-level
    # tokenizer may read it (see require_text).
    binary: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description that changes whenever the split contents may change."""
        raise NotImplementedError

    def iter_chunks(self, split: str) -> Iterator[bytes]:
        """The split's bytes, in order, as a sequence of chunks."""
        raise NotImplementedError

    def read(self, split: str) -> bytes:
        """The whole split as one ``bytes`` (fine for stdlib-sized corpora)."""
        return b"".join(self.iter_chunks(split))


class _FileTreeCorpus(Corpus):
    """Shared logic for corpora made of many files split by relative-path hash."""

    root: Path

    def _files(self) -> list[tuple[str, Path]]:
        raise NotImplementedError

    def split_files(self, split: str) -> list[Path]:
        """Files of ``split`` in concatenation (sorted relative-path) order."""
        split = canonical_split(split)
        return [p for rel, p in self._files() if split_of_relpath(rel) == split]

    def all_splits(self) -> dict[str, list[Path]]:
        """All three splits from a single directory walk."""
        out: dict[str, list[Path]] = {s: [] for s in SPLITS}
        for rel, p in self._files():
            out[split_of_relpath(rel)].append(p)
        return out

    def iter_chunks(self, split: str) -> Iterator[bytes]:
        for p in self.split_files(split):
            yield p.read_bytes() + FILE_SEPARATOR


class StdlibCorpus(_FileTreeCorpus):
    """The interpreter's own standard library sources (see module docstring)."""

    name = "stdlib"

    def __init__(self, root: Optional[PathLike] = None) -> None:
        self.root = Path(root).expanduser() if root is not None else stdlib_root()
        # Only cheap checks here: walking the stdlib costs ~0.5 s and this runs even on
        # a cache hit; empty splits are caught by check_streams.
        if not self.root.exists():
            raise CorpusNotFound(f"data.path: corpus 'stdlib' reads *.py files below a folder; not found: {self.root}")
        if not self.root.is_dir():
            raise ConfigError(f"data.path: corpus 'stdlib' reads *.py files below a folder; {self.root} is not a folder")

    def _files(self) -> list[tuple[str, Path]]:
        return _walk_tree(self.root, suffix=".py", skip_dirs=_EXCLUDED_STDLIB_DIRS, skip_hidden=False)

    def fingerprint(self) -> dict[str, Any]:
        # Walking the tree for sizes costs ~0.5 s on every cache lookup; the
        # interpreter version identifies the stdlib well enough in practice.
        return {
            "kind": "stdlib",
            "root": str(self.root),
            "python": sys.version.split()[0],
            "implementation": sys.implementation.name,
        }


class PathCorpus(_FileTreeCorpus):
    """A local text file (split by position) or folder (split by relative-path hash)."""

    name = "path"

    def __init__(self, path: PathLike) -> None:
        p = Path(path).expanduser()
        if not p.exists():
            raise CorpusNotFound(f"data.path: {_PATH_ALLOWED}; path not found: {p}")
        self.root = p.resolve()
        self.is_dir = self.root.is_dir()
        self._listing: list[tuple[str, Path]] = []
        if self.is_dir:
            self._check_folder(p)
        else:
            self._check_file(p)

    def _check_file(self, p: Path) -> None:
        if not self.root.is_file():  # a fifo, socket or device: no stable size to split by
            raise ConfigError(f"data.path: {p} is not a regular file; {_PATH_ALLOWED}")
        if self.root.stat().st_size == 0:
            raise ConfigError(f"data.path: {p} is empty (0 bytes); {_PATH_ALLOWED} with some content")
        self.binary = _is_binary(self.root)

    def _check_folder(self, p: Path) -> None:
        walked = _walk_tree(self.root, suffix=None, skip_dirs=frozenset(), skip_hidden=True)
        # Listed once: the walk and the binary sniff of every file are the costly part.
        self._listing = [(rel, f) for rel, f in walked if not _is_binary(f)]
        if not walked:
            raise ConfigError(f"data.path: folder {p} holds no files (hidden ones are skipped); {_PATH_ALLOWED}")
        if not self._listing:
            raise ConfigError(
                f"data.path: folder {p} holds no text files ({len(walked)} binary skipped: a NUL byte in the "
                f"first 8 KiB); {_PATH_ALLOWED}"
            )

    # -- folder ---------------------------------------------------------------
    def _files(self) -> list[tuple[str, Path]]:
        return self._listing

    def split_files(self, split: str) -> list[Path]:
        """Files of ``split`` for a folder corpus (a single file has no file split)."""
        if not self.is_dir:
            raise ConfigError(f"data.path: {self.root} is a single file; it is split by position, not by file")
        return super().split_files(split)

    # -- single file ----------------------------------------------------------
    def _bounds(self) -> list[int]:
        """Byte offsets [0, a, b, n] of the 90/5/5 cuts, snapped to UTF-8 starts."""
        n = self.root.stat().st_size
        cuts = [0, n * 90 // 100, n * 95 // 100, n]
        with open(self.root, "rb") as f:
            for i in (1, 2):
                f.seek(cuts[i])
                head = f.read(4)
                skip = 0
                while skip < len(head) and (head[skip] & 0xC0) == 0x80:
                    skip += 1
                cuts[i] = min(cuts[i] + skip, n)
        cuts[2] = max(cuts[2], cuts[1])
        return cuts

    def iter_chunks(self, split: str) -> Iterator[bytes]:
        if self.is_dir:
            yield from super().iter_chunks(split)
            return
        cuts = self._bounds()
        i = SPLITS.index(canonical_split(split))
        with open(self.root, "rb") as f:
            yield from _iter_region(f, cuts[i], cuts[i + 1] - cuts[i])

    def fingerprint(self) -> dict[str, Any]:
        if self.is_dir:
            h = hashlib.sha256()
            files = self._files()
            for rel, p in files:
                st = p.stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            return {"kind": "dir", "root": str(self.root), "n_files": len(files), "files": h.hexdigest()}
        st = self.root.stat()
        return {"kind": "file", "root": str(self.root), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Enwik8Corpus(Corpus):
    """enwik8 from a local file or zip, with the standard 90M/5M/5M byte split."""

    name = "enwik8"

    def __init__(
        self,
        path: PathLike,
        *,
        train_bytes: int = ENWIK8_SIZES[0],
        validation_bytes: int = ENWIK8_SIZES[1],
        test_bytes: int = ENWIK8_SIZES[2],
    ) -> None:
        self.file = self._locate(Path(path).expanduser())
        self.sizes = (int(train_bytes), int(validation_bytes), int(test_bytes))
        if min(self.sizes) < 0:
            raise ConfigError(f"data.corpus: enwik8 split sizes must be >= 0, got {self.sizes}")
        self.zipped = self._sniff_zip()
        if self.zipped:
            # Opening the zip reads its central directory: a truncated or damaged
            # archive fails here, before anything is tokenised.
            try:
                with zipfile.ZipFile(self.file) as zf:
                    have = self._member(zf).file_size
            except _ZIP_ERRORS as e:
                raise ConfigError(f"data.path: {self.file} is not a readable zip archive ({_why(e)}); "
                                  f"{_ENWIK8_ALLOWED} -- download enwik8.zip again") from None
        else:
            have = self.file.stat().st_size
        need = sum(self.sizes)
        if have < need:
            standard = " (the standard enwik8 is 100,000,000 bytes)" if self.sizes == ENWIK8_SIZES else ""
            raise ConfigError(
                f"data.path: {self.file} holds {have:,} bytes but the split needs {need:,} = "
                f"{self.sizes[0]:,} train + {self.sizes[1]:,} validation + {self.sizes[2]:,} test{standard}"
            )

    @staticmethod
    def _locate(p: Path) -> Path:
        if not p.exists():
            raise CorpusNotFound(f"data.path: {_ENWIK8_ALLOWED}; not found: {p}")
        if p.is_dir():
            for name in ("enwik8", "enwik8.zip"):
                cand = p / name
                if cand.is_file():
                    return cand.resolve()
                if cand.exists():
                    raise ConfigError(f"data.path: {cand} is not a file; {_ENWIK8_ALLOWED}")
            raise CorpusNotFound(f"data.path: no enwik8 or enwik8.zip in folder {p}; {_ENWIK8_ALLOWED}")
        if not p.is_file():
            raise ConfigError(f"data.path: {p} is not a regular file; {_ENWIK8_ALLOWED}")
        return p.resolve()

    def _sniff_zip(self) -> bool:
        """Zip by content ("PK" signature) or by name, so a renamed archive is still read as one."""
        try:
            with open(self.file, "rb") as f:
                magic = f.read(2)
        except OSError as e:
            raise ConfigError(f"data.path: cannot read {self.file} ({_why(e)}); {_ENWIK8_ALLOWED}") from None
        return magic == b"PK" or self.file.suffix.lower() == ".zip"

    def _member(self, zf: zipfile.ZipFile) -> zipfile.ZipInfo:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        for info in infos:
            if info.filename.rsplit("/", 1)[-1] == "enwik8":
                return info
        names = [i.filename for i in infos]
        held = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") or "no files"
        raise ConfigError(f"data.path: {self.file} has no member named enwik8 (it holds {held}); {_ENWIK8_ALLOWED}")

    def iter_chunks(self, split: str) -> Iterator[bytes]:
        i = SPLITS.index(canonical_split(split))
        start = sum(self.sizes[:i])
        try:
            if self.zipped:
                with zipfile.ZipFile(self.file) as zf, zf.open(self._member(zf)) as f:
                    # Seeking a compressed member re-reads from the start; fine at 100 MB.
                    yield from _iter_region(f, start, self.sizes[i])
            else:
                with open(self.file, "rb") as f:
                    yield from _iter_region(f, start, self.sizes[i])
        except _ZIP_ERRORS as e:
            # Damaged compressed data only shows when it is decompressed; say which file.
            raise ConfigError(f"data.path: {self.file} is corrupt or changed while reading ({_why(e)}); "
                              f"{_ENWIK8_ALLOWED} -- download it again") from None

    def fingerprint(self) -> dict[str, Any]:
        st = self.file.stat()
        return {
            "kind": "enwik8",
            "file": str(self.file),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sizes": list(self.sizes),
        }


def stdlib_root() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_split_files(split: str) -> list[Path]:
    """The stdlib ``*.py`` files of ``split``, in concatenation order."""
    return StdlibCorpus().split_files(split)


def open_corpus(corpus: str = "stdlib", path: Optional[PathLike] = None) -> Corpus:
    """Construct a corpus by name. ``path`` is required for ``"path"`` and ``"enwik8"``."""
    if corpus == "stdlib":
        return StdlibCorpus(path)
    if corpus in ("path", "enwik8"):
        if path is None:
            raise ConfigError(f"data.path: corpus {corpus!r} needs a path (a local file or folder)")
        return PathCorpus(path) if corpus == "path" else Enwik8Corpus(path)
    raise ConfigError(f"data.corpus: unknown corpus {corpus!r}; allowed: {', '.join(CORPORA)}")


def require_text(src: Corpus) -> None:
    """Refuse a binary source for a text tokenizer (BPE): it would decode it to U+FFFD
    and learn merges of garbage. The byte tokenizer models any bytes, so it needs no check."""
    if src.binary:
        where = getattr(src, "root", src.name)
        raise ConfigError(
            f"data.path: {where} looks binary (a NUL byte in its first 8 KiB); the bpe tokenizer needs "
            "UTF-8 text -- use data.tokenizer: bytes for binary data"
        )


def iter_texts(
    corpus: Union[str, Corpus] = "stdlib",
    split: str = "train",
    *,
    path: Optional[PathLike] = None,
    max_bytes: Optional[int] = None,
) -> Iterator[str]:
    """Chunks of a split decoded as text (invalid UTF-8 -> U+FFFD), e.g. to train a BPE.

    ``max_bytes`` stops after roughly that many bytes (whole chunks), which keeps
    BPE training time bounded on large corpora. The corpus is opened and checked
    (:func:`require_text`) at the call, not at the first ``next``, so a bad path
    fails before any tokenizer training starts.
    """
    src = open_corpus(corpus, path) if isinstance(corpus, str) else corpus
    require_text(src)
    split = canonical_split(split)

    def texts() -> Iterator[str]:
        seen = 0
        for chunk in src.iter_chunks(split):
            if max_bytes is not None and seen >= max_bytes:
                return
            seen += len(chunk)
            yield chunk.decode("utf-8", errors="replace")

    return texts()


def read_split(corpus: Union[str, Corpus], split: str, *, path: Optional[PathLike] = None) -> bytes:
    """A whole split's raw bytes."""
    src = open_corpus(corpus, path) if isinstance(corpus, str) else corpus
    return src.read(split)
