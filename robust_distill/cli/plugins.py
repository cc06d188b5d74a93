"""``robust-distill plugins``: every plugin, command and registered part, with who provides it."""

from __future__ import annotations

import argparse
import re

from robust_distill import hookimpl
from robust_distill.cli import build_commands, command
from robust_distill.core.manager import get_plugin_manager, get_registries

__all__ = ["one_line"]

_ROLE = re.compile(r":[\w:]+:`(~?)([^`]*)`")  # :class:`~robust_distill.core.step.Step` -> Step


def one_line(text: str, width: int = 70) -> str:
    """``text`` as a plain one-line summary of at most ``width`` characters: reStructuredText roles and literals
    unwrapped (``:class:`~a.B``` -> ``B``, double backquotes dropped), cut at a word with ``...``."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    text = " ".join(re.sub(r"`+([^`]*)`+", r"\1", text).split())
    if len(text) <= width:
        return text
    cut = text[:width - 2]  # a word that ends at width - 3 is kept whole
    cut = cut.rsplit(" ", 1)[0] if " " in cut else cut[:width - 3]
    return cut.rstrip(" ,;:(-") + "..."


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true",
                   help="also list the names each teacher/student source knows (imports robustbench)")


@command("plugins", "list every plugin, command and registered part, with the plugin and distribution providing it",
         _plugins_args)
def cmd_plugins(ns: argparse.Namespace) -> int:
    pm, regs = get_plugin_manager(), get_registries()
    commands = getattr(ns, "commands_", None)  # the parser's, when run through main()
    print("Plugins (in load order):")
    w_name = max([16, *(len(n) for n in pm.info)])
    w_module = max([44, *(len(i.module) for i in pm.info.values())])
    for name, info in pm.info.items():
        print(f"  {name:<{w_name}} {info.module:<{w_module}} {info.distribution} ({info.kind})")
    for where, why in pm.skipped.items():
        print(f"  {where:<{w_name + w_module + 1}} not loaded: {why}")
    print("\ncommands:")
    for e in (commands if commands is not None else build_commands(pm)).entries():
        print(f"  {e.name:<22} {one_line(e.help):<72} [{e.plugin}; {e.distribution}]")
    for attr, registry in vars(regs).items():
        print(f"\n{attr.replace('_', ' ')}:")
        for e in registry.entries():
            print(f"  {e.name:<22} {one_line(e.help):<72} [{e.plugin}; {e.distribution}]")
            if ns.names and hasattr(e.obj, "names"):
                try:
                    names = e.obj.names()
                except Exception as exc:  # an optional dependency missing: say so, keep listing
                    names = [f"(cannot list: {exc})"]
                for n in names or []:
                    print(f"      {e.name}:{n}")
    return 0


@hookimpl
def rd_register_commands(commands):
    commands.register(cmd_plugins)
