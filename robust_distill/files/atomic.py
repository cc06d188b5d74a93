"""Atomic file writes (temp file in the same folder, fsync, rename): a crash never leaves half a file.

Private: the one implementation behind every file the project writes (checkpoints, metrics, configs,
reports, plots), and the one place that reads the JSON files it wrote back with errors naming the file.

- A write goes to ``.<name>.<8 random characters>.tmp`` beside the target, is flushed and fsynced, then
  renamed over the target (``os.replace``): a reader sees the old file or the new one, never a mix.
- The new file gets the mode a plain ``open(path, "w")`` would give it, ``0o666 & ~umask``
  (``tempfile.mkstemp`` creates ``0o600``, which would hide results from the group on a shared cluster).
- A write that fails (a read-only file system, a permission, an I/O error) is a :class:`WriteError` naming
  the file, not its temp file; a full disk (``ENOSPC``, ``EDQUOT``) is a :class:`DiskFullError`, whatever layer
  saw it first (``torch.save`` turns it into "unexpected pos ..."). The old file stays as it was.
- A temp file left by a process that was killed mid-write is removed by :func:`remove_stale_temp_files`,
  which the owner of a folder (the holder of its lock) calls on start.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from robust_distill.errors import CheckpointError, CorruptFileError, DiskFullError, InputError, WriteError

__all__ = ["atomic_write", "atomic_save", "nonfinite_tensors", "describe_nonfinite", "atomic_write_text",
           "atomic_write_json", "read_json", "read_jsonl", "remove_stale_temp_files", "WriteError", "DiskFullError",
           "InputError", "CorruptFileError"]

#: what :func:`atomic_write` names its temp files (``tempfile.mkstemp``'s 8 random characters)
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Recording:
    """A binary file that remembers the first ``OSError`` its writes raised (torch.save hides it)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _write_error(path: Path, exc: OSError) -> WriteError:
    """The error for a write of ``path`` that failed with ``exc`` (raised on its temp file, or inside torch)."""
    if exc.errno not in _FULL:
        return WriteError(exc.errno, f"Could not write {str(path)!r}: {exc.strerror or exc}. The previous version "
                          "of the file, if any, is intact: run the same command again once it can be written.",
                          str(path))
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        errno.ENOSPC, f"No space left on device while writing {str(path)!r} ({free} on its file system; "
        f"{type(exc).__name__}: {exc}). The previous version of the file, if any, is intact. Free some space "
        "(or write elsewhere) and run the same command again.", str(path))


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it to ``path`` (see the module doc)."""
    path = Path(path)
    tmp = recording = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            recording = _Recording(f)
            write(recording)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # gone, or the file system is read-only by now: the next owner removes it
                pass
        cause = recording.error if recording is not None and recording.error is not None else exc
        if isinstance(cause, OSError) and not isinstance(exc, WriteError):
            raise _write_error(path, cause) from exc
        raise


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def nonfinite_tensors(obj: Any) -> list[tuple[str, Tensor]]:
    """``(path, tensor)`` of every floating-point tensor in ``obj`` holding a NaN or an inf.

    One host synchronisation for the whole object (the per-tensor flags are stacked first).
    """
    floats = [(name, t) for name, t in _tensors(obj) if t.is_floating_point() or t.is_complex()]
    if not floats:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(floats):
        by_device.setdefault(t.device, []).append(i)
    bad: list[int] = []
    for idx in by_device.values():
        flags = torch.stack([torch.isfinite(floats[i][1].detach()).all() for i in idx]).cpu()
        bad.extend(i for i, ok in zip(idx, flags.tolist(), strict=True) if not ok)
    return [floats[i] for i in sorted(bad)]


def describe_nonfinite(found: list[tuple[str, Tensor]], limit: int = 3) -> str:
    """``"'student.bn1.running_var' (4 inf of 16), ..."`` for an error message."""
    parts = []
    for name, t in found[:limit]:
        t = t.detach()
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        what = " and ".join(s for s in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if s)
        parts.append(f"{name!r} ({what} of {t.numel()})")
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return ", ".join(parts) + more


def atomic_save(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: a crash never leaves half a file.

    A tensor holding a NaN or an inf is refused (``CheckpointError``, nothing written): no checkpoint with
    non-finite weights is ever saved (the engine stops with a fuller message first).
    """
    found = nonfinite_tensors(obj)
    if found:
        raise CheckpointError(f"Refusing to write {str(path)!r}: non-finite values in {describe_nonfinite(found)}.")
    atomic_write(path, lambda f: torch.save(dict(obj), f))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def _corrupt(what: str, path: Path, kind: str, exc: BaseException) -> CorruptFileError:
    return CorruptFileError(f"{what} {str(path)!r} is not valid {kind} ({exc}); it was cut short or edited by hand. "
                            "Restore or delete it, and run again.")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """``json.loads`` of a file; a file that is not JSON is a :class:`CorruptFileError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {str(path)!r} is a folder, not a JSON file.")
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _corrupt(what, path, "JSON", exc) from None


def read_jsonl(path: str | os.PathLike[str], what: str = "file") -> list[Any]:
    """One JSON value per non-empty line (``metrics.jsonl``); errors name the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise _corrupt(what, path, "JSON lines", exc) from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            if line.strip():
                out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _corrupt(what, path, f"JSON lines (line {i})", exc) from None
    return out


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> list[str]:
    """Delete the temp files interrupted atomic writes left in ``folder`` (only what :func:`atomic_write`
    names its temp files; call it only while holding the folder's lock). Returns their names."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed
