"""Checks that need the machine rather than the config alone, run before any work starts.

Each returns ``None`` when all is well, else the problem as one sentence (``config.validate`` and the
commands prefix it with the key or flag): the device exists, the output folder can be created and written (its
names and length fit the file system), an input path is a file (not a named pipe, a socket or a symbolic link
loop: :func:`path_kind` names what is there), a model accepts the data's input shape. Nothing here writes
anything visible: writability is probed with an anonymous temp file (``O_TMPFILE`` on Linux), and shapes with
tensors on the ``meta`` device (no memory, no compute).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["check_device", "check_sync_bn", "check_output_dir", "check_output_file", "check_input_shape", "on_meta",
           "load_state_dict_checked", "path_kind", "check_input_file"]


def check_device(name: str) -> str | None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that this machine has."""
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name not in ("auto", "cpu") and m is None:
        return f"must be auto, cpu, cuda or cuda:N; got {name!r}."
    if m is not None:
        if not torch.cuda.is_available():
            return (f"{name!r} was requested but this machine has no CUDA device (torch.cuda.is_available() is "
                    "False); use device: cpu (or auto).")
        count = torch.cuda.device_count()
        if m.group(1) is not None and int(m.group(1)) >= count:
            return f"{name!r} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
    return None


def check_sync_bn(device: str) -> str | None:
    """``sync_bn: true`` needs CUDA: PyTorch's SyncBatchNorm runs on NCCL only."""
    if device == "cpu" or not torch.cuda.is_available():
        return ("true needs CUDA (PyTorch's SyncBatchNorm runs on NCCL only) and this run is on the CPU. Set "
                "sync_bn: false: under torchrun the BatchNorm running statistics are then averaged over the "
                "processes at every epoch end.")
    return None


def path_kind(path: str | os.PathLike[str]) -> str:
    """What is at ``path``, as messages name it: ``a file``, ``a folder``, ``a named pipe (FIFO)``, ``a socket``,
    ``a device file``, ``a symbolic link loop``, ``a broken symbolic link (to ...)`` or ``nothing``."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)!r})"
        return "nothing"
    except ValueError:  # a NUL character
        return "nothing"
    for test, kind in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device file"), (stat.S_ISBLK, "a device file")):
        if test(mode):
            return kind
    return "not a file"


def check_input_file(path: str | os.PathLike[str], what: str = "file") -> str | None:
    """``path`` is a file that can be read: else the problem, naming what is there instead (reading a named pipe
    would wait forever; a symbolic link loop is not "missing")."""
    if problem := _nul(path):
        return f"{what} {problem}"
    kind = path_kind(path)
    if kind == "a file":
        return None
    return f"{what} {str(path)!r} " + ("does not exist." if kind == "nothing" else f"is {kind}, not a file.")


def _nul(path: str | os.PathLike[str]) -> str | None:
    """A NUL character in ``path`` (the OS refuses it in any name; Python raises ``ValueError``)."""
    return f"{str(path)!r} contains a NUL character, which no file or folder name can." if "\0" in str(path) else None


def _name_problem(path: str, ancestor: Path) -> str | None:
    """A name or path longer than the file system allows (checked before creating anything)."""
    try:
        name_max, path_max = os.pathconf(ancestor, "PC_NAME_MAX"), os.pathconf(ancestor, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX: the common limits
        name_max, path_max = 255, 4096
    for name in Path(path).parts:
        if len(os.fsencode(name)) > name_max:
            return (f"{name[:40]!r}... is a name of {len(os.fsencode(name))} bytes; this file system allows at most "
                    f"{name_max} per file or folder name.")
    full = len(os.fsencode(str(Path(path).expanduser().absolute())))
    if full + 32 > path_max:  # room for the run's own files inside it
        return f"the path is {full} bytes long; this file system allows {path_max} bytes, the run's files included."
    return None


def _writable(folder: Path) -> str | None:
    try:
        with tempfile.TemporaryFile(dir=folder):  # O_TMPFILE: never visible in the folder
            pass
    except OSError as exc:
        return f"cannot write in {str(folder)!r} ({exc.strerror or exc})."
    return None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while path != path.parent:
        try:
            if path.exists():
                break
        except OSError:  # a name or path too long to look up
            pass
        path = path.parent
    return path


def check_output_dir(path: str) -> str | None:
    """A folder that exists and is writable, or can be created (its nearest existing parent is writable)."""
    if not str(path).strip():
        return ("is empty; give the run's folder, e.g. output_dir: runs/my-run (an empty value would write into "
                "the current folder).")
    if problem := _nul(path):
        return problem
    p = Path(path).expanduser()
    kind = path_kind(p)
    if kind not in ("nothing", "a folder"):
        return f"{str(path)!r} exists and is not a folder (it is {kind})."
    ancestor = _existing_ancestor(p)
    if not ancestor.is_dir():
        return f"{str(path)!r} cannot be created: {str(ancestor)!r} is {path_kind(ancestor)}, not a folder."
    problem = _name_problem(str(path), ancestor)
    if problem:
        return f"{str(path)!r} cannot be created: {problem}"
    problem = _writable(ancestor)
    return f"{str(path)!r} cannot be created or written: {problem}" if problem else None


def check_output_file(path: str) -> str | None:
    """A file path whose folder exists (or can be created) and is writable; not an existing folder."""
    if not str(path).strip():
        return "is empty; give a file name, e.g. results.json."
    if problem := _nul(path):
        return problem
    p = Path(path).expanduser()
    if p.is_dir():
        return f"{str(path)!r} is a folder; give a file name, e.g. {str(p / 'results.json')!r}."
    kind = path_kind(p)
    if kind not in ("nothing", "a file"):  # writing into a named pipe would wait for a reader forever
        return f"{str(path)!r} is {kind}, not a file."
    problem = check_output_dir(str(p.parent))
    return f"{str(path)!r}: its folder {problem}" if problem else None


def on_meta(build: Callable[[], nn.Module]) -> nn.Module | None:
    """``build()`` with every tensor on the ``meta`` device, or None if the model cannot be built there (code
    that reads tensor values while building, e.g. ``.item()`` on drop-path rates, or an operation without a
    meta kernel). Any other error (an option the model does not take, a bad value) is raised: it would fail
    the same way on any device."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()
    except (RuntimeError, NotImplementedError) as exc:
        if "meta" in str(exc).lower():
            return None
        raise


def check_input_shape(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> str | None:
    """A forward pass of a ``meta``-device model on two inputs of ``input_shape``: the model must accept them
    and return ``(2, num_classes)`` logits. Models whose operations lack meta kernels are not checked."""
    was_training = model.training
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out: Any = model.eval()(torch.empty(2, *input_shape, device="meta"))
    except NotImplementedError:
        return None
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"does not accept this dataset's inputs of shape {tuple(input_shape)}: {first}"
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and tuple(out.shape) != (2, num_classes):
        return (f"returns outputs of shape {tuple(out.shape)[1:]} per input, but this dataset has {num_classes} "
                "classes.")
    return None


def load_state_dict_checked(model: nn.Module, state: Any) -> None:
    """``model.load_state_dict(state)`` on a meta-device model: the shape and key checks, without the copy
    (and without torch's warning that copying into meta tensors does nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(state)

