"""Plugin discovery and error reporting, with fake distributions monkeypatched into importlib.metadata."""

from __future__ import annotations

import importlib.metadata as md
import types
from typing import Any

import pytest

from robust_distill import Method, Part, hookimpl, plugin
from robust_distill.plugin import ENTRY_POINT_GROUP, PluginHookError, PluginLoadError, PluginManager, Registries
from robust_distill.registry import DuplicateNameError, Registry, UnknownNameError


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


def method_plugin(method_name: str) -> types.ModuleType:
    @hookimpl
    def rd_register_methods(registry: Registry[Method]) -> None:
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
    assert pm.info["extra"].builtin is False and pm.info["rslad"].builtin is True


def test_autoload_can_be_disabled_and_plugins_allow_listed(installed, monkeypatch: pytest.MonkeyPatch) -> None:
    installed("rd-a", {"a": lambda: method_plugin("method_a")})
    installed("rd-b", {"b": lambda: method_plugin("method_b")})
    monkeypatch.setenv("RD_DISABLE_PLUGIN_AUTOLOAD", "1")
    regs = PluginManager().load_plugins().build_registries()
    assert "method_a" not in regs.methods and "rslad" in regs.methods  # built-ins always load
    monkeypatch.setenv("RD_DISABLE_PLUGIN_AUTOLOAD", "0")
    monkeypatch.setenv("RD_PLUGINS", "rd-b")
    regs = PluginManager().load_plugins().build_registries()
    assert "method_b" in regs.methods and "method_a" not in regs.methods
    monkeypatch.setenv("RD_PLUGINS", "")
    monkeypatch.setenv("RD_DISABLED_PLUGINS", "a,rslad")
    regs = PluginManager().load_plugins().build_registries()
    assert "method_b" in regs.methods and "method_a" not in regs.methods and "rslad" not in regs.methods


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


def test_two_plugins_registering_one_name_is_an_error_naming_both(installed) -> None:
    installed("rd-one", {"one": lambda: method_plugin("same")})
    installed("rd-two", {"two": lambda: method_plugin("same")})
    pm = PluginManager().load_plugins(autoload=True)
    with pytest.raises(DuplicateNameError) as e:
        pm.build_registries()
    assert {e.value.first_plugin, e.value.second_plugin} == {"one", "two"}
    assert "rd-one" in str(e.value) or "rd-two" in str(e.value)


def test_two_distributions_with_one_plugin_name(installed) -> None:
    installed("rd-x", {"dup": lambda: method_plugin("m1")})
    installed("rd-y", {"dup": lambda: method_plugin("m2")})
    with pytest.raises(PluginLoadError, match="already used by module rd-x.dup from distribution rd-x"):
        PluginManager().load_plugins(autoload=True)


def test_an_unknown_hook_fails_check_pending(installed) -> None:
    @hookimpl
    def rd_register_metods(registry: Any) -> None:  # typo
        pass
    installed("rd-typo", {"typo": lambda: module("typo_mod", rd_register_metods=rd_register_metods)})
    with pytest.raises(PluginLoadError, match="unknown hook 'rd_register_metods'") as e:
        PluginManager().load_plugins(autoload=True)
    assert e.value.plugin == "typo"


def test_wrong_hook_arguments_are_rejected_at_registration(pm: PluginManager) -> None:
    @hookimpl
    def rd_register_methods(registry: Any, extra: Any) -> None:
        pass
    with pytest.raises(PluginLoadError, match="extra"):
        pm.add_plugin(module("bad_args", rd_register_methods=rd_register_methods), "bad_args")


def test_source_checkout_without_metadata_uses_the_builtin_tuple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "_distributions", lambda: [])
    regs = PluginManager().load_plugins().build_registries()
    assert isinstance(regs, Registries) and {"pgd_at", "ard", "rslad", "adaad"} <= set(regs.methods)


def test_hook_rd_addhooks_lets_a_plugin_add_hooks(pm: PluginManager) -> None:
    specs = module("newspecs")
    import pluggy
    spec = pluggy.HookspecMarker("robust_distill")

    @spec
    def rd_custom(value: int) -> int:
        """A hook added by a plugin."""
    specs.rd_custom = rd_custom

    @hookimpl
    def rd_addhooks(pluginmanager: PluginManager) -> None:
        pluginmanager.add_hookspecs(specs)

    @hookimpl(specname="rd_custom")
    def rd_custom_impl(value: int) -> int:
        return value + 1

    pm.add_plugin(module("adder", rd_addhooks=rd_addhooks), "adder")
    pm.hook.rd_addhooks.call_historic(kwargs={"pluginmanager": pm})
    pm.add_plugin(module("user", rd_custom=rd_custom_impl), "user")
    assert pm.hook.rd_custom(value=1) == [2]


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


