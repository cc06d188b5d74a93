"""The ``robust-distill`` command line.

Sub-commands come from the ``rd_register_commands`` hook (datasette's ``register_commands``): the built-in ones
from the core plugins, one module per group (``plugins`` :mod:`.plugins`, ``train`` :mod:`.train`, ``eval``
:mod:`.eval`, ``demo`` :mod:`.demo`, and the grid and analysis tools ``bench``, ``report``, ``unlearnable``,
``teacher-score``, ``specialization`` :mod:`.analysis`), the others from any plugin. A module declares a command
with :func:`command` and registers it in its hook::

    @command("export", "export a checkpoint to ONNX", _export_args)
    def cmd_export(ns: argparse.Namespace) -> int:
        ...

    @hookimpl
    def rd_register_commands(commands):
        commands.register(cmd_export)

:func:`main` maps every error meant for people to a one-paragraph message and an exit code (2: bad
configuration; 3: a plugin, name, file or checkpoint problem; 4: a run that cannot go on, e.g. it
diverged or the platform cannot compile).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..checkpoint import CheckpointError
from ..compilation import CompileUnavailableError
from ..config import ConfigError
from ..monitor import DivergenceError
from ..plugin import PluginError
from ..registry import Registry, RegistryError

if TYPE_CHECKING:
    from ..plugin import PluginManager

__all__ = ["main", "build_parser", "command", "Command", "CommandRegistry", "build_commands"]

Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without arguments."""


@dataclass(frozen=True)
class Command:
    """A sub-command: ``robust-distill NAME ...``.

    :param name: what users type.
    :param help: one line for ``robust-distill --help``.
    :param setup: adds the command's arguments to its ``argparse`` parser.
    :param run: receives the parsed arguments, returns the exit code.
    """

    name: str
    help: str
    setup: Setup
    run: Run


def command(name: str, help: str, setup: Setup = _no_arguments) -> Callable[[Run], Run]:
    """Declare ``fn`` as the sub-command ``name``: ``@command("train", "help", add_arguments)``.

    Only marks the function (it stays callable as before); a ``rd_register_commands`` implementation makes it a
    command with ``commands.register(fn)``.
    """
    def mark(fn: Run) -> Run:
        fn.__rd_command__ = Command(name, help, setup, fn)  # type: ignore[attr-defined]
        return fn
    return mark


class CommandRegistry(Registry[Command]):
    """The sub-commands, filled by ``rd_register_commands``; a name registered by two plugins is an error."""

    def __init__(self) -> None:
        super().__init__("command")

    def register(self, obj: Any = None, *, name: str | None = None, help: str | None = None,  # type: ignore[override]
                 setup: Setup | None = None) -> Any:
        """Register a function marked with :func:`command`, a :class:`Command`, or a plain function with ``name=``.

        ``name``/``help``/``setup`` override what the decorator said. Usable as a decorator too:
        ``@commands.register(name="hello", help="say hello")``. Returns ``obj``.
        """
        if obj is None:
            return lambda fn: self.register(fn, name=name, help=help, setup=setup)
        cmd = obj if isinstance(obj, Command) else getattr(obj, "__rd_command__", None)
        if cmd is None:
            if name is None or not callable(obj):
                raise RegistryError(
                    f"Plugin {self._plugin!r} registers {obj!r} as a command: mark the function with "
                    "@robust_distill.cli.command(name, help, setup), or pass name= (and help=, setup=).")
            doc = (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            cmd = Command(name, help if help is not None else doc, setup or _no_arguments, obj)
        else:
            cmd = replace(cmd, **{k: v for k, v in (("name", name), ("help", help), ("setup", setup)) if v is not None})
        super().register(cmd, name=cmd.name, help=cmd.help)
        return obj


def build_commands(pm: PluginManager | None = None) -> CommandRegistry:
    """Every sub-command the loaded plugins register (``rd_register_commands``)."""
    from ..plugin import get_plugin_manager

    registry = CommandRegistry()
    (pm or get_plugin_manager()).fill_registry("rd_register_commands", registry)
    return registry


def build_parser(pm: PluginManager | None = None) -> argparse.ArgumentParser:
    """The ``robust-distill`` parser, one sub-parser per registered command.

    A parsed namespace carries its :class:`Command` as ``ns.command_`` and the registry as ``ns.commands_``.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="robust-distill", description="Adversarial robustness distillation: every method, one engine.")
    parser.add_argument("--version", action="version", version=f"robust-distill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = build_commands(pm)
    for entry in commands.entries():
        cmd = entry.obj
        sub_parser = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.setup(sub_parser)
        sub_parser.set_defaults(command_=cmd, commands_=commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = build_parser().parse_args(argv)
        return ns.command_.run(ns)
    except ConfigError as exc:
        print(f"robust-distill: {exc}", file=sys.stderr)
        return 2
    except (PluginError, RegistryError, CheckpointError, FileNotFoundError) as exc:
        print(f"robust-distill: error: {exc}", file=sys.stderr)
        return 3
    except (DivergenceError, CompileUnavailableError) as exc:  # the run cannot go on; nothing bad was saved
        print(f"robust-distill: error: {exc}", file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("robust-distill: interrupted; `train` resumes from the last finished epoch.", file=sys.stderr)
        return 130
