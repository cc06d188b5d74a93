"""Import paths of release 0.1 that moved into subpackages: they keep working for one release, with a warning.

``import robust_distill.losses`` (or ``from robust_distill.checkpoint import load_checkpoint``) finds the module
at its new place (``robust_distill.core.losses``), warns once with a ``DeprecationWarning`` naming that place,
and gives the very same module object: classes, functions and module state are shared, never copied.
:func:`install` puts the finder on ``sys.meta_path``; the package's ``__init__`` calls it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "MOVED_NAMES", "install", "old_names"]

#: old module -> new module (removed in 0.3)
MOVED = {
    "robust_distill.hookspecs": "robust_distill.core.hookspecs",
    "robust_distill.components": "robust_distill.core.components",
    "robust_distill.context": "robust_distill.core.context",
    "robust_distill.step": "robust_distill.core.step",
    "robust_distill.threat": "robust_distill.core.threat",
    "robust_distill.registry": "robust_distill.core.registry",
    "robust_distill.losses": "robust_distill.core.losses",
    "robust_distill.attacks": "robust_distill.core.attacks",
    "robust_distill.precision": "robust_distill.core.precision",
    "robust_distill.preflight": "robust_distill.core.preflight",
    "robust_distill.plugin": "robust_distill.core.manager",
    "robust_distill.streaming": "robust_distill.data.streaming",
    "robust_distill.checkpoint": "robust_distill.files.checkpoint",
    "robust_distill._io": "robust_distill.files.atomic",
    "robust_distill._lock": "robust_distill.files.lock",
    "robust_distill.hub": "robust_distill.export",  # finding a folder's files: robust_distill.files.hub
    "robust_distill.trainer": "robust_distill.engine.trainer",
    "robust_distill.evaluation": "robust_distill.engine.evaluation",
    "robust_distill.trained": "robust_distill.engine.trained",
    "robust_distill.compilation": "robust_distill.engine.compilation",
    "robust_distill.fastpath": "robust_distill.engine.fastpath",
    "robust_distill.monitor": "robust_distill.engine.monitor",
    "robust_distill.distributed": "robust_distill.engine.distributed",
    "robust_distill._proc": "robust_distill.engine.processes",
    "robust_distill.progress": "robust_distill.engine.progress",
    "robust_distill.tracking": "robust_distill.engine.tracking",
    "robust_distill.pruning": "robust_distill.engine.pruning",
    "robust_distill.analysis.plots": "robust_distill.results.plots",
}


#: names that left their module or were renamed: module -> {old name: "new.module.name"} (removed in 0.3)
MOVED_NAMES = {
    "robust_distill.core.losses": {"divisor": "robust_distill.core.losses.kl_divisor"},
    "robust_distill.files.checkpoint": {"load_file": "robust_distill.files.checkpoint.load_weights_file"},
    "robust_distill.export": {"hub_file": "robust_distill.files.hub.hub_file",
                              "LEGACY_WEIGHTS": "robust_distill.files.hub.LEGACY_WEIGHTS"},
    "robust_distill.engine.tracking": {"final_table": "robust_distill.results.tables.final_table",
                                       "markdown_final_table": "robust_distill.results.tables.markdown_final_table"},
    "robust_distill.engine.trainer": {name: f"robust_distill.engine.run.{name}"
                                      for name in ("build_student", "load_data", "load_teacher", "model_spec")},
    "robust_distill.analysis.report": {"varying_keys": "robust_distill.results.runs.varying_keys",
                                       "IGNORED": "robust_distill.results.runs.IGNORED"},
    "robust_distill.config": {"SEED_RANGE": "robust_distill.config.schema.SEED_RANGE",
                              "INT_LIMIT": "robust_distill.config.schema.INT_LIMIT",
                              "MERGE_TAG": "robust_distill.config.loading.MERGE_TAG",
                              "DuplicateKeyError": "robust_distill.config.loading.DuplicateKeyError",
                              "RENAMED_OPTIONS": "robust_distill.config.resume.RENAMED_OPTIONS"},
}


def old_names(module: str) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module``: its names of 0.1 that moved (:data:`MOVED_NAMES`) resolve to
    their new place, with a ``DeprecationWarning``; anything else is an ``AttributeError`` as usual."""
    moved = MOVED_NAMES.get(module, {})

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = moved[name].rpartition(".")
        warnings.warn(f"{module}.{name} moved to {moved[name]}; the old name goes away in robust-distill 0.3.",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds a moved module under its old name; loading it returns the module at its new place."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in robust-distill 0.3 (plugins: import "
                      "from robust_distill itself, the public API).", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module at its new place is executed); undo the import system's ``__spec__`` change."""
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
