"""Checkpoints: the format, and reading them (and any weights file) without ever running code from a file.

Every weights file the project reads goes through :func:`load_weights_file`: ``.safetensors`` through safetensors,
anything else through ``torch.load(weights_only=True)`` with a short allow-list of harmless types that old
research checkpoints pickle (numpy scalars, arrays and dtypes, ``argparse.Namespace``; :data:`SAFE_GLOBALS`).
Third-party loaders (timm, RobustBench, ``torch.hub``) run inside :func:`weights_only_loads`, which forces
their ``torch.load`` calls through the same path. The one way to unpickle arbitrary objects is the explicit
opt-in ``trust_checkpoint: true`` (a model source option) or ``--trust-checkpoint`` (``robust-distill eval``).

A robust-distill checkpoint is a dict with ``format``, the ``model`` spec needed to rebuild the network
(``{"key": "timm:resnet18_cifar", "kwargs": {...}, "num_classes": 10, "input_shape": [3, 32, 32]}``) and
its ``state_dict``; training checkpoints add optimizer, epoch and the state of every stateful part.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors

from robust_distill import _moved
from robust_distill.core.components import split_spec
from robust_distill.core.preflight import check_input_file, load_state_dict_checked, on_meta
from robust_distill.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["FORMAT", "load_checkpoint", "load_weights_file", "load_state_dict_file", "weights_only_loads",
           "CheckpointError", "UnsafeCheckpointError", "SAFE_GLOBALS", "TRUST_HINT", "build_from_checkpoint"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release

FORMAT = "robust-distill/1"


TRUST_HINT = ("Loading it would unpickle arbitrary Python objects, which can run code hidden in the file, so "
              "robust-distill refuses. If you trust where the file comes from, opt in for this model with "
              "`trust_checkpoint: true` in its options (`--trust-checkpoint` for `robust-distill eval`), or "
              "re-save its weights as a plain state dict or .safetensors file.")


def _safe_globals() -> list[Any]:
    core = importlib.import_module("numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2
                                   else "numpy.core.multiarray")  # numpy 1.26 has a `_core` without it
    out: list[Any] = [np.dtype, np.ndarray, argparse.Namespace]
    for fn in ("scalar", "_reconstruct"):  # pickled under numpy 1's and numpy 2's module names
        f = getattr(core, fn)
        out += [f, (f, f"numpy.core.multiarray.{fn}"), (f, f"numpy._core.multiarray.{fn}")]
    out += [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                        "uint64", "float16", "float32", "float64", "complex64", "complex128")]
    return out


#: The types beyond tensors and containers that :func:`load_weights_file` accepts: numpy scalars, arrays and dtypes
#: (old RobustBench and research checkpoints store ``best_acc`` as ``np.float64``) and ``argparse.Namespace``
#: (training arguments). Constructing them runs no user code.
SAFE_GLOBALS: list[Any] = _safe_globals()

_torch_load = torch.load  # the real one, also while :func:`weights_only_loads` has replaced ``torch.load``


def load_weights_file(f: Any, *, map_location: Any = "cpu", trust: bool = False, mmap: bool | None = None) -> Any:
    """Read a weights file (a path or a binary file object) without running code from it.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``
    plus :data:`SAFE_GLOBALS`. ``trust=True`` is the explicit opt-in to ``weights_only=False``. Raises
    :class:`UnsafeCheckpointError` (naming the offending type) when the file needs more than weights.
    """
    name = str(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", repr(f))
    if isinstance(f, (str, os.PathLike)) and str(f).endswith(".safetensors"):
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        return load_safetensors(str(f), device=str(device))
    if mmap and not (isinstance(f, (str, os.PathLike)) and zipfile.is_zipfile(f)):
        mmap = None  # only torch.save's zip format can be memory-mapped (not the legacy one)
    if trust:
        return _torch_load(f, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return _torch_load(f, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Can only build .*? but got (<[^>]+>)", str(exc))
        if found is None:  # not refused for its content: a corrupt file, or not a pickle at all
            raise
        what = found.group(1) or found.group(2)
        raise UnsafeCheckpointError(f"{name!r} pickles {what}, not only weights. {TRUST_HINT}") from None


@contextlib.contextmanager
def weights_only_loads(trust: bool = False) -> Iterator[None]:
    """Inside the block, every ``torch.load`` reads through :func:`load_weights_file`, whatever its caller passes.

    For third-party loaders that call ``torch.load`` themselves, some with ``weights_only=False`` (timm's
    ``checkpoint_path`` and ``pretrained_cfg['file']``, RobustBench's ``load_model`` on torch < 2.6 or with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``): not thread-safe, used only while models are built at start-up.
    """
    def guarded(f: Any, map_location: Any = None, *args: Any, mmap: bool | None = None, **kwargs: Any) -> Any:
        return load_weights_file(f, map_location=map_location, trust=trust, mmap=mmap)

    original, torch.load = torch.load, guarded
    try:
        yield
    finally:
        torch.load = original


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", *, trust: bool = False,
                    mmap: bool | None = None) -> Any:
    """Load a checkpoint through :func:`load_weights_file`; errors say what is wrong with which file.

    ``mmap=True`` maps the tensors' storage instead of reading it (cheap checks of large files).
    """
    p = Path(path)
    problem = check_input_file(p, "Checkpoint")
    if problem:
        raise CheckpointError(problem)
    try:
        return load_weights_file(p, map_location=map_location, trust=trust, mmap=mmap)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        cut = _cut_short(p)
        if cut is not None:
            raise CheckpointError(f"Could not read checkpoint {str(p)!r}: {cut}. A copy or download that did not "
                                  "finish leaves such a file: copy or download it again.") from exc
        why = str(exc) or type(exc).__name__
        raise CheckpointError(
            f"Could not read checkpoint {str(p)!r} with torch.load(weights_only=True): {why}. "
            "If it is a truncated or HTML file from a failed download, delete it and download it again."
        ) from exc


def _cut_short(path: Path) -> str | None:
    """Why an unreadable file is incomplete: ``"it is empty (0 bytes)"``, or ``"it is truncated at N bytes
    (...)"`` for the start of a zip archive (``torch.save``'s format) without the index that ends every archive;
    None otherwise. The total size is unknowable: only that index records it."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "it is empty (0 bytes)"
        with path.open("rb") as f:
            if not b"PK\x03\x04".startswith(f.read(4)) or zipfile.is_zipfile(f):  # the zip format's first bytes
                return None
    except OSError:
        return None
    return (f"it is truncated at {size} bytes (it begins as a torch.save zip archive but lacks the archive's end, "
            "its index)")


#: Where research checkpoints keep the weights, in timm's order of preference (EMA weights first).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net")


def _strip_prefixes(state: Mapping[str, Any], prefixes: tuple[str, ...] = ("module.", "model.")) -> dict[str, Any]:
    """Drop the ``module.`` (DataParallel/DDP) and ``model.`` prefixes research checkpoints carry."""
    out = {}
    for k, v in state.items():
        for prefix in prefixes:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict_file(path: str | os.PathLike[str], *, trust: bool = False,
                         prefixes: tuple[str, ...] = ("module.", "_orig_mod."), mmap: bool | None = None
                         ) -> dict[str, Any]:
    """The weights of a checkpoint file, as timm reads ``checkpoint_path``: the first of
    :data:`STATE_DICT_KEYS` that holds a mapping (else the whole file), without the DDP/compile prefixes."""
    ckpt = load_checkpoint(path, trust=trust, mmap=mmap)
    if isinstance(ckpt, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(ckpt.get(key), Mapping):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(ckpt).__name__}, not a state dict.")
    return _strip_prefixes(ckpt, prefixes)


def build_from_checkpoint(path: str | os.PathLike[str], regs: Any, *, arch: Mapping[str, Any] | None = None,
                          dataset: Any = None, trust: bool = False, meta: bool = False) -> tuple[Any, dict[str, Any]]:
    """Rebuild the network saved in ``path`` and load its weights; returns ``(model, checkpoint)``.

    A robust-distill checkpoint names its architecture. A plain state dict (or ``{"state_dict": ...}``)
    needs ``arch={"key": "timm:resnet18_cifar", "kwargs": {...}}`` and the ``dataset`` info.
    ``meta=True`` is the check before any work: the file is read (memory-mapped), the network built on the
    ``meta`` device and the weights' names and shapes compared, without copying anything; the model is None
    when the architecture cannot be built on ``meta``.
    """
    ckpt = load_checkpoint(path, trust=trust, mmap=meta or None)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(ckpt).__name__}, not a checkpoint or state dict.")
    if ckpt.get("format") == FORMAT:
        try:
            spec = dict(ckpt["model"])
            state = ckpt["state_dict"]
            num_classes, input_shape = spec["num_classes"], tuple(spec["input_shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{str(path)!r} says it is a {FORMAT} checkpoint but lacks {exc}: it was not "
                                  "written by robust-distill, or was edited.") from None
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
    student_source = regs.student_sources.get(source)

    def build() -> Any:
        return student_source.build(name, input_shape=input_shape, num_classes=num_classes, **spec.get("kwargs", {}))

    model = on_meta(build) if meta else build()
    if model is None:
        return None, ckpt
    try:
        if meta:
            load_state_dict_checked(model, state)
        else:
            model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"The weights in {str(path)!r} do not fit {spec['key']}: {exc}") from exc
    return model.eval(), ckpt
