"""One writer per run folder, and what that writer may find there.

Two ``archlab train`` (or ``compare``) processes pointed at the same folder would interleave
their checkpoints and metrics and both report success. :class:`RunLock` makes the second one
stop at once with a line naming the folder and the process that holds it.

The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the holder dies
however it dies (SIGKILL, OOM, a lost node), so a lock file left behind by a killed process is
never mistaken for a live writer. The file's text (PID and host) only serves the message.
Where ``flock`` is unavailable (no ``fcntl``, or a filesystem without locks) the PID in the file
is checked instead: a lock held by a process that no longer exists on this host is taken over.

:func:`check_run_folder` decides, under the lock, whether a folder may be started or resumed;
:func:`trim_metrics` cuts ``metrics.jsonl`` back to the step training restarts from.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path
from types import TracebackType


from archlab.atomic import pid_alive, write_text_atomic
from archlab.config import Config, load_yaml, parse_config
from archlab.registry import ConfigError, flatten
from archlab.train.checkpoint import CHECKPOINT, folder_checkpoint

try:
    import fcntl
except ImportError:  # not POSIX: PID files only
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def _describe(text: str) -> str:
    parts = text.split()
    if len(parts) >= 2:
        return f"pid {parts[0]} on {parts[1]}"
    return f"pid {parts[0]}" if parts else "another process"


class RunLock:
    """An exclusive, non-blocking lock on a run folder for as long as the holder keeps it.

    ``acquire()`` raises :class:`ConfigError` when another process holds the folder; ``release()``
    is idempotent and also runs on garbage collection. Usable as a context manager."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, holder: str) -> None:
        raise ConfigError(
            f"--out {self.folder}: in use by another archlab process ({_describe(holder)}); "
            "wait for it to finish or choose another folder"
        )

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(10):  # retried only when the holder removed the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock_fd(fd):
                    self._refuse(self._read(fd))
                # The holder unlinks the file as it releases; if it did so between our open and
                # our lock we hold a lock on a dead inode, and a newcomer could lock a new file.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)  # the fallback check read it: rewind, or we write after a hole
                os.write(fd, me.encode())
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            return self
        raise ConfigError(f"--out {self.folder}: could not lock {self.path} (it keeps disappearing)")

    def _lock_fd(self, fd: int) -> bool:
        """True when this process now holds the lock on ``fd``."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                # ENOLCK / EOPNOTSUPP: this filesystem has no locks; fall back to the PID check
        parts = self._read(fd).split()
        if len(parts) >= 2 and parts[1] == socket.gethostname() and parts[0].isdigit():
            pid = int(parts[0])
            return pid == os.getpid() or not pid_alive(pid)
        # Another host's PID cannot be checked: trust the file only while it names someone.
        return not parts

    @staticmethod
    def _read(fd: int) -> str:
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 256).decode(errors="replace").strip()
        return ""

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Remove the file first, while still locked, so no newcomer locks the inode we drop.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit modules may be half torn down
            self.release()


# Keys of the config that may differ between a run and its resumption (extend the budget).
RESUMABLE_CHANGES = {"train.steps", "train.tokens", "train.seconds"}


def check_run_folder(folder: Path, cfg: Config, *, resume: bool) -> None:
    """Refuse, in one line, a start that would overwrite a run or a resume with nothing (or
    something else) to resume: a resume needs the folder's config.yaml *and* checkpoint, and
    a config that differs from the saved one only in its budget."""
    ckpt, saved_cfg = folder_checkpoint(folder), folder / "config.yaml"
    if not resume:
        if ckpt.exists():
            raise ConfigError(
                f"--out {folder}: already holds a checkpoint; pass --resume to continue it or choose another folder"
            )
        return
    if not folder.is_dir():
        raise ConfigError(f"--resume: {folder} does not exist; nothing to resume (drop --resume to start "
                          "a new run there)")
    if not saved_cfg.exists():
        raise ConfigError(f"--resume: {folder} holds no run (no config.yaml); nothing to resume (drop "
                          "--resume to start a new run there)")
    if not ckpt.exists():
        # Restarting from step 0 here would append a second history to the old metrics.
        raise ConfigError(f"--resume: {folder} has a config.yaml but no {CHECKPOINT} (the run stopped "
                          "before its first save); start it again without --resume")
    try:
        old = flatten(parse_config(load_yaml(saved_cfg, "the run's config.yaml"), require_budget=False).to_dict())
    except ConfigError as e:  # load_yaml's lines name the file already; parse_config's do not
        msg = str(e)
        raise ConfigError(msg if str(saved_cfg) in msg else f"{saved_cfg}: {msg}") from None
    new = flatten(cfg.to_dict())
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(
            f"--resume: config differs from the run's saved config at {', '.join(diff[:5])}; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )


def trim_metrics(path: Path, step: int) -> None:
    """Drop the records after ``step`` (and lines cut short by a kill) from a metrics.jsonl,
    atomically: those steps are trained again and would otherwise be logged twice."""
    if not path.exists():
        return
    keep, changed = [], False
    # A kill mid-write can leave any bytes at the end: undecodable ones become a line that
    # fails to parse and is dropped, like a cut-short one, instead of refusing the resume.
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            ok = isinstance(rec, dict) and not (isinstance(rec.get("step"), (int, float)) and rec["step"] > step)
        except json.JSONDecodeError:
            ok = False
        if ok:
            keep.append(line)
        changed |= not ok
    if changed:
        write_text_atomic(path, "".join(line + "\n" for line in keep))
