"""The layout's rules hold: import-linter's contracts (setup.cfg) pass on the source tree and fail on a copy with a
wrong import; no module imports the project inside a function; old import paths warn and give the same module;
every error the project raises for people derives from one kind of robust_distill.errors."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import robust_distill
from robust_distill import errors
from robust_distill._moved import MOVED, MOVED_NAMES
from robust_distill.core.registry import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"robust_distill": ROOT / "robust_distill", "robust_distill_plugins": ROOT / "plugins",
            "rd_example_plugin": ROOT / "plugins" / "example_third_party" / "rd_example_plugin"}


def lint_imports(tree: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with setup.cfg's contracts on the packages under ``tree`` (first on the import path, so
    an installed copy of the project is not what is read)."""
    pytest.importorskip("importlinter")
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache", "--no-logo", str(ROOT / "setup.cfg")], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_the_source_tree_keeps_every_contract(tmp_path: Path) -> None:
    for name, path in PACKAGES.items():
        (tmp_path / name).symlink_to(path, target_is_directory=True)
    out = lint_imports(tmp_path, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken." in out.stdout


def test_a_wrong_import_breaks_its_contract(tmp_path: Path) -> None:
    """A scratch copy where the plugin API imports the command line, and a plugin a private module: each breaks
    its contract, named with the offending line."""
    for name, path in PACKAGES.items():
        shutil.copytree(path, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    with open(tmp_path / "robust_distill" / "core" / "threat.py", "a") as f:
        f.write("from robust_distill.cli import main  # the wrong way\n")
    with open(tmp_path / "robust_distill_plugins" / "rslad.py", "a") as f:
        f.write("from robust_distill.core.losses import kl_div  # past the public API\n")
    out = lint_imports(tmp_path, tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Contracts: 0 kept, 2 broken." in out.stdout
    assert "robust_distill.core is not allowed to import robust_distill.cli" in out.stdout
    assert "- robust_distill.core.threat -> robust_distill.cli" in out.stdout
    assert "Illegal imports of protected package robust_distill.core" in out.stdout
    assert "- robust_distill_plugins.rslad -> robust_distill.core.losses" in out.stdout


def _function_imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, module, commented)`` of every import inside a function of ``path``."""
    lines = path.read_text().splitlines()
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if inside and isinstance(child, (ast.Import, ast.ImportFrom)):
                module = child.module if isinstance(child, ast.ImportFrom) else child.names[0].name
                module = "." * getattr(child, "level", 0) + (module or "")
                around = lines[child.lineno - 2:child.end_lineno]  # the line before, and the statement
                found.append((child.lineno, module, any("#" in line for line in around)
                              or _documented(node, child)))
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return found


def _documented(parent: ast.AST, imp: ast.AST) -> bool:
    """A function whose docstring says why it imports lazily (``_plt``: "imported when a plot is drawn")."""
    doc = ast.get_docstring(parent) if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    return bool(doc) and "import" in doc


@pytest.mark.parametrize("package", ["robust_distill", "robust_distill_plugins"])
def test_no_function_level_import_of_the_project_and_every_other_one_says_why(package: str) -> None:
    project, silent = [], []
    for path in sorted(PACKAGES[package].rglob("*.py")):
        if "example_third_party" in path.parts or "build" in path.parts:
            continue
        for line, module, commented in _function_imports(path):
            where = f"{path.relative_to(ROOT)}:{line} {module}"
            if module == "robust_distill" or module.startswith("robust_distill.") or (
                    package == "robust_distill" and module.startswith(".")):
                project.append(where)
            elif not commented:
                silent.append(where)
    assert not project, "imports of the project inside functions (import at the top; the layers allow it):\n" + \
        "\n".join(project)
    assert not silent, "lazy imports without a comment saying why (an optional or a heavy load):\n" + \
        "\n".join(silent)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_import_path_warns_and_is_the_same_module(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    message = rf"{old} moved to {new}; the old path goes away in robust-distill 0\.3"
    with pytest.warns(DeprecationWarning, match=message):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new) and module.__spec__.name == new
    sys.modules.pop(old, None)


def test_old_names_of_the_data_module_warn() -> None:
    from robust_distill.data.memory import to_float
    from robust_distill.data.splits import make_splits

    with pytest.warns(DeprecationWarning, match="robust_distill.data.to_float moved to robust_distill.data.memory"):
        from robust_distill.data import to_float as old_to_float
    with pytest.warns(DeprecationWarning, match="robust_distill.data.make_splits moved to robust_distill.data.splits"):
        from robust_distill.data import make_splits as old_make_splits
    assert old_to_float is to_float and old_make_splits is make_splits
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"), warnings.catch_warnings():
        warnings.simplefilter("error")
        robust_distill.data.nothing  # noqa: B018


def _project_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in a module of the project or its built-in plugins."""
    found = []
    for root, prefix in ((robust_distill, "robust_distill."), (importlib.import_module("robust_distill_plugins"),
                                                                "robust_distill_plugins.")):
        for info in pkgutil.walk_packages(root.__path__, prefix):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                      if issubclass(obj, BaseException) and obj.__module__ == info.name]
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_error_of_the_project_is_of_one_kind_with_its_exit_code() -> None:
    kinds = (errors.ConfigError, errors.InputError, errors.CheckpointError, errors.PluginError, errors.DiskError,
             errors.SetupError, errors.RunError)
    # control flow, not an error: a signal that stops the command
    not_errors = {"robust_distill.engine.processes.Terminated"}
    classes = [c for c in _project_exceptions() if not issubclass(c, Warning) and c is not errors.RDError
               and f"{c.__module__}.{c.__qualname__}" not in not_errors]
    assert len(classes) >= 25
    orphans = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, kinds)]
    assert not orphans, orphans
    assert {k.exit_code for k in kinds} == {2, 3, 4} and errors.ConfigError.exit_code == 2
    assert errors.DivergenceError.exit_code == errors.CompileUnavailableError.exit_code == 4
    # the built-in bases callers caught before the kinds existed still catch them
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.WriteError, OSError)
    assert issubclass(errors.DivergenceError, FloatingPointError) and issubclass(UnknownNameError, KeyError)


def test_the_cli_maps_each_kind_to_its_exit_code(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    from robust_distill import cli

    raised: list[BaseException] = []

    def run(ns: object) -> int:
        raise raised[-1]

    command = cli.Command("boom", "raise", lambda p: None, run)
    monkeypatch.setattr(cli, "build_commands", lambda pm=None: _one(command))
    cases = [(errors.ConfigError(["data.batch_size must be >= 1"]), 2, "robust-distill: Invalid config"),
             (errors.InputError("file x is empty"), 3, "robust-distill: error: file x is empty"),
             (errors.DivergenceError("loss is nan at step 3"), 4, "robust-distill: error: loss is nan at step 3"),
             (errors.MissingDependencyError("pip install robust-distill[robustbench]"), 3, "robustbench]"),
             (PermissionError(13, "Permission denied"), 3, "robust-distill: error: [Errno 13] Permission denied")]
    for exc, code, message in cases:
        raised.append(exc)
        assert cli.main(["boom"]) == code
        assert message in capsys.readouterr().err


def _one(command: object) -> object:
    from robust_distill.cli import CommandRegistry

    registry = CommandRegistry()
    registry.register(command)
    return registry


@pytest.mark.parametrize(("module", "name"), sorted((m, n) for m, names in MOVED_NAMES.items() for n in names))
def test_a_name_that_left_its_module_still_resolves_there_with_a_warning(module: str, name: str) -> None:
    new_module, _, new_name = MOVED_NAMES[module][name].rpartition(".")
    with pytest.warns(DeprecationWarning, match=rf"{module}\.{name} moved to {new_module}\.{new_name}"):
        old = getattr(importlib.import_module(module), name)
    assert old is getattr(importlib.import_module(new_module), new_name)


def test_a_module_of_0_1_is_an_attribute_of_the_package() -> None:
    sys.modules.pop("robust_distill.components", None)
    vars(robust_distill).pop("components", None)
    with pytest.warns(DeprecationWarning, match="robust_distill.components moved to robust_distill.core.components"):
        assert robust_distill.components.Method is robust_distill.Method
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        robust_distill.nothing  # noqa: B018


def test_registries_reach_only_the_factories_that_name_them(regs) -> None:
    import functools

    seen = []

    def named(x, *, registries=None):
        seen.append(registries)

    def anything(x, **options):
        seen.append(options)

    def positional_only(registries, /):
        seen.append(registries)

    regs.call(named, 1)
    regs.call(named, 1, registries="given")  # the caller's wins
    regs.call(functools.partial(named, registries="bound"), 1)  # so does a partial's
    regs.call(anything, 1)  # **options: not a declaration
    regs.call(positional_only, "first")
    assert seen == [regs, "given", "bound", {}, "first"]
