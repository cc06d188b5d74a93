"""Child processes never outlive the process that started them; a PID is only "running" while it lives.

Private. Three mechanisms, for the two launchers the project uses:

- ``bench`` (or the submitit job of a run) starts every run through :func:`guarded`, a two-line trampoline
  that asks the kernel for a parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, kept across
  ``exec``) and then ``exec``\\ s the real command: if ``bench`` (the job) dies, even by ``kill -9``, its
  ``train`` (or ``torchrun``) children get SIGTERM.
- Under ``torchrun`` every worker arms the same signal for itself (:func:`die_with_parent`, called by
  :func:`robust_distill.engine.distributed.init_distributed`): torchrun starts each worker in a session of its own,
  so nothing else stops them when the launcher is killed.
- ``bench`` turns SIGTERM and SIGHUP into an exception (:func:`signals_raise`), so that its clean-up runs
  (children terminated and waited for, their ``status.json`` set to ``interrupted``); ``torchrun`` already
  forwards these signals to its workers.

A ``train`` that receives SIGTERM dies at once: its files are always consistent (atomic writes, ``last.pt``
written last), the kernel releases its folder lock, and the temp file of a write it was in the middle of is
removed by the next run in that folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["die_with_parent", "guarded", "pid_alive", "Terminated", "signals_raise"]

_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
# argv: <expected parent PID> <command...>; prctl's setting survives execv (not a set-user-ID program)
_TRAMPOLINE = ("import ctypes, os, signal, sys\n"
               "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
               "if os.getppid() != int(sys.argv[1]): sys.exit(143)\n"
               "os.execv(sys.argv[2], sys.argv[2:])\n")


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux only; returns whether armed).

    If the parent is already gone (re-parented to init or a subreaper in the meantime), nothing would ever
    deliver the signal: the caller's parent is compared with the one at the call.
    """
    if not _LINUX:
        return False
    parent = os.getppid()
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # died between the two calls
        os.kill(os.getpid(), sig)
    return True


def guarded(command: list[str]) -> list[str]:
    """``command`` (its first item an absolute executable) wrapped so it gets SIGTERM when we die."""
    if not _LINUX:
        return command
    return [sys.executable, "-c", _TRAMPOLINE, str(os.getpid()), *command]


def pid_alive(pid: Any) -> bool:
    """True while the process ``pid`` exists on this host and is not a zombie."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


class Terminated(BaseException):  # noqa: N818  (like KeyboardInterrupt: a request to stop, not an error)
    """SIGTERM or SIGHUP arrived while :func:`signals_raise` was active."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")


@contextlib.contextmanager
def signals_raise(*signums: int) -> Iterator[None]:
    """Inside the block, each of ``signums`` (default SIGTERM, SIGHUP) raises :class:`Terminated`."""
    signums = signums or (signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = {}
    try:
        for s in signums:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        pass
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
