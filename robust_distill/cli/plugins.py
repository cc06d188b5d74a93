"""``robust-distill plugins``: every registered part, with the plugin and distribution providing it."""

from __future__ import annotations

import argparse

from . import command


def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--names", action="store_true",
                   help="also list the names each teacher/student source knows (imports robustbench)")


@command("plugins", "list every registered part by kind, with the plugin and distribution providing it", _plugins_args)
def cmd_plugins(ns: argparse.Namespace) -> int:
    from ..plugin import get_plugin_manager, get_registries

    pm, regs = get_plugin_manager(), get_registries()
    print("Plugins:")
    for name, info in sorted(pm.info.items(), key=lambda kv: (not kv[1].builtin, kv[0])):
        kind = "built-in" if info.builtin else "third-party"
        print(f"  {name:<16} {info.module:<44} {info.distribution} ({kind})")
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
