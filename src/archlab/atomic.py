"""Replacing a file so that a reader (or a crash) never sees half of it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a temporary file in the same folder, fsync it, rename it over ``path``.
    If writing fails, ``path`` keeps its previous content and no temporary file is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
