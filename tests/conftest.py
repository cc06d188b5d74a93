"""Shared fixtures. Third-party plugins installed in the environment never leak into the suite."""

from __future__ import annotations

import os

os.environ.setdefault("RD_DISABLE_PLUGIN_AUTOLOAD", "1")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from robust_distill.config import Config, resolve_config  # noqa: E402
from robust_distill.plugin import PluginManager, Registries, get_registries  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def regs() -> Registries:
    """The built-in registries (loaded once per session; read-only in tests)."""
    return get_registries()


@pytest.fixture
def pm() -> PluginManager:
    """A fresh plugin manager with only the hook specifications (no plugins)."""
    return PluginManager()


TINY: dict[str, Any] = {
    "method": "pgd_at",
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "synthetic", "val_size": 32, "batch_size": 16, "eval_batch_size": 64,
             "options": {"n_train": 96, "n_test": 32, "size": 8, "num_classes": 4}},
    "student": {"key": "timm:convnet_xs"},
    "threat": {"eps": "8/255", "step_size": "2/255", "steps": 2},
    "optim": {"epochs": 2, "lr": 0.05, "schedule": {"key": "multistep", "kwargs": {"milestones": [1]}}},
    "eval": {"n_examples": 32, "attacks": ["clean", "pgd20"], "select": "pgd20"},
}


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``tiny_raw(method="rslad", teacher=True, **overrides)``: a raw config dict for a seconds-long run."""

    def make(method: str = "pgd_at", teacher: bool = False, **top: Any) -> dict[str, Any]:
        raw = copy.deepcopy(TINY)
        raw["method"] = method
        raw["output_dir"] = str(tmp_path / f"run-{method}")
        if teacher:
            raw["teachers"] = {"robust": {"key": "timm:convnet_xs"}}
        raw.update(top)
        return raw
    return make


@pytest.fixture
def tiny_config(tiny_raw: Callable[..., dict[str, Any]], regs: Registries) -> Callable[..., Config]:
    def make(method: str = "pgd_at", teacher: bool = False, overrides: list[str] = (), **top: Any) -> Config:
        return resolve_config(tiny_raw(method, teacher, **top), regs, overrides=list(overrides))
    return make
