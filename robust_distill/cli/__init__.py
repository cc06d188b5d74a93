"""The ``robust-distill`` command line.

One module per group of commands, each registering its sub-commands with :func:`command`:
``plugins`` (:mod:`.plugins`), ``train`` (:mod:`.train`), ``eval`` (:mod:`.eval`), ``demo`` (:mod:`.demo`),
and the grid and analysis tools ``bench``, ``report``, ``unlearnable``, ``teacher-score``,
``specialization`` (:mod:`.analysis`). :func:`main` maps every error meant for people to a one-paragraph
message, never a traceback, and an exit code:

- 0: done; 1: a grid finished with failed runs;
- 2: a bad command line or configuration (argparse's code for usage errors), checked before any work;
- 3: a plugin, name, file, checkpoint, folder-lock or disk problem;
- 130 / 143: interrupted by Ctrl-C / SIGTERM; 141: the reader of stdout went away (``... | head``), as
  for any command killed by SIGPIPE, without a message.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._io import DiskFullError, InputError
from .._lock import FolderLockedError
from .._proc import Terminated
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..plugin import PluginError
from ..registry import RegistryError

__all__ = ["main", "build_parser", "command", "integer", "radius"]



@dataclass(frozen=True)
class Command:
    help: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, setup: Callable[[argparse.ArgumentParser], None] = lambda p: None
            ) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a sub-command: ``@command("train", "help", setup_arguments)``."""
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(help, setup, fn)
        return fn
    return wrap


# -- argument types: a bad value is argparse's usage error (exit 2) naming the flag ---------------------------


def integer(low: int) -> Callable[[str], int]:
    """An ``int`` argument type that accepts values >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def radius(text: str) -> float:
    """An L-inf radius in (0, 1]: ``0.031`` or ``8/255``."""
    from ..threat import parse_fraction

    try:
        value = parse_fraction(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.031 or a fraction like 8/255, got {text!r}"
                                         ) from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (inputs are images in [0, 1]; write 8/255, not 8), "
                                         f"got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="robust-distill", description="Adversarial robustness distillation: every method, one engine.")
    parser.add_argument("--version", action="version", version=f"robust-distill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        cmd.setup(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from . import analysis, demo, eval, plugins, train  # noqa: F401  (each registers its commands)

    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        code = COMMANDS[ns.command].run(ns)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SystemExit as exc:  # argparse: --help, --version, or a usage error it has printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except ConfigError as exc:
        print(f"robust-distill: {exc}", file=sys.stderr)
        return 2
    except (PluginError, RegistryError, CheckpointError, InputError, FolderLockedError, DiskFullError,
            OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return _closed_pipe()
        print(f"robust-distill: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("robust-distill: interrupted; `train` resumes from the last finished epoch.", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"robust-distill: stopped ({exc}); `train` resumes from the last finished epoch.", file=sys.stderr)
        return 128 + exc.signum


def _closed_pipe() -> int:
    """``robust-distill ... | head``: stop quietly, as commands killed by SIGPIPE do (exit 141)."""
    try:  # nothing more can reach the reader: later writes (and the interpreter's final flush) go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141

