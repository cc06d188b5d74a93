"""Compatibility shims for RobustBench 1.1.1 on a plain PyPI install, in one place.

Two things break ``import robustbench`` in a fresh environment (``shared/reference/ecosystem.md`` §0):

1. robustbench imports ``autoattack`` (the fra31 git package) but its PyPI dependency ``pyautoattack``
   installs a module called ``pyautoattack``. We alias ``autoattack`` -> ``pyautoattack`` (and
   ``autoattack.state``) in ``sys.modules`` before robustbench is imported.
2. ``robustbench/loaders.py`` imports ``pkg_resources``, which setuptools >= 81 no longer ships. The
   dependency pin ``setuptools<81`` in ``setup.cfg`` keeps it; if it is missing anyway we install a stub
   module providing the one function robustbench uses (``resource_filename``).

``import_robustbench()`` applies both and returns the module; it is the only way the project imports
robustbench. The pyautoattack adapter ``AutoAttackAdapter`` gives pyautoattack 0.2 the fra31 calling
convention that ``robustbench.benchmark`` expects.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
import warnings
from importlib.resources import files
from typing import Any
from unittest import mock

import torch

from robust_distill.errors import MissingDependencyError

__all__ = ["import_robustbench", "import_autoattack", "import_optional", "AutoAttackAdapter",
           "robustbench_benchmark", "MissingDependencyError"]


def import_optional(module: str, *, extra: str, feature: str, package: str | None = None) -> types.ModuleType:
    """Import ``module``, or say which extra of robust-distill installs it (``pip install 'robust-distill[x]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the package {package or module.split('.')[0]!r}, which is not installed ({exc}). "
            f"Install it with `pip install 'robust-distill[{extra}]'`."
        ) from exc


def import_autoattack() -> types.ModuleType:
    """Return the reference AutoAttack package (``pyautoattack``), aliased as ``autoattack``."""
    try:
        pyaa = importlib.import_module("pyautoattack")
    except ImportError:
        try:  # the fra31 git install, if a user has it
            return importlib.import_module("autoattack")
        except ImportError as exc:
            raise MissingDependencyError(
                "The reference AutoAttack implementation is not installed. Install it with "
                "`pip install pyautoattack` (PyPI name of fra31/auto-attack)."
            ) from exc
    sys.modules.setdefault("autoattack", pyaa)
    state = importlib.import_module("pyautoattack.state")
    sys.modules.setdefault("autoattack.state", state)
    return pyaa


def _ensure_pkg_resources() -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("pkg_resources")
        return
    except ImportError:
        pass
    stub = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        return str(files(package) / resource)

    stub.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = stub


def import_robustbench() -> types.ModuleType:
    """Import robustbench with the shims applied (lazily: it costs ~4 s and pulls in pandas, scipy, ...)."""
    if "robustbench" in sys.modules:
        return sys.modules["robustbench"]
    import_autoattack()
    _ensure_pkg_resources()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("robustbench")
    except ImportError as exc:
        raise MissingDependencyError(
            f"Could not import robustbench ({exc}). Install it with `pip install robustbench==1.1.1 "
            "pyautoattack 'setuptools<81'` (these are robust-distill's pinned dependencies)."
        ) from exc


class AutoAttackAdapter:
    """pyautoattack 0.2 behind the fra31 ``AutoAttack`` interface that robustbench 1.1.1 calls.

    Accepts ``log_path``/``verbose``/``attacks_to_run`` (ignored or mapped) and ``bs=``, and returns the
    adversarial batch only, unless ``return_labels=True``.
    """

    def __init__(self, model: Any, norm: str = "Linf", eps: float = 8 / 255, seed: int | None = None,
                 verbose: bool = False, attacks_to_run: Any = (), version: str = "standard",
                 device: Any = "cpu", log_path: str | None = None, **_: Any) -> None:
        pyaa = import_autoattack()
        kwargs: dict[str, Any] = dict(norm=norm, eps=eps, version=version, device=device, seed=seed)
        if attacks_to_run:
            kwargs.update(version="custom", attacks=list(attacks_to_run))
        self._aa = pyaa.AutoAttack(model, **kwargs)

    def run_standard_evaluation(self, x: Any, y: Any, bs: int = 250, state_path: Any = None,
                                return_labels: bool = False, **_: Any) -> Any:
        out = self._aa.run_standard_evaluation(x, y, batch_size=bs, state_path=state_path)
        x_adv, y_adv = out if isinstance(out, tuple) else (out, None)
        return (x_adv, y_adv) if return_labels else x_adv


def robustbench_benchmark(model: Any, x: Any, y: Any, *, eps: float, batch_size: int = 500, seed: int = 0,
                          device: Any = "cpu") -> tuple[float, float]:
    """``robustbench.benchmark`` (clean and AutoAttack accuracy) on the examples ``(x, y)``.

    RobustBench 1.1.1 cannot run as shipped (it calls the fra31 AutoAttack API); this runs its own
    ``benchmark`` with :class:`AutoAttackAdapter` (seeded) in place of ``AutoAttack`` and the given
    examples in place of its CIFAR loader. Used to check that our AutoAttack numbers follow its protocol.
    """
    rb = import_robustbench()
    adapter = functools.partial(AutoAttackAdapter, seed=seed)
    with mock.patch.object(rb.eval, "AutoAttack", adapter), \
            mock.patch.object(rb.eval, "load_clean_dataset", lambda *a, **k: (x, y)):
        return rb.eval.benchmark(model, n_examples=len(x), dataset="cifar10", threat_model="Linf", eps=eps,
                                 batch_size=batch_size, device=torch.device(device))  # a str is a Sequence
