"""robust-distill: adversarial robustness distillation methods as pluggy plugins.

This module is the public API: plugins, notebooks and scripts import from ``robust_distill`` itself, never
from its subpackages (``import-linter`` checks that for the built-in plugins; see ``docs/layout.md``).

Write a plugin in a few lines::

    # my_plugin.py
    from robust_distill import hookimpl, Method, Part

    @hookimpl
    def rd_register_methods(registry):
        registry.register(Method(
            name="rslad_t2", summary="RSLAD with temperature 2 in the inner maximisation",
            inner_attack=Part("kl_pgd", {"target": "teacher_clean", "temperature": 2.0}),
            outer_loss=Part("rslad", {"alpha": 5 / 6}),
        ))

and declare it in your distribution's ``setup.cfg``::

    [options.entry_points]
    robust_distill =
        my_plugin = my_plugin

After ``pip install``, ``robust-distill plugins`` lists it and ``method: rslad_t2`` works in a config.
``docs/plugins.md`` is the plugin author's guide; ``robust_distill.core.hookspecs`` specifies every hook.

From Python (a notebook, a script): :func:`train`, :func:`evaluate`, :func:`load_model`, :func:`list_methods`,
:func:`list_attacks` and :func:`registries` (:mod:`robust_distill.api`)::

    import robust_distill as rd

    summary = rd.train("configs/rslad.yaml", overrides={"optim.epochs": 5})
    ev = rd.evaluate(rd.load_model(summary["checkpoints"]["best"]), attacks=["clean", "pgd20"])
"""

from __future__ import annotations

import importlib
from typing import Any

from robust_distill import _moved
from robust_distill._compat import import_autoattack, import_optional, import_robustbench
from robust_distill._version import __version__
from robust_distill.analysis.subspace import (
    InputSubspace,
    Keep,
    first_layer,
    fit_input_subspace,
    pgd_restarts,
    select_by_subspace,
)
from robust_distill.api import Evaluation, evaluate, list_attacks, list_methods, load_model, registries, train
from robust_distill.cli import command
from robust_distill.core.attacks import BNMode, InnerPGD, Start, model_mode, pgd, sign_step
from robust_distill.core.components import (
    DataBundle,
    DatasetInfo,
    EvalAttack,
    InnerAttack,
    Method,
    OuterLoss,
    Part,
    Stateful,
    StreamedBundle,
    StudentSource,
    TeacherSource,
    TeacherUpdater,
    epochs_of,
    split_spec,
    training_defaults,
)
from robust_distill.core.context import RunContext
from robust_distill.core.hookspecs import hookimpl
from robust_distill.core.losses import (
    KLReduction,
    Reduction,
    check_kl_reduction,
    js_divergence,
    kl_div,
    kl_divisor,
    squared_l2,
)
from robust_distill.core.manager import PluginWarning, Registries
from robust_distill.core.preflight import check_input_file, check_input_shape, load_state_dict_checked, on_meta
from robust_distill.core.registry import Registry
from robust_distill.core.step import Step
from robust_distill.core.threat import ThreatModel, format_eps
from robust_distill.data.memory import iterate_eval, to_float
from robust_distill.data.streaming import (
    IMG_EXTENSIONS,
    CropFlip,
    ImageList,
    ImageTransform,
    RandomResizedCropFlip,
    decode_all,
    read_image,
    scan_class_folders,
)
from robust_distill.engine.distributed import all_reduce_mean, clone_state, global_mean, resolve_device
from robust_distill.engine.progress import Progress, scoped
from robust_distill.engine.tracking import Logger
from robust_distill.engine.trained import TrainedModel, TrainedTeacher
from robust_distill.errors import (
    CheckpointError,
    ConfigError,
    DiskError,
    HubError,
    InputError,
    MissingDependencyError,
    PluginError,
    RDError,
    RunError,
    SetupError,
)
from robust_distill.files.checkpoint import (
    build_from_checkpoint,
    load_checkpoint,
    load_state_dict_file,
    load_weights_file,
    weights_only_loads,
)
from robust_distill.files.hub import CONFIG, LEGACY_WEIGHTS, WEIGHTS, hub_file, read_hub_config
from robust_distill.results.tables import final_table, markdown_final_table, markdown_table

_moved.install()  # the import paths of 0.1 keep working for one release, with a warning


def __getattr__(name: str) -> Any:
    """``robust_distill.components`` and the other modules of 0.1 as attributes of the package (0.1 imported
    several with it): imported through their old path, which warns."""
    if f"robust_distill.{name}" in _moved.MOVED:
        return importlib.import_module(f"robust_distill.{name}")
    raise AttributeError(f"module 'robust_distill' has no attribute {name!r}")

__all__ = [
    "__version__", "hookimpl",
    # the Python API
    "train", "evaluate", "load_model", "Evaluation", "registries", "list_methods", "list_attacks",
    # the plugin API
    "Registry", "Registries", "PluginWarning", "command", "Step", "ThreatModel", "Method", "Part", "Stateful",
    "DataBundle", "StreamedBundle",
    "DatasetInfo", "TeacherSource", "StudentSource", "InnerAttack", "OuterLoss", "TeacherUpdater", "EvalAttack",
    "training_defaults", "epochs_of", "split_spec", "RunContext", "Logger", "format_eps",
    "kl_div", "js_divergence", "squared_l2", "kl_divisor", "check_kl_reduction", "KLReduction", "Reduction",
    "pgd", "sign_step", "InnerPGD", "BNMode", "Start", "model_mode",
    "check_input_file", "check_input_shape", "load_state_dict_checked", "on_meta",
    # data
    "iterate_eval", "to_float", "IMG_EXTENSIONS", "ImageList", "ImageTransform", "CropFlip",
    "RandomResizedCropFlip",
    "decode_all", "read_image", "scan_class_folders",
    # engine pieces
    "TrainedModel", "TrainedTeacher", "all_reduce_mean", "clone_state", "global_mean", "resolve_device",
    "Progress", "scoped",
    # files and results
    "build_from_checkpoint", "load_checkpoint", "load_state_dict_file", "load_weights_file", "weights_only_loads",
    "hub_file", "read_hub_config", "CONFIG", "LEGACY_WEIGHTS", "WEIGHTS",
    "final_table", "markdown_final_table", "markdown_table",
    # optional dependencies
    "import_optional", "import_robustbench", "import_autoattack",
    # errors
    "RDError", "ConfigError", "InputError", "CheckpointError", "PluginError", "DiskError", "SetupError", "RunError",
    "HubError", "MissingDependencyError",
    # the specialization paper's subspace tools
    "InputSubspace", "Keep", "first_layer", "fit_input_subspace", "pgd_restarts", "select_by_subspace",
]
