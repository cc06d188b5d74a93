"""The plugin manager: discovery, load order, selection, calls through pluggy, errors that name the plugin.

Load order (pytest's essential/default/external split):

1. the core plugins (``CORE_PLUGINS``): robust-distill's own command line, always loaded;
2. the built-in plugins: the ``robust_distill`` entry points of the ``robust-distill`` distribution, in
   ``BUILTIN_PLUGINS`` order (imported from that tuple when running from a source tree without installed
   metadata);
3. the ``robust_distill`` entry points of every other installed distribution (third-party plugins), by
   distribution name, unless ``RD_DISABLE_PLUGIN_AUTOLOAD=1``;
4. :meth:`PluginManager.check_pending`: an implementation of a hook that does not exist is an error (with a
   "did you mean").

The historic hook ``rd_addhooks`` is fired when the manager is created (as pytest fires ``pytest_addhooks``),
so every plugin receives it the moment it registers and can add hook specifications for the plugins after it.
A function named ``rd_*`` without ``@hookimpl`` is ignored by pluggy: the manager warns (:class:`PluginWarning`).

Selection, by environment variable; every name is an entry-point name, a distribution name, or ``DIST:NAME``
(one of two plugins that share a name):

* ``RD_PLUGINS=a,b``: load only these (``robust-distill`` names every built-in); a third-party plugin named
  here loads even with ``RD_DISABLE_PLUGIN_AUTOLOAD=1``, as pytest's ``-p``;
* ``RD_DISABLED_PLUGINS=a,b``: load everything but these (built-ins included; core plugins cannot be
  disabled);
* a name that matches no installed plugin is an error listing the valid names;
* ``RD_TRACE_PLUGINS=1`` prints every hook call, its arguments and its results to stderr.

Calls: every collecting hook (the ``rd_register_*`` hooks and the run lifecycle) goes through pluggy once per
implementing plugin, in load order (``tryfirst``/``trylast`` implementations first/last), through
``pm.subset_hook_caller``. So a registration or a returned value is attributed to the plugin that made it, a
name clash blames the plugin loaded second, a ``wrapper=True`` (or ``hookwrapper=True``) implementation wraps
every plugin's call, and ``RD_TRACE_PLUGINS`` shows each call. It happens at start-up and a few times per
epoch; the training loop never calls pluggy.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import pluggy

from robust_distill._version import __version__
from robust_distill.core import hookspecs
from robust_distill.core.registry import Registry
from robust_distill.errors import PluginError, RegistryError

__all__ = [
    "ENTRY_POINT_GROUP", "PluginManager", "PluginError", "PluginLoadError", "PluginHookError", "PluginResultError",
    "PluginSelectionError", "PluginWarning", "PluginInfo", "Registries", "get_plugin_manager", "get_registries",
    "reset",
]

ENTRY_POINT_GROUP = "robust_distill"
OWN_DISTRIBUTION = "robust-distill"
ENV_DISABLE_AUTOLOAD = "RD_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "RD_PLUGINS"
ENV_BLOCK = "RD_DISABLED_PLUGINS"
ENV_TRACE = "RD_TRACE_PLUGINS"

#: robust-distill's own command line, registered before anything else and never disabled (pytest's
#: "essential plugins"): each module implements ``rd_register_commands`` for its sub-commands.
CORE_PLUGINS: tuple[tuple[str, str], ...] = (
    ("cli.plugins", "robust_distill.cli.plugins"),
    ("cli.train", "robust_distill.cli.train"),
    ("cli.eval", "robust_distill.cli.eval"),
    ("cli.demo", "robust_distill.cli.demo"),
    ("cli.export", "robust_distill.cli.export"),
    ("cli.analysis", "robust_distill.cli.analysis"),
)

#: Built-in plugins (entry-point name, module), as declared in setup.cfg; used when the package
#: metadata is not installed (running from a source checkout).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("datasets", "robust_distill_plugins.datasets"),
    ("image_datasets", "robust_distill_plugins.image_datasets"),
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
    ("akd", "robust_distill_plugins.akd"),
    ("igdm", "robust_distill_plugins.igdm"),
    ("dgad", "robust_distill_plugins.dgad"),
    ("mmard", "robust_distill_plugins.mmard"),
    ("self_distill", "robust_distill_plugins.self_distill"),
    ("mtard", "robust_distill_plugins.mtard"),
    ("ciard", "robust_distill_plugins.ciard"),
    ("ciard_itt", "robust_distill_plugins.ciard_itt"),
    ("peeraid", "robust_distill_plugins.peeraid"),
    ("tensorboard", "robust_distill_plugins.tensorboard_logger"),
    ("wandb", "robust_distill_plugins.wandb_logger"),
    ("hf_hub", "robust_distill_plugins.hf_hub"),
    ("specialization_models", "robust_distill_plugins.specialization_models"),
    ("oracle", "robust_distill_plugins.oracle"),
    ("subspace_attacks", "robust_distill_plugins.subspace_attacks"),
    ("ccat", "robust_distill_plugins.ccat"),
    ("robust_features", "robust_distill_plugins.robust_features"),
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
    "loggers": ("logger", "rd_register_loggers"),
}


class PluginWarning(UserWarning):
    """Something in a plugin is ignored (a function named like a hook without ``@hookimpl``)."""


class PluginLoadError(PluginError):
    """A plugin module failed to import or to register."""

    def __init__(self, plugin: str, module: str, distribution: str, cause: BaseException,
                 advice: str | None = None) -> None:
        self.plugin, self.module, self.distribution, self.cause = plugin, module, distribution, cause
        advice = advice or (f"Fix or uninstall that distribution, or skip the plugin with {ENV_BLOCK}={plugin} "
                            f"(third-party plugins can all be skipped with {ENV_DISABLE_AUTOLOAD}=1).")
        super().__init__(f"Plugin {plugin!r} (module {module}, distribution {distribution}) failed to load: "
                         f"{type(cause).__name__}: {cause}. {advice}")


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


class PluginResultError(PluginError):
    """A plugin's hook implementation returned something the caller cannot accept."""

    def __init__(self, plugin: str, module: str, distribution: str, hook: str, problem: str) -> None:
        self.plugin, self.module, self.distribution, self.hook = plugin, module, distribution, hook
        super().__init__(f"Plugin {plugin!r} (module {module}, distribution {distribution}) returned from {hook} "
                         f"{problem}")


class PluginSelectionError(PluginError):
    """``RD_PLUGINS`` or ``RD_DISABLED_PLUGINS`` names something that is not there."""


def _distributions() -> Iterable[Any]:
    """Installed distributions (a seam for tests: they substitute fake ones here)."""
    return md.distributions()


def _env_list(name: str) -> set[str]:
    return {s.strip() for s in os.environ.get(name, "").split(",") if s.strip()}


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


def _short(value: Any, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name (the entry-point name), module, distribution and kind.

    ``kind`` is ``core`` (the command line), ``built-in`` (this distribution's plugins), ``third-party`` (another
    distribution's entry point) or ``local`` (registered in code with :meth:`PluginManager.add_plugin`).
    """

    name: str
    module: str
    distribution: str  # "name version", as shown to people
    version: str
    kind: str
    dist_name: str = ""

    @property
    def builtin(self) -> bool:
        return self.kind in ("core", "built-in")

    def selector(self) -> str:
        """The ``DIST:NAME`` that selects exactly this plugin in ``RD_PLUGINS`` / ``RD_DISABLED_PLUGINS``."""
        return f"{_canonical(self.dist_name)}:{self.name}" if self.dist_name else self.name


@dataclass(frozen=True)
class _Candidate:
    """An installed entry point, before it is loaded."""

    name: str
    module: str
    load: Callable[[], object]
    dist: str
    version: str
    builtin: bool

    def matches(self, selector: str) -> bool:
        dist, sep, name = selector.rpartition(":")
        if sep:
            return _canonical(dist) == _canonical(self.dist) and name == self.name
        return selector == self.name or _canonical(selector) == _canonical(self.dist)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus robust-distill's discovery rules, per-plugin calls and error reporting.

    :ivar info: plugin name -> :class:`PluginInfo`, in load order.
    :ivar skipped: installed plugins that were not loaded -> why (``RD_DISABLED_PLUGINS``, ...).
    """

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.skipped: dict[str, str] = {}
        self._registering: tuple[str, str] | None = None
        if os.environ.get(ENV_TRACE, "").strip().lower() not in ("", "0", "false", "no"):
            self.add_hookcall_monitoring(self._trace_before, self._trace_after)
        # pytest's pytest_addhooks: historic, so each plugin gets it when it registers
        self.hook.rd_addhooks.call_historic(kwargs={"pluginmanager": self})

    # -- tracing (RD_TRACE_PLUGINS=1) ------------------------------------------------------------------
    @staticmethod
    def _trace_before(hook_name: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        called = ", ".join(f"{i.plugin_name}{' (wrapper)' if i.wrapper or i.hookwrapper else ''}"
                           for i in reversed(impls))
        args = ", ".join(f"{k}={_short(v, 60)}" for k, v in kwargs.items())
        print(f"[rd-trace] {hook_name}({args}) -> {called or 'no implementation'}", file=sys.stderr)

    @staticmethod
    def _trace_after(outcome: Any, hook_name: str, impls: Any, kwargs: Mapping[str, Any]) -> None:
        exc = getattr(outcome, "exception", None)
        if exc is not None:
            print(f"[rd-trace]   {hook_name} raised {type(exc).__name__}: {exc}", file=sys.stderr)
        elif outcome.get_result():
            print(f"[rd-trace]   {hook_name} returned {_short(outcome.get_result())}", file=sys.stderr)

    # -- registering one plugin -------------------------------------------------------------------------
    def add_plugin(self, plugin: object, name: str, *, module: str | None = None, distribution: str = "<local>",
                   version: str = "", kind: str = "local", dist_name: str = "") -> None:
        """Register ``plugin`` under ``name``; a name taken by another plugin is an error naming both."""
        mod = module or getattr(plugin, "__name__", repr(plugin))
        if name in self.info:
            first = self.info[name]
            raise PluginLoadError(name, mod, distribution, ValueError(
                f"the plugin name {name!r} is already used by module {first.module} from distribution "
                f"{first.distribution}, loaded first"),
                advice=self._clash_advice(first, dist_name, name))
        try:
            hash(plugin)
        except TypeError as exc:
            raise PluginLoadError(name, mod, distribution, TypeError(
                f"a plugin must be hashable ({exc}): register a module, a class, or an instance of a class that "
                "does not define __eq__ without __hash__")) from None
        self._registering = (name, mod)
        try:
            self.register(plugin, name=name)
        except RegistryError as exc:  # a registry problem while registering: the plugin failed to load
            raise PluginLoadError(name, mod, distribution, exc) from exc
        except PluginError:
            raise
        except pluggy.PluginValidationError as exc:  # unknown arguments, wrappers on historic hooks
            raise PluginLoadError(name, mod, distribution, pluggy.PluginValidationError(
                plugin, f"{exc}{self._argument_hint(plugin)}")) from exc
        except Exception as exc:  # rd_addhooks raised while replayed, the same object registered twice
            raise PluginLoadError(name, mod, distribution, exc) from exc
        finally:
            self._registering = None
        self.info[name] = PluginInfo(name, mod, distribution, version, kind, dist_name)

    @staticmethod
    def _clash_advice(first: PluginInfo, dist_name: str, name: str) -> str:
        """How to keep one of two plugins that share an entry-point name (never advice that drops both)."""
        second = f"{_canonical(dist_name)}:{name}" if dist_name else None
        if second is None:
            return "Register it under another name."
        if first.kind == "core":
            return f"Skip it with {ENV_BLOCK}={second} (the core plugin cannot be disabled), or rename its entry point."
        return (f"Keep one of them: {ENV_BLOCK}={second} skips this one, {ENV_BLOCK}={first.selector()} skips the "
                f"one loaded first; or rename one of the entry points.")

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        """pluggy's, plus a :class:`PluginWarning` for a function named ``rd_*`` without ``@hookimpl``."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("rd_"):
            value = inspect.getattr_static(plugin, name, None)
            function = getattr(value, "__func__", value)  # staticmethod / classmethod
            if inspect.isfunction(function) and not hasattr(function, f"{self.project_name}_spec"):
                who = (f"Plugin {self._registering[0]!r} (module {self._registering[1]})" if self._registering
                       else f"Plugin {plugin!r}")
                warnings.warn(PluginWarning(
                    f"{who} defines {name}() without @robust_distill.hookimpl, so robust-distill ignores it: "
                    f"decorate it with @hookimpl.{self._hook_hint(name)}"), stacklevel=2)
        return opts

    def _hook_names(self) -> list[str]:
        return sorted(n for n, caller in vars(self.hook).items()
                      if not n.startswith("_") and caller.has_spec())

    def _hook_hint(self, name: str) -> str:
        """`` rd_x is not a hook either. Did you mean ...?`` for a name no specification has, else ``""``."""
        hooks = self._hook_names()
        if name in hooks:
            return ""
        close = difflib.get_close_matches(name, hooks, n=1, cutoff=0.6)
        guess = f" Did you mean {' or '.join(close)}?" if close else f" The hooks are: {', '.join(hooks)}."
        return f" {name} is not a robust-distill hook either.{guess}"

    def _argument_hint(self, plugin: object) -> str:
        """The arguments of the hooks a plugin implements with names the specification does not have."""
        hints = []
        for attr in dir(plugin):
            opts = pluggy.PluginManager.parse_hookimpl_opts(self, plugin, attr)
            caller = getattr(self.hook, (opts or {}).get("specname") or attr, None)
            if opts is None or caller is None or not caller.has_spec():
                continue
            params = inspect.signature(getattr(plugin, attr)).parameters
            spec_args = list(caller.spec.argnames)
            for arg in params:
                if arg not in spec_args and params[arg].default is inspect.Parameter.empty:
                    close = difflib.get_close_matches(arg, spec_args, n=1, cutoff=0.5)
                    guess = f" (did you mean {close[0]!r}?)" if close else ""
                    hints.append(f"{attr}() has no argument {arg!r}{guess}; it takes {', '.join(spec_args)}")
        return ". " + "; ".join(hints) if hints else ""

    # -- loading ------------------------------------------------------------------------------------------
    def load_plugins(self, *, autoload: bool | None = None, allow: Iterable[str] | None = None,
                     block: Iterable[str] | None = None) -> PluginManager:
        """Load the core, built-in and third-party plugins (see the module docstring), then check them.

        ``autoload``, ``allow`` and ``block`` default to ``RD_DISABLE_PLUGIN_AUTOLOAD``, ``RD_PLUGINS`` and
        ``RD_DISABLED_PLUGINS``.
        """
        if autoload is None:
            autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in ("1", "true", "yes")
        allowed = set(allow) if allow is not None else _env_list(ENV_ALLOW)
        blocked = set(block) if block is not None else _env_list(ENV_BLOCK)
        candidates = self._discover()
        self._check_selectors(allowed, blocked, candidates)

        for name, module in CORE_PLUGINS:
            self._load(_Candidate(name, module, partial(importlib.import_module, module), OWN_DISTRIBUTION,
                                  __version__, True), kind="core")
        for c in candidates:
            if any(c.matches(s) for s in blocked):
                self.skipped[f"{c.dist}:{c.name}"] = f"disabled by {ENV_BLOCK}"
            elif allowed and not any(c.matches(s) for s in allowed):
                self.skipped[f"{c.dist}:{c.name}"] = f"not listed in {ENV_ALLOW}"
            elif not c.builtin and not autoload and not allowed:
                self.skipped[f"{c.dist}:{c.name}"] = f"{ENV_DISABLE_AUTOLOAD}=1"
            else:
                self._load(c, kind="built-in" if c.builtin else "third-party")
        self.check_pending()
        return self

    def _discover(self) -> list[_Candidate]:
        """Every installed entry point of the group: the built-ins first, then the others by distribution name."""
        builtins: list[_Candidate] = []
        third_party: list[_Candidate] = []
        seen: set[str] = set()
        for dist in _distributions():
            dist_name = dist.metadata.get("Name") or "?"
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            if not eps or _canonical(dist_name) in seen:
                continue  # no plugin, or the same distribution found again further down sys.path
            seen.add(_canonical(dist_name))
            own = _canonical(dist_name) == OWN_DISTRIBUTION
            for ep in eps:
                (builtins if own else third_party).append(
                    _Candidate(ep.name, ep.value, ep.load, dist_name, dist.version, own))
        if not builtins:  # source checkout without installed metadata
            builtins = [_Candidate(name, module, partial(importlib.import_module, module), OWN_DISTRIBUTION,
                                   __version__, True) for name, module in BUILTIN_PLUGINS]
        known = [name for name, _ in BUILTIN_PLUGINS]
        builtins.sort(key=lambda c: (known.index(c.name) if c.name in known else len(known), c.name))
        third_party.sort(key=lambda c: _canonical(c.dist))  # stable: each distribution keeps its own order
        return builtins + third_party

    def _check_selectors(self, allowed: set[str], blocked: set[str], candidates: list[_Candidate]) -> None:
        """Every name in ``RD_PLUGINS`` / ``RD_DISABLED_PLUGINS`` must select an installed plugin."""
        core = {name for name, _ in CORE_PLUGINS}
        names = sorted({c.name for c in candidates})
        dists = sorted({c.dist for c in candidates}, key=_canonical)
        problems = []
        for env, selectors in ((ENV_ALLOW, allowed), (ENV_BLOCK, blocked)):
            for s in sorted(selectors):
                if any(c.matches(s) for c in candidates):
                    continue
                if s in core:
                    if env == ENV_BLOCK:
                        problems.append(f"{env} names {s!r}, a core plugin (robust-distill's command line), which "
                                        "cannot be disabled.")
                    continue
                close = difflib.get_close_matches(s, names + dists, n=3, cutoff=0.6)
                guess = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                problems.append(f"{env} names {s!r}, which is no installed plugin or distribution.{guess}")
        if problems:
            raise PluginSelectionError(
                " ".join(problems) + f" Plugins: {', '.join(names)}. Distributions with plugins: {', '.join(dists)}. "
                f"A name is an entry-point name, a distribution name (all its plugins; {OWN_DISTRIBUTION} is every "
                "built-in) or DIST:NAME (one of two plugins with the same name).")

    def _load(self, c: _Candidate, *, kind: str) -> None:
        label = f"{c.dist} {c.version}".strip()
        try:
            plugin = c.load()
        except Exception as exc:
            raise PluginLoadError(c.name, c.module, label, exc) from exc
        self.add_plugin(plugin, c.name, module=c.module, distribution=label, version=c.version, kind=kind,
                        dist_name=c.dist)

    def check_pending(self) -> None:
        """pluggy's check, with the plugin named and a "did you mean" for a misspelled hook name."""
        order = {name: i for i, name in enumerate(self.info)}
        unknown: dict[str, list[str]] = {}
        for name, caller in vars(self.hook).items():
            if name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    unknown.setdefault(impl.plugin_name, []).append(name)
        if unknown:
            plugin_name = min(unknown, key=lambda p: order.get(p, len(order)))
            hooks = self._hook_names()
            lines = []
            for name in sorted(unknown[plugin_name]):
                close = difflib.get_close_matches(name, hooks, n=1, cutoff=0.6)
                lines.append(f"unknown hook {name!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
            info = self.info.get(plugin_name)
            raise PluginLoadError(
                plugin_name, info.module if info else "?", info.distribution if info else "<local>",
                pluggy.PluginValidationError(self.get_plugin(plugin_name), "; ".join(lines)),
                advice=f"robust-distill's hooks are: {', '.join(hooks)}. A hook that another plugin adds through "
                       "rd_addhooks exists only when that plugin is loaded; mark an implementation that may have no "
                       "hook with @hookimpl(optionalhook=True).")
        super().check_pending()

    # -- calling hooks ------------------------------------------------------------------------------------
    def _describe(self, plugin_name: str) -> tuple[str, str]:
        info = self.info.get(plugin_name)
        if info is None:
            plugin = self.get_plugin(plugin_name)
            return getattr(plugin, "__name__", repr(plugin)), "<local>"
        return info.module, info.distribution

    def _call_each(self, hook_name: str, kwargs: Mapping[str, Any],
                   before: Callable[[str], None] | None = None) -> list[tuple[str, list[Any]]]:
        """Call ``hook_name`` through pluggy once per implementing plugin, in load order.

        Wrappers (``wrapper=True`` / ``hookwrapper=True``) of every plugin take part in every call. Returns
        ``(plugin name, that call's results)``; an exception becomes a :class:`PluginHookError` naming the
        plugin whose code raised it.
        """
        hook = getattr(self.hook, hook_name)
        impls = hook.get_hookimpls()
        order = {name: i for i, name in enumerate(self.info)}
        plain = sorted((i for i in impls if not (i.wrapper or i.hookwrapper)),
                       key=lambda i: (not i.tryfirst, i.trylast, order.get(i.plugin_name, len(order))))
        callers: dict[int, tuple[str, object]] = {}
        for impl in plain:
            callers.setdefault(id(impl.plugin), (impl.plugin_name, impl.plugin))
        results = []
        for plugin_name, plugin in callers.values():
            others = [p for _, p in callers.values() if p is not plugin]
            if before is not None:
                before(plugin_name)
            try:
                out = self.subset_hook_caller(hook_name, others)(**kwargs)
            except (PluginError, RegistryError):
                raise
            except Exception as exc:
                culprit = self._culprit(exc, impls) or plugin_name
                raise PluginHookError(culprit, *self._describe(culprit), hook_name, exc) from exc
            results.append((plugin_name, out))
        return results

    @staticmethod
    def _culprit(exc: BaseException, impls: list[Any]) -> str | None:
        """The plugin whose implementation is the innermost one in the traceback (a wrapper can raise too)."""
        codes = {getattr(getattr(i.function, "__func__", i.function), "__code__", None): i.plugin_name
                 for i in impls}
        culprit = None
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            culprit = codes.get(frame.f_code, culprit)
        return culprit

    def fill_registry(self, hook_name: str, registry: Registry[Any]) -> Registry[Any]:
        """Call the registration hook ``hook_name`` with ``registry``, one plugin at a time in load order.

        Each registration is attributed to the plugin making it, so a name registered twice blames the
        plugin loaded second (:class:`~robust_distill.core.registry.DuplicateNameError`).
        """
        (arg,) = getattr(self.hook, hook_name).spec.argnames

        def attribute(plugin_name: str) -> None:
            registry._set_source(plugin_name, self._describe(plugin_name)[1])

        try:
            self._call_each(hook_name, {arg: registry}, before=attribute)
        finally:
            registry._set_source("<direct>", "<unknown>")
        return registry

    def build_registries(self) -> Registries:
        """Call every ``rd_register_*`` hook and return the filled registries."""
        return Registries(**{attr: self.fill_registry(hook_name, Registry(kind))
                             for attr, (kind, hook_name) in REGISTRY_HOOKS.items()})

    def call_lifecycle(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a run-lifecycle hook; returns ``(plugin name, returned value)`` for every value not None."""
        return [(plugin, value) for plugin, values in self._call_each(hook_name, kwargs) for value in values]

    def result_error(self, plugin_name: str, hook_name: str, problem: str) -> PluginResultError:
        """The error for a value ``plugin_name`` returned from ``hook_name`` that cannot be used."""
        return PluginResultError(plugin_name, *self._describe(plugin_name), hook_name, problem)


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
    loggers: Registry[Any]

    def call(self, factory: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``factory(*args, **kwargs)``, plus ``registries=self`` when the factory names a ``registries`` parameter.

        How the engine calls what a plugin implements (``TeacherSource.load`` and ``check``, a dataset's ``load``
        and ``info``): a factory that builds other parts (a checkpoint whose student is a registered
        architecture, a dataset labelled by a teacher) declares ``registries`` and gets the run's, never the
        process-global ones; the others are called as before (pluggy passes a hook implementation the arguments
        it names, the same way).
        """
        param = _parameters(factory).get("registries")
        named = param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
        bound = "registries" in kwargs or "registries" in getattr(factory, "keywords", {})  # (given, or a partial's)
        if named and not bound:
            kwargs["registries"] = self
        return factory(*args, **kwargs)


def _parameters(factory: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return {}


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
