"""The plugin manager: discovery, load order, blocking, error reporting and the registries.

Load order (pytest/tox style):

1. every entry point of the group ``robust_distill`` that belongs to the ``robust-distill`` distribution
   (the built-in plugins; imported directly from ``BUILTIN_PLUGINS`` when running from a source tree
   without installed metadata);
2. every entry point of that group from other installed distributions (third-party plugins), unless
   ``RD_DISABLE_PLUGIN_AUTOLOAD=1``; ``RD_PLUGINS=a,b`` loads only the listed entry-point or distribution
   names;
3. ``check_pending()``: an implementation of a hook that does not exist is an error.

``RD_DISABLED_PLUGINS=a,b`` blocks plugins by entry-point name (built-ins included) and
``RD_TRACE_PLUGINS=1`` prints every hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .registry import Registry, RegistryError

__all__ = [
    "ENTRY_POINT_GROUP", "PluginManager", "PluginError", "PluginLoadError", "PluginHookError",
    "Registries", "get_plugin_manager", "get_registries", "reset",
]

ENTRY_POINT_GROUP = "robust_distill"
OWN_DISTRIBUTION = "robust-distill"
ENV_DISABLE_AUTOLOAD = "RD_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "RD_PLUGINS"
ENV_BLOCK = "RD_DISABLED_PLUGINS"
ENV_TRACE = "RD_TRACE_PLUGINS"

#: Built-in plugins (entry-point name, module), as declared in setup.cfg; used when the package
#: metadata is not installed (running from a source checkout).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("datasets", "robust_distill_plugins.datasets"),
    ("robustbench", "robust_distill_plugins.robustbench_teachers"),
    ("checkpoint", "robust_distill_plugins.checkpoint_teachers"),
    ("timm", "robust_distill_plugins.timm_students"),
    ("torchattacks", "robust_distill_plugins.torchattacks_attacks"),
    ("inner_attacks", "robust_distill_plugins.inner_attacks"),
    ("schedules", "robust_distill_plugins.schedules"),
    ("frozen", "robust_distill_plugins.frozen_teacher"),
    ("natural", "robust_distill_plugins.natural"),
    ("pgd_at", "robust_distill_plugins.pgd_at"),
    ("trades", "robust_distill_plugins.trades"),
    ("ard", "robust_distill_plugins.ard"),
    ("rslad", "robust_distill_plugins.rslad"),
    ("adaad", "robust_distill_plugins.adaad"),
    ("iad", "robust_distill_plugins.iad"),
    ("igdm", "robust_distill_plugins.igdm"),
    ("dgad", "robust_distill_plugins.dgad"),
    ("mmard", "robust_distill_plugins.mmard"),
    ("self_distill", "robust_distill_plugins.self_distill"),
    ("mtard", "robust_distill_plugins.mtard"),
    ("ciard", "robust_distill_plugins.ciard"),
    ("peeraid", "robust_distill_plugins.peeraid"),
    ("specialization_models", "robust_distill_plugins.specialization_models"),
    ("oracle", "robust_distill_plugins.oracle"),
    ("subspace_attacks", "robust_distill_plugins.subspace_attacks"),
)

#: registry attribute -> (kind, the hook that fills it)
REGISTRY_HOOKS: dict[str, tuple[str, str]] = {
    "datasets": ("dataset", "rd_register_datasets"),
    "teacher_sources": ("teacher source", "rd_register_teacher_sources"),
    "student_sources": ("student source", "rd_register_student_sources"),
    "inner_attacks": ("inner attack", "rd_register_inner_attacks"),
    "outer_losses": ("outer loss", "rd_register_outer_losses"),
    "teacher_updaters": ("teacher updater", "rd_register_teacher_updaters"),
    "eval_attacks": ("eval attack", "rd_register_eval_attacks"),
    "lr_schedules": ("lr schedule", "rd_register_lr_schedules"),
    "methods": ("method", "rd_register_methods"),
}


class PluginError(Exception):
    """A plugin could not be loaded or failed in a hook."""


class PluginLoadError(PluginError):
    """A plugin module failed to import or to register."""

    def __init__(self, plugin: str, module: str, distribution: str, cause: BaseException) -> None:
        self.plugin, self.module, self.distribution, self.cause = plugin, module, distribution, cause
        super().__init__(
            f"Plugin {plugin!r} (module {module}, distribution {distribution}) failed to load: "
            f"{type(cause).__name__}: {cause}. Fix or uninstall that distribution, or skip the plugin with "
            f"{ENV_BLOCK}={plugin} (third-party plugins can all be skipped with {ENV_DISABLE_AUTOLOAD}=1)."
        )


class PluginHookError(PluginError):
    """A plugin's hook implementation raised."""

    def __init__(self, plugin: str, module: str, distribution: str, hook: str, cause: BaseException) -> None:
        self.plugin, self.module, self.distribution, self.hook, self.cause = (
            plugin, module, distribution, hook, cause)
        frames = traceback.extract_tb(cause.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        super().__init__(
            f"Plugin {plugin!r} (module {module}, distribution {distribution}) raised in hook {hook}"
            f"{where}: {type(cause).__name__}: {cause}. Fix or uninstall the plugin, or skip it with "
            f"{ENV_BLOCK}={plugin}."
        )


def _distributions() -> Iterable[Any]:
    """Installed distributions (a seam for tests: they substitute fake ones here)."""
    return md.distributions()


def _env_list(name: str) -> set[str]:
    return {s.strip() for s in os.environ.get(name, "").split(",") if s.strip()}


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    builtin: bool


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus robust-distill's discovery rules and per-plugin error reporting."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        if os.environ.get(ENV_TRACE):
            self.add_hookcall_monitoring(self._trace_before, self._trace_after)

    @staticmethod
    def _trace_before(hook_name: str, impls: Any, kwargs: Any) -> None:
        print(f"[rd-trace] {hook_name}({', '.join(kwargs)}) -> {[i.plugin_name for i in impls]}",
              file=sys.stderr)

    @staticmethod
    def _trace_after(outcome: Any, hook_name: str, impls: Any, kwargs: Any) -> None:
        print(f"[rd-trace] {hook_name} done", file=sys.stderr)

    # -- loading ----------------------------------------------------------------------------------
    def add_plugin(self, plugin: object, name: str, *, module: str | None = None,
                   distribution: str = "<local>", version: str = "", builtin: bool = False) -> None:
        """Register ``plugin`` under ``name``; a name taken by another plugin is an error naming both."""
        if name in self.info:
            first = self.info[name]
            raise PluginLoadError(name, module or repr(plugin), distribution, ValueError(
                f"the plugin name {name!r} is already used by module {first.module} from distribution "
                f"{first.distribution}"))
        mod = module or getattr(plugin, "__name__", repr(plugin))
        try:
            self.register(plugin, name=name)
        except Exception as exc:  # pluggy validation: unknown arguments, wrong hook options
            raise PluginLoadError(name, mod, distribution, exc) from exc
        self.info[name] = PluginInfo(name, mod, distribution, version, builtin)

    def load_plugins(self, *, autoload: bool | None = None, allow: Iterable[str] | None = None,
                     block: Iterable[str] | None = None) -> PluginManager:
        """Load built-ins and installed third-party plugins (see the module docstring), then check."""
        if autoload is None:
            autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in ("1", "true", "yes")
        allowed = set(allow) if allow is not None else _env_list(ENV_ALLOW)
        blocked = set(block) if block is not None else _env_list(ENV_BLOCK)
        for name in blocked:
            self.set_blocked(name)

        builtins, third_party = [], []
        seen: set[str] = set()
        for dist in _distributions():
            dist_name = dist.metadata.get("Name") or "?"
            if _canonical(dist_name) in seen:
                continue  # the same distribution found twice on sys.path
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not eps:
                continue
            seen.add(_canonical(dist_name))
            own = _canonical(dist_name) == OWN_DISTRIBUTION
            for ep in eps:
                (builtins if own else third_party).append((ep, dist_name, dist.version))

        if not builtins:  # source checkout without installed metadata
            from . import __version__
            for name, module in BUILTIN_PLUGINS:
                if name not in blocked:
                    self._load_module(name, module, lambda m=module: importlib.import_module(m),
                                      OWN_DISTRIBUTION, __version__, True)
        for ep, dist_name, version in builtins:
            if ep.name not in blocked:
                self._load_module(ep.name, ep.value, ep.load, dist_name, version, True)
        if autoload:
            for ep, dist_name, version in third_party:
                if ep.name in blocked or (allowed and not ({ep.name, dist_name} & allowed)):
                    continue
                self._load_module(ep.name, ep.value, ep.load, dist_name, version, False)
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.get_name(exc.plugin) or "?"
            info = self.info.get(name)
            raise PluginLoadError(name, info.module if info else "?", info.distribution if info else "?",
                                  exc) from exc
        return self

    def _load_module(self, name: str, module: str, load: Any, dist: str, version: str, builtin: bool) -> None:
        try:
            plugin = load()
        except Exception as exc:
            raise PluginLoadError(name, module, f"{dist} {version}", exc) from exc
        self.add_plugin(plugin, name, module=module, distribution=f"{dist} {version}".strip(),
                        version=version, builtin=builtin)

    # -- registries -------------------------------------------------------------------------------
    def build_registries(self) -> Registries:
        """Call every ``rd_register_*`` implementation, one at a time, and return the filled registries."""
        regs = {attr: Registry(kind) for attr, (kind, _) in REGISTRY_HOOKS.items()}
        for attr, (_, hook_name) in REGISTRY_HOOKS.items():
            registry = regs[attr]
            for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):  # registration order
                info = self.info.get(impl.plugin_name)
                dist = info.distribution if info else "<local>"
                module = info.module if info else getattr(impl.plugin, "__name__", repr(impl.plugin))
                registry._set_source(impl.plugin_name, dist)
                try:
                    impl.function(**{arg: registry for arg in impl.argnames})
                except RegistryError:
                    raise
                except Exception as exc:
                    raise PluginHookError(impl.plugin_name, module, dist, hook_name, exc) from exc
        return Registries(**regs)

    def call_lifecycle(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a run-lifecycle hook, naming the plugin if one raises."""
        results = []
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            try:
                out = impl.function(**{a: kwargs[a] for a in impl.argnames})
            except Exception as exc:
                info = self.info.get(impl.plugin_name)
                raise PluginHookError(impl.plugin_name, info.module if info else "?",
                                      info.distribution if info else "<local>", hook_name, exc) from exc
            if out is not None:
                results.append(out)
        return results


@dataclass
class Registries:
    """Every registry, filled once by the ``rd_register_*`` hooks."""

    datasets: Registry[Any]
    teacher_sources: Registry[Any]
    student_sources: Registry[Any]
    inner_attacks: Registry[Any]
    outer_losses: Registry[Any]
    teacher_updaters: Registry[Any]
    eval_attacks: Registry[Any]
    lr_schedules: Registry[Any]
    methods: Registry[Any]


_PM: PluginManager | None = None
_REGS: Registries | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _PM
    if _PM is None:
        _PM = PluginManager().load_plugins()
    return _PM


def get_registries() -> Registries:
    """The process-wide registries, built on first use."""
    global _REGS
    if _REGS is None:
        _REGS = get_plugin_manager().build_registries()
    return _REGS


def reset() -> None:
    """Forget the process-wide manager and registries (tests; after installing a plugin)."""
    global _PM, _REGS
    _PM, _REGS = None, None

