"""The ``robust-distill`` command line.

Sub-commands come from the ``rd_register_commands`` hook (datasette's ``register_commands``): the built-in ones
from the core plugins, one module per group (``plugins`` :mod:`.plugins`, ``train`` :mod:`.train`, ``eval``
:mod:`.eval`, ``demo`` :mod:`.demo`, ``export`` :mod:`.export`, and the grid and analysis tools ``bench``,
``report``, ``unlearnable``, ``teacher-score``, ``specialization`` :mod:`.analysis`), the others from any
plugin. A module declares a command with :func:`command` and registers it in its hook::

    @command("export", "export a checkpoint to ONNX", _export_args)
    def cmd_export(ns: argparse.Namespace) -> int:
        ...

    @hookimpl
    def rd_register_commands(commands):
        commands.register(cmd_export)

:func:`main` maps every error meant for people to a one-paragraph message, never a traceback, and an exit
code:

- 0: done; 1: a grid finished with failed runs;
- 2: a bad command line or configuration (argparse's code for usage errors), checked before any work;
- 3: a plugin, name, file, checkpoint, folder-lock or disk problem, a missing optional library;
- 4: a run that cannot go on (it diverged, the platform cannot compile, an attack broke its contract); nothing
  non-finite was saved.

The code is the error's kind's (:mod:`robust_distill.errors`: ``exc.exit_code``), never a list of classes. The
command line is the top layer: it may import every other part of the package.
- 130 / 143: interrupted by Ctrl-C / SIGTERM; 141: the reader of stdout went away (``... | head``), as
  for any command killed by SIGPIPE, without a message.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from robust_distill._version import __version__
from robust_distill.core.manager import get_plugin_manager
from robust_distill.core.preflight import check_device, check_output_file
from robust_distill.core.registry import Registry, UnknownNameError
from robust_distill.core.threat import parse_fraction
from robust_distill.engine.processes import Terminated
from robust_distill.errors import RDError, RegistryError

if TYPE_CHECKING:
    from robust_distill.core.manager import PluginManager

__all__ = ["main", "build_parser", "command", "Command", "CommandRegistry", "build_commands", "integer", "radius",
           "common_problems"]

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
    :param interrupted: what a user should know after Ctrl-C or SIGTERM (e.g. how to resume), or "".
    """

    name: str
    help: str
    setup: Setup
    run: Run
    interrupted: str = ""


def command(name: str, help: str, setup: Setup = _no_arguments, *, interrupted: str = "") -> Callable[[Run], Run]:
    """Declare ``fn`` as the sub-command ``name``: ``@command("train", "help", add_arguments)``.

    ``interrupted`` completes the message printed when the command is stopped by Ctrl-C or SIGTERM.

    Only marks the function (it stays callable as before); a ``rd_register_commands`` implementation makes it a
    command with ``commands.register(fn)``.
    """
    def mark(fn: Run) -> Run:
        fn.__rd_command__ = Command(name, help, setup, fn, interrupted)  # type: ignore[attr-defined]
        return fn
    return mark


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
    try:
        value = parse_fraction(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.031 or a fraction like 8/255, got {text!r}"
                                         ) from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (inputs are images in [0, 1]; write 8/255, not 8), "
                                         f"got {text!r}")
    return value



def common_problems(ns: argparse.Namespace, regs: Any = None,
                    out: Callable[[str], str | None] = check_output_file) -> list[str]:
    """``--dataset`` (when ``regs`` is given), ``--device`` and ``--out`` (checked by ``out``): what is wrong."""
    problems = []
    if regs is not None and getattr(ns, "dataset", None) is not None and ns.dataset not in regs.datasets:
        problems.append(f"--dataset: {UnknownNameError('dataset', ns.dataset, regs.datasets.names())}")
    if problem := check_device(ns.device):
        problems.append(f"--device: {problem}")
    if getattr(ns, "out", None) is not None and (problem := out(ns.out)):
        problems.append(f"--out: {problem}")
    return problems


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
    registry = CommandRegistry()
    (pm or get_plugin_manager()).fill_registry("rd_register_commands", registry)
    return registry


def build_parser(pm: PluginManager | None = None) -> argparse.ArgumentParser:
    """The ``robust-distill`` parser, one sub-parser per registered command.

    A parsed namespace carries its :class:`Command` as ``ns.command_`` and the registry as ``ns.commands_``.
    """
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


def _after_interrupt(ns: argparse.Namespace | None) -> str:
    """The end of the message for an interrupted command: its own advice, if it has some."""
    cmd = getattr(ns, "command_", None)
    return f"; {cmd.interrupted}" if getattr(cmd, "interrupted", "") else "."


def main(argv: Sequence[str] | None = None) -> int:
    ns = None
    try:
        ns = build_parser().parse_args(argv)
        code = ns.command_.run(ns)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except SystemExit as exc:  # argparse: --help, --version, or a usage error it has printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except RDError as exc:  # one message, the exit code of its kind (robust_distill.errors)
        print(f"robust-distill: {exc.label}{exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file or folder the system refused
        if isinstance(exc, BrokenPipeError):
            return _closed_pipe()
        print(f"robust-distill: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"robust-distill: interrupted{_after_interrupt(ns)}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"robust-distill: stopped ({exc}){_after_interrupt(ns)}", file=sys.stderr)
        return 128 + exc.signum


def _closed_pipe() -> int:
    """``robust-distill ... | head``: stop quietly, as commands killed by SIGPIPE do (exit 141)."""
    try:  # nothing more can reach the reader: later writes (and the interpreter's final flush) go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return 141

