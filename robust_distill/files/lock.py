"""One process per output folder: an exclusive ``flock`` on ``<folder>/.lock``.

Private. ``train`` (rank 0 under torchrun) holds its run folder's lock for the whole run and ``bench`` holds
its grid folder's, so two runs never mix their checkpoints and metrics in one folder. The lock file holds the
holder's PID, host and command, which the refusal names. The kernel drops the lock when the holder dies,
however it dies (``kill -9`` included): a stale ``.lock`` file is never a problem, the next process simply
takes it. The holder removes the file when it is done (and the folder, if it created it and left it empty),
and leaves it where it cannot (a file system remounted read-only).

``flock`` locks are per host on most network file systems (NFS emulates them with ``fcntl`` locks, which it
does forward to the server): two hosts writing one folder on a file system without lock support are not
detected.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from robust_distill.errors import DiskError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no locking)
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderLock", "FolderLockedError", "lock_holder", "LOCK_NAME"]

LOCK_NAME = ".lock"


class FolderLockedError(DiskError):
    """Another live process holds the folder's lock; the message names it."""

    def __init__(self, folder: Path, holder: dict[str, Any], what: str) -> None:
        self.folder, self.holder = folder, holder
        pid = holder.get("pid", "?")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["time"])) if "time" in holder else "?"
        super().__init__(
            errno.EBUSY,
            f"{what} {str(folder)!r} is in use by another process: PID {pid} on {holder.get('host', '?')} "
            f"(`{holder.get('command', '?')}`, since {since}). Two processes writing one folder would mix their "
            f"runs. Wait for it to finish, stop it (`kill {pid}`), or use another folder.")

    def __str__(self) -> str:
        return str(self.strerror)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class FolderLock:
    """``with FolderLock(folder):`` holds the folder's lock (creating the folder) or raises
    :class:`FolderLockedError` at once, naming the holder."""

    def __init__(self, folder: str | os.PathLike[str], what: str = "output folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> FolderLock:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first: removed again on release if still empty
        if fcntl is None:  # pragma: no cover
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise FolderLockedError(self.folder, _read_holder(self.path), self.what) from None
            try:  # the previous holder may have removed the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        prog = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
        prog = prog.parent.name if prog.name == "__main__.py" else prog.name  # python -m <package>
        prog = "robust-distill" if prog == "robust_distill" else prog
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                "command": " ".join([prog, *sys.argv[1:]])}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody else can be using this file
        except OSError:  # read-only by now: the file stays (harmless); the error in flight is the one to report
            pass
        finally:
            os.close(self._fd)
            self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only if empty: a run that failed before writing anything leaves no folder
            except OSError:
                break

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_holder(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who holds ``folder``'s lock (``{"pid", "host", "command", "time"}``), or None if nobody does."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return _read_holder(path) or {"pid": "?"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
