"""Environment of the suite's child processes (``torchrun`` workers, the CLI run as a program)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus ``extra``, with ``PYTHONPATH`` set to this interpreter's whole ``sys.path``.

    A child must import what the parent imports: the project from this checkout, and packages that reached the
    parent through its own ``PYTHONPATH`` (a GPU machine's carried wheels, a ``--target`` install). Setting
    ``PYTHONPATH`` to the project root alone hides those (a ``torchrun`` worker then fails with
    ``ModuleNotFoundError: torchattacks``); site-packages entries are kept in their order, so nothing shadows
    the interpreter's own packages.
    """
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env = {**os.environ, "RD_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    env.update(extra or {})
    return env
