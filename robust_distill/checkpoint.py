"""Checkpoints: written atomically (temp file + rename), read with ``torch.load(weights_only=True)``.

A robust-distill checkpoint is a dict with ``format``, the ``model`` spec needed to rebuild the network
(``{"key": "timm:resnet18_cifar", "kwargs": {...}, "num_classes": 10, "input_shape": [3, 32, 32]}``) and
its ``state_dict``; training checkpoints add optimizer, epoch and the state of every stateful part.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "atomic_save", "atomic_write_text", "load_checkpoint", "CheckpointError"]

FORMAT = "robust-distill/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a robust-distill checkpoint."""


def _atomic(path: Path, write: Any) -> None:
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

    A tensor holding a NaN or an inf is refused (:class:`CheckpointError`, nothing written): no
    checkpoint with non-finite weights is ever saved (the engine stops with a fuller message first).
    """
    from .monitor import describe_nonfinite, nonfinite_tensors

    found = nonfinite_tensors(obj)
    if found:
        raise CheckpointError(f"Refusing to write {str(path)!r}: non-finite values in {describe_nonfinite(found)}.")
    _atomic(Path(path), lambda f: torch.save(dict(obj), f))


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors say what is wrong with which file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Checkpoint {str(p)!r} does not exist.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"Could not read checkpoint {str(p)!r} with torch.load(weights_only=True): {exc}. "
            "If it is a truncated or HTML file from a failed download, delete it and download it again."
        ) from exc


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` (DataParallel/DDP) and ``model.`` prefixes research checkpoints carry."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def build_from_checkpoint(path: str | os.PathLike[str], regs: Any, *, arch: Mapping[str, Any] | None = None,
                          dataset: Any = None) -> tuple[Any, dict[str, Any]]:
    """Rebuild the network saved in ``path`` and load its weights; returns ``(model, checkpoint)``.

    A robust-distill checkpoint names its architecture. A plain state dict (or ``{"state_dict": ...}``)
    needs ``arch={"key": "timm:resnet18_cifar", "kwargs": {...}}`` and the ``dataset`` info.
    """
    from .config import split_spec

    ckpt = load_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        spec = dict(ckpt["model"])
        state = ckpt["state_dict"]
        num_classes, input_shape = spec["num_classes"], tuple(spec["input_shape"])
        if arch is not None:
            spec.update(arch)
    else:
        if arch is None or dataset is None:
            raise CheckpointError(
                f"{str(path)!r} is not a robust-distill checkpoint (no 'format' key), so its architecture is "
                "unknown: give it, e.g. teachers: {robust: {key: 'checkpoint:file.pt', kwargs: {arch: "
                "'timm:resnet18_cifar'}}}.")
        spec = {"key": arch["key"], "kwargs": dict(arch.get("kwargs", {}))}
        state = _strip_prefixes(ckpt.get("state_dict", ckpt))
        num_classes, input_shape = dataset.num_classes, tuple(dataset.input_shape)
    source, name = split_spec(spec["key"])
    model = regs.student_sources.get(source).build(name, input_shape=input_shape, num_classes=num_classes,
                                                   **spec.get("kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"The weights in {str(path)!r} do not fit {spec['key']}: {exc}") from exc
    return model.eval(), ckpt
