"""The ``robust-distill`` command line.

One module per group of commands, each registering its sub-commands with :func:`command`:
``plugins`` (:mod:`.plugins`), ``train`` (:mod:`.train`), ``eval`` (:mod:`.eval`), ``demo`` (:mod:`.demo`),
``export`` (:mod:`.export`),
and the grid and analysis tools ``bench``, ``report``, ``unlearnable``, ``teacher-score``,
``specialization`` (:mod:`.analysis`). :func:`main` maps every error meant for people to a one-paragraph
message and an exit code (2: bad configuration; 3: a plugin, name, file or checkpoint problem).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._compat import MissingDependencyError
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..hub import HubError
from ..plugin import PluginError
from ..registry import RegistryError

__all__ = ["main", "build_parser"]



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
    from . import analysis, demo, eval, export, plugins, train  # noqa: F401  (each registers its commands)

    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return COMMANDS[ns.command].run(ns)
    except ConfigError as exc:
        print(f"robust-distill: {exc}", file=sys.stderr)
        return 2
    except (PluginError, RegistryError, CheckpointError, HubError, MissingDependencyError, FileNotFoundError) as exc:
        print(f"robust-distill: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("robust-distill: interrupted; `train` resumes from the last finished epoch.", file=sys.stderr)
        return 130

