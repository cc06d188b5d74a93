"""``robust-distill plugins``: every plugin, command and registered part, with who provides it."""

from __future__ import annotations

import argparse

from .. import hookimpl
from . import command


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true",
                   help="also list the names each teacher/student source knows (imports robustbench)")


@command("plugins", "list every plugin, command and registered part, with the plugin and distribution providing it",
         _plugins_args)
def cmd_plugins(ns: argparse.Namespace) -> int:
    from ..plugin import get_plugin_manager, get_registries
    from . import build_commands

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
        print(f"  {e.name:<22} {e.help[:70]:<72} [{e.plugin}; {e.distribution}]")
    for attr, registry in vars(regs).items():
        print(f"\n{attr.replace('_', ' ')}:")
        for e in registry.entries():
            print(f"  {e.name:<22} {e.help[:70]:<72} [{e.plugin}; {e.distribution}]")
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
