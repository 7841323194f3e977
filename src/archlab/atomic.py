"""Replacing a file so that a reader (or a crash) never sees half of it."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Callable


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host. When the answer is unclear (a process of
    another user, an unexpected error) it says yes: both callers (stale temp files, a run
    folder's lock) must never take over from a live writer."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a live process of another user
        return True
    return True


def _writer_alive(suffix: str) -> bool:
    pid_text, _, thread_text = suffix.partition("-")
    if not pid_text.isdigit():
        return False  # not a name this module writes
    pid = int(pid_text)
    if pid == os.getpid():  # ours: live only if another thread of this process is writing it
        others = {t.ident for t in threading.enumerate()} - {threading.get_ident()}
        return thread_text.isdigit() and int(thread_text) in others
    return pid_alive(pid)


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>…`` siblings of ``path`` whose writer is gone (a process killed
    mid-save leaves one, possibly gigabytes). Temp files of live writers are left alone."""
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.glob(_tmp_prefix(path) + "*"))
    except OSError:
        return removed
    for tmp in siblings:
        if _writer_alive(tmp.name[len(_tmp_prefix(path)):]):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _fsync_dir(folder: Path) -> None:
    # The rename itself is only durable once the folder's entry is on disk; not all platforms
    # (or filesystems) let a folder be opened for that, and it is not worth failing a save over.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` a temporary file in the same folder, fsync it, rename it over ``path``.

    If writing fails (an exception, Ctrl-C), ``path`` keeps its previous content and no
    temporary file is left. A process killed outright cannot clean up; its temp file is removed
    after the next successful replacement of the same path (:func:`remove_stale_temps`)."""
    path = Path(path)
    # pid first (stale-file detection reads it), then the thread, so two threads never share one
    tmp = path.with_name(f"{_tmp_prefix(path)}{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        # Never let the cleanup mask the error that brought us here.
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)
    remove_stale_temps(path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
