"""Atomic file writes (temp file in the same folder, fsync, rename): a crash never leaves half a file.

Private: the one implementation behind every file the project writes (checkpoints, metrics, configs,
reports, plots).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

__all__ = ["atomic_write", "atomic_save", "atomic_write_text", "atomic_write_json"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_save(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temp file in the same folder, then rename: a crash never leaves half a file.

    A tensor holding a NaN or an inf is refused (``CheckpointError``, nothing written): no checkpoint with
    non-finite weights is ever saved (the engine stops with a fuller message first).
    """
    from .checkpoint import CheckpointError
    from .monitor import describe_nonfinite, nonfinite_tensors

    found = nonfinite_tensors(obj)
    if found:
        raise CheckpointError(f"Refusing to write {str(path)!r}: non-finite values in {describe_nonfinite(found)}.")
    atomic_write(path, lambda f: torch.save(dict(obj), f))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)
