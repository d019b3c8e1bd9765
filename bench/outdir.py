"""The output directory of a run: one writer at a time, and files that are whole or absent.

- :class:`OutputLock`: an exclusive ``flock`` on ``<out>/.lock`` held for a whole run. A second run on
  the same directory (with or without ``--resume``) is refused with the holder's pid; readers
  (``tlstm-bench report``, ``bench.results.load``) take no lock and keep working while a run appends.
  The lock is re-entrant within one process, so the runner can hold it inside the CLI's hold.
- :func:`atomic_write`: every file other than the append-only ``results.jsonl`` is written to a
  temporary file in the same directory, fsynced and renamed over the target, so a full disk or a kill
  leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

LOCK_FILE = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: os.umask can only be read by setting it


class OutputBusy(RuntimeError):
    """Another process holds the output directory's lock; the message names its pid."""


class OutputLock:
    """``with OutputLock(out_dir):`` holds the directory's lock for the block; raises OutputBusy if taken."""

    _held: dict[Path, int] = {}  # directory -> how many holds this process has on it

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir).resolve() / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        directory = self.path.parent
        if OutputLock._held.get(directory):
            OutputLock._held[directory] += 1
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(f"{directory} is in use by another tlstm-bench run (pid {holder}); wait for it to "
                             "finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        OutputLock._held[directory] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        directory = self.path.parent
        OutputLock._held[directory] -= 1
        if OutputLock._held[directory] == 0:
            del OutputLock._held[directory]
            if self._fd is not None:
                os.close(self._fd)  # closing releases the flock; the file stays, with the last holder's pid
                self._fd = None


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` whole: a temporary file beside it, fsynced, then renamed over it."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a report is for others to read too
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself is durable once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
