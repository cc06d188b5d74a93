"""The plugin manager: discovery, load order, selection, calls through pluggy, errors that name the plugin.

Third-party distributions are faked by monkeypatching ``plugin._distributions``; everything else is the real
loading path (``PluginManager().load_plugins()``).
"""

from __future__ import annotations

import importlib.metadata as md
import types
from typing import Any

import pluggy
import pytest

from robust_distill import Method, Part, hookimpl
from robust_distill.core import manager as plugin
from robust_distill.core.manager import (
    ENTRY_POINT_GROUP,
    PluginHookError,
    PluginLoadError,
    PluginManager,
    PluginSelectionError,
    PluginWarning,
    Registries,
)
from robust_distill.core.registry import DuplicateNameError, Registry, UnknownNameError


class FakeEntryPoint:
    def __init__(self, name: str, value: str, loader: Any) -> None:
        self.name, self.value, self.group, self._loader = name, value, ENTRY_POINT_GROUP, loader

    def load(self) -> Any:
        return self._loader()


class FakeDist:
    def __init__(self, name: str, version: str, eps: list[FakeEntryPoint]) -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = eps


def module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def method_plugin(method_name: str, calls: list[str] | None = None) -> types.ModuleType:
    @hookimpl
    def rd_register_methods(registry: Registry[Method]) -> None:
        if calls is not None:
            calls.append(method_name)
        registry.register(Method(method_name, Part("pgd_ce"), Part("ce_adv"), teachers=(), summary="test"))
    return module(f"plugin_{method_name}", rd_register_methods=rd_register_methods)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """``installed(dist_name, {ep_name: loader})``: pretend a distribution is installed (plus ours)."""
    dists: list[FakeDist] = [d for d in md.distributions() if (d.metadata.get("Name") or "") == "robust-distill"]

    def add(name: str, plugins: dict[str, Any], version: str = "1.0") -> None:
        dists.append(FakeDist(name, version, [FakeEntryPoint(k, f"{name}.{k}", v) for k, v in plugins.items()]))

    monkeypatch.setattr(plugin, "_distributions", lambda: list(dists))
    return add


def test_hook_builtin_and_third_party_plugins_are_discovered(installed) -> None:
    installed("rd-extra", {"extra": lambda: method_plugin("extra_method")})
    pm = PluginManager().load_plugins(autoload=True)
    regs = pm.build_registries()
    entry = regs.methods.entry("extra_method")
    assert (entry.plugin, entry.distribution) == ("extra", "rd-extra 1.0")
    assert regs.methods.entry("rslad").distribution.startswith("robust-distill")
    assert [pm.info[n].kind for n in ("cli.train", "rslad", "extra")] == ["core", "built-in", "third-party"]
    assert pm.info["extra"].builtin is False and pm.info["rslad"].builtin is True
    names = list(pm.info)  # load order: core, built-ins in BUILTIN_PLUGINS order, third-party
    assert names[:len(plugin.CORE_PLUGINS)] == [n for n, _ in plugin.CORE_PLUGINS]
    assert names.index("datasets") < names.index("pgd_at") < names.index("peeraid") < names.index("extra")


def test_autoload_off_loads_no_third_party_plugin(installed, monkeypatch: pytest.MonkeyPatch) -> None:
    installed("rd-a", {"a": lambda: method_plugin("method_a")})
    monkeypatch.setenv("RD_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = PluginManager().load_plugins()
    regs = pm.build_registries()
    assert "method_a" not in regs.methods and "rslad" in regs.methods  # built-ins always load
    assert pm.skipped == {"rd-a:a": "RD_DISABLE_PLUGIN_AUTOLOAD=1"}


def test_rd_plugins_loads_only_the_listed_plugins_builtins_included(installed,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    installed("rd-a", {"a": lambda: method_plugin("method_a")})
    installed("rd-b", {"b": lambda: method_plugin("method_b")})
    monkeypatch.setenv("RD_DISABLE_PLUGIN_AUTOLOAD", "0")
    monkeypatch.setenv("RD_PLUGINS", "rd-b,pgd_at,inner_attacks")
    pm = PluginManager().load_plugins()
    regs = pm.build_registries()
    assert set(regs.methods) == {"method_b", "pgd_at"} and set(regs.inner_attacks) == {"pgd_ce", "kl_pgd"}
    assert "rslad" not in pm.info and pm.skipped["robust-distill:rslad"] == "not listed in RD_PLUGINS"
    assert "cli.train" in pm.info  # the command line is always there
    # `robust-distill` (the distribution) selects every built-in; a named third-party plugin loads even with
    # autoload off, as pytest's -p does
    monkeypatch.setenv("RD_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("RD_PLUGINS", "robust-distill,a")
    regs = PluginManager().load_plugins().build_registries()
    assert "method_a" in regs.methods and "method_b" not in regs.methods and "rslad" in regs.methods


def test_rd_disabled_plugins_takes_entry_point_and_distribution_names(installed,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    installed("rd-a", {"a": lambda: method_plugin("method_a")})
    installed("rd_B", {"b1": lambda: method_plugin("method_b1"), "b2": lambda: method_plugin("method_b2")})
    installed("rd-c", {"c": lambda: method_plugin("method_c")})
    monkeypatch.setenv("RD_DISABLE_PLUGIN_AUTOLOAD", "0")
    monkeypatch.setenv("RD_DISABLED_PLUGINS", "a, RD-b ,rslad")  # entry point, distribution (any spelling), built-in
    pm = PluginManager().load_plugins()
    regs = pm.build_registries()
    assert "method_c" in regs.methods and "pgd_at" in regs.methods
    assert not {"method_a", "method_b1", "method_b2", "rslad"} & set(regs.methods)
    assert pm.skipped["rd_B:b2"] == "disabled by RD_DISABLED_PLUGINS"
    monkeypatch.setenv("RD_DISABLED_PLUGINS", "rd-b:b1")  # DIST:NAME picks one plugin
    regs = PluginManager().load_plugins().build_registries()
    assert "method_b2" in regs.methods and "method_b1" not in regs.methods


@pytest.mark.parametrize(("env", "value", "message"), [
    ("RD_DISABLED_PLUGINS", "rsald", "RD_DISABLED_PLUGINS names 'rsald', which is no installed plugin or "
                                     "distribution. Did you mean 'rslad'?"),
    ("RD_PLUGINS", "rd-extar", "RD_PLUGINS names 'rd-extar', which is no installed plugin or distribution. "
                               "Did you mean 'rd-extra' or 'extra'?"),
    ("RD_DISABLED_PLUGINS", "cli.train", "'cli.train', a core plugin (robust-distill's command line), which cannot "
                                         "be disabled"),
])
def test_unknown_names_in_the_selection_variables_are_errors(installed, monkeypatch: pytest.MonkeyPatch, env: str,
                                                             value: str, message: str) -> None:
    installed("rd-extra", {"extra": lambda: method_plugin("extra_method")})
    monkeypatch.setenv(env, value)
    with pytest.raises(PluginSelectionError) as e:
        PluginManager().load_plugins()
    assert message in str(e.value)
    assert "Plugins: adaad, akd, ard," in str(e.value)
    assert "Distributions with plugins: rd-extra, robust-distill." in str(e.value)


def test_a_plugin_that_fails_to_import_is_named_not_hidden(installed) -> None:
    def broken() -> Any:
        raise ImportError("Don't hide me!")
    installed("rd-broken", {"broken": broken}, version="0.3")
    with pytest.raises(PluginLoadError) as e:
        PluginManager().load_plugins(autoload=True)
    assert (e.value.plugin, e.value.distribution, e.value.module) == ("broken", "rd-broken 0.3", "rd-broken.broken")
    assert "Don't hide me!" in str(e.value) and "RD_DISABLED_PLUGINS=broken" in str(e.value)
    assert isinstance(e.value.__cause__, ImportError)


def test_a_plugin_that_raises_in_a_hook_is_named_with_the_hook(installed) -> None:
    @hookimpl
    def rd_register_outer_losses(registry: Any) -> None:
        raise ZeroDivisionError("oops")
    installed("rd-raises", {"raises": lambda: module("raises_mod", rd_register_outer_losses=rd_register_outer_losses)})
    pm = PluginManager().load_plugins(autoload=True)
    with pytest.raises(PluginHookError) as e:
        pm.build_registries()
    err = e.value
    assert (err.plugin, err.hook, err.distribution) == ("raises", "rd_register_outer_losses", "rd-raises 1.0")
    assert "ZeroDivisionError: oops" in str(err)


def test_a_wrapper_that_raises_is_blamed_not_the_plugin_it_wraps(installed) -> None:
    @hookimpl(wrapper=True)
    def rd_register_methods(registry: Any) -> Any:
        yield
        raise RuntimeError("wrapper broke")
    installed("rd-wrap", {"wrap": lambda: module("wrap_mod", rd_register_methods=rd_register_methods)})
    pm = PluginManager().load_plugins(autoload=True)
    with pytest.raises(PluginHookError) as e:
        pm.build_registries()
    assert (e.value.plugin, e.value.hook) == ("wrap", "rd_register_methods")


def test_registration_hooks_run_in_load_order(installed) -> None:
    calls: list[str] = []
    installed("rd-b", {"b": lambda: method_plugin("m_b", calls)})
    installed("rd-a", {"a2": lambda: method_plugin("m_a2", calls), "a1": lambda: method_plugin("m_a1", calls)})
    installed("rd-c", {"c": lambda: method_plugin("m_c", calls)})
    pm = PluginManager().load_plugins(autoload=True)
    pm.build_registries()
    # third-party plugins by distribution name, each distribution's entry points in its own order
    assert calls == ["m_a2", "m_a1", "m_b", "m_c"]
    assert list(pm.info)[-4:] == ["a2", "a1", "b", "c"]


def test_a_name_registered_twice_blames_the_plugin_loaded_second(installed) -> None:
    installed("rd-one", {"one": lambda: method_plugin("same")})
    installed("rd-two", {"two": lambda: method_plugin("same")})
    pm = PluginManager().load_plugins(autoload=True)
    with pytest.raises(DuplicateNameError) as e:
        pm.build_registries()
    assert (e.value.first_plugin, e.value.second_plugin) == ("one", "two")
    assert str(e.value).startswith("Plugin 'two' (distribution rd-two 1.0) registers the method 'same', which "
                                   "plugin 'one' (distribution rd-one 1.0) registered first.")
    assert ("RD_DISABLED_PLUGINS=two keeps 'one''s method, RD_DISABLED_PLUGINS=one keeps 'two''s" in str(e.value))


def test_a_third_party_plugin_reusing_a_builtin_name_is_blamed_not_the_builtin(installed) -> None:
    installed("rd-mine", {"mine": lambda: method_plugin("rslad")})
    pm = PluginManager().load_plugins(autoload=True)
    with pytest.raises(DuplicateNameError) as e:
        pm.build_registries()
    assert (e.value.first_plugin, e.value.second_plugin) == ("rslad", "mine")
    assert str(e.value).startswith("Plugin 'mine' (distribution rd-mine 1.0) registers the method 'rslad'")


def test_two_distributions_with_one_plugin_name_get_advice_that_keeps_one(installed,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    installed("rd-x", {"dup": lambda: method_plugin("m1")})
    installed("rd-y", {"dup": lambda: method_plugin("m2")})
    with pytest.raises(PluginLoadError) as e:
        PluginManager().load_plugins(autoload=True)
    message = str(e.value)
    assert (e.value.plugin, e.value.distribution) == ("dup", "rd-y 1.0")
    assert "already used by module rd-x.dup from distribution rd-x 1.0, loaded first" in message
    assert "RD_DISABLED_PLUGINS=rd-y:dup skips this one, RD_DISABLED_PLUGINS=rd-x:dup skips the one" in message
    assert "RD_DISABLED_PLUGINS=dup " not in message and "RD_DISABLED_PLUGINS=dup." not in message
    monkeypatch.setenv("RD_DISABLED_PLUGINS", "rd-y:dup")  # the advice works and keeps the other one
    regs = PluginManager().load_plugins(autoload=True).build_registries()
    assert "m1" in regs.methods and "m2" not in regs.methods


def test_a_misspelled_hook_name_gets_did_you_mean(installed) -> None:
    @hookimpl
    def rd_register_metods(registry: Any) -> None:  # typo
        pass
    installed("rd-typo", {"typo": lambda: module("typo_mod", rd_register_metods=rd_register_metods)})
    with pytest.raises(PluginLoadError) as e:
        PluginManager().load_plugins(autoload=True)
    assert e.value.plugin == "typo"
    assert "unknown hook 'rd_register_metods' (did you mean rd_register_methods?)" in str(e.value)
    assert "hooks are: rd_addhooks, rd_epoch_end," in str(e.value)


def test_a_hook_function_without_hookimpl_is_ignored_with_a_warning(installed) -> None:
    def rd_register_methods(registry: Any) -> None:  # no @hookimpl
        registry.register(Method("undecorated", Part("pgd_ce"), Part("ce_adv"), teachers=()))

    def rd_register_metods(registry: Any) -> None:  # no @hookimpl, and a typo
        pass
    installed("rd-bare", {"bare": lambda: module("bare_mod", rd_register_methods=rd_register_methods,
                                                  rd_register_metods=rd_register_metods)})
    with pytest.warns(PluginWarning) as record:
        regs = PluginManager().load_plugins(autoload=True).build_registries()
    messages = sorted(str(w.message) for w in record)
    assert messages == [
        "Plugin 'bare' (module rd-bare.bare) defines rd_register_methods() without @robust_distill.hookimpl, so "
        "robust-distill ignores it: decorate it with @hookimpl.",
        "Plugin 'bare' (module rd-bare.bare) defines rd_register_metods() without @robust_distill.hookimpl, so "
        "robust-distill ignores it: decorate it with @hookimpl. rd_register_metods is not a robust-distill hook "
        "either. Did you mean rd_register_methods?",
    ]
    assert "undecorated" not in regs.methods


def test_wrong_hook_arguments_are_rejected_at_registration(pm: PluginManager) -> None:
    @hookimpl
    def rd_register_methods(registy: Any) -> None:
        pass
    with pytest.raises(PluginLoadError, match="registy") as e:
        pm.add_plugin(module("bad_args", rd_register_methods=rd_register_methods), "bad_args")
    assert "rd_register_methods() has no argument 'registy' (did you mean 'registry'?)" in str(e.value)


def test_source_checkout_without_metadata_uses_the_builtin_tuple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "_distributions", lambda: [])
    pm = PluginManager().load_plugins()
    regs = pm.build_registries()
    assert isinstance(regs, Registries) and {"pgd_at", "ard", "rslad", "adaad"} <= set(regs.methods)
    assert [n for n in pm.info if pm.info[n].kind == "built-in"] == [n for n, _ in plugin.BUILTIN_PLUGINS]


def _adder_and_user() -> tuple[types.ModuleType, types.ModuleType]:
    spec = pluggy.HookspecMarker("robust_distill")

    @spec
    def rd_custom(value: int) -> int:
        """A hook added by a plugin."""

    specs = module("newspecs", rd_custom=rd_custom)

    @hookimpl
    def rd_addhooks(pluginmanager: PluginManager) -> None:
        pluginmanager.add_hookspecs(specs)

    @hookimpl(specname="rd_custom")
    def rd_custom_impl(value: int) -> int:
        return value + 1

    return module("adder", rd_addhooks=rd_addhooks), module("user", rd_custom=rd_custom_impl)


@pytest.mark.parametrize("adder_first", [True, False])
def test_hook_rd_addhooks_is_fired_for_installed_plugins(installed, adder_first: bool) -> None:
    adder, user = _adder_and_user()
    # third-party plugins load by distribution name: the user of the new hook before or after its adder
    installed("rd-1-adder" if adder_first else "rd-2-adder", {"adder": lambda: adder})
    installed("rd-2-user" if adder_first else "rd-1-user", {"user": lambda: user})
    pm = PluginManager().load_plugins(autoload=True)  # check_pending: rd_custom must have its specification
    assert pm.hook.rd_custom(value=1) == [2]


def test_hook_wrappers_wrap_every_plugins_registration_call(installed) -> None:
    seen: list[list[str]] = []

    @hookimpl(wrapper=True)
    def rd_register_methods(registry: Any) -> Any:
        result = yield
        seen.append(registry.names())
        return result

    @hookimpl(hookwrapper=True)
    def rd_register_outer_losses(registry: Any) -> Any:
        yield
        seen.append(["old-style"])

    installed("rd-extra", {"extra": lambda: method_plugin("extra_method")})
    installed("rd-wrap", {"wrap": lambda: module("wrap_mod", rd_register_methods=rd_register_methods,
                                                  rd_register_outer_losses=rd_register_outer_losses)})
    pm = PluginManager().load_plugins(autoload=True)
    regs = pm.build_registries()
    implementers = [i.plugin_name for i in pm.hook.rd_register_methods.get_hookimpls() if not i.wrapper]
    method_calls = [s for s in seen if s != ["old-style"]]
    assert len(method_calls) == len(implementers) and "extra" in implementers
    assert "extra_method" in method_calls[-1] and method_calls[-1] == regs.methods.names()
    n_loss_plugins = len([i for i in pm.hook.rd_register_outer_losses.get_hookimpls() if not i.hookwrapper])
    assert seen.count(["old-style"]) == n_loss_plugins


def test_lifecycle_hooks_go_through_pluggy_wrappers_and_report_who_returned_what(pm: PluginManager) -> None:
    @hookimpl
    def rd_epoch_end(epoch: int) -> dict[str, float]:
        return {"a_metric": float(epoch)}

    @hookimpl(wrapper=True)
    def rd_epoch_end_wrapper(metrics: Any) -> Any:
        results = yield
        return [{**r, "wrapped": 1.0} for r in results]

    @hookimpl(tryfirst=True, specname="rd_epoch_end")
    def rd_epoch_end_first(epoch: int) -> dict[str, float]:
        return {"n_metric": 1.0}

    pm.add_plugin(module("a_mod", rd_epoch_end=rd_epoch_end), "a")
    pm.add_plugin(module("w_mod", rd_epoch_end=rd_epoch_end_wrapper), "w")
    pm.add_plugin(module("n_mod", rd_epoch_end=rd_epoch_end_first), "n")
    assert pm.call_lifecycle("rd_epoch_end", run=None, epoch=3, metrics={}) == [
        ("n", {"n_metric": 1.0, "wrapped": 1.0}),  # tryfirst: before "a", which was registered first
        ("a", {"a_metric": 3.0, "wrapped": 1.0}),
    ]


def test_registry_unknown_names_suggest_close_matches() -> None:
    reg: Registry[Any] = Registry("method")
    reg.register(len, name="rslad")
    with pytest.raises(UnknownNameError, match="Did you mean 'rslad'"):
        reg.get("rsald")


def test_registry_build_passes_only_declared_provided_arguments() -> None:
    reg: Registry[Any] = Registry("loss")

    class WithClasses:
        def __init__(self, alpha: float = 1.0, num_classes: int = 0) -> None:
            self.alpha, self.num_classes = alpha, num_classes

    class Plain:
        pass

    reg.register(WithClasses, name="a")
    reg.register(Plain, name="b")
    built = reg.build("a", {"alpha": 2.0}, num_classes=10, epochs=3)
    assert (built.alpha, built.num_classes) == (2.0, 10)
    assert isinstance(reg.build("b", {}, num_classes=10), Plain)


