"""robust-distill: adversarial robustness distillation methods as pluggy plugins.

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

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("robust_distill")
"""Marker for hook implementations: ``@hookimpl def rd_register_methods(registry): ...``."""

from robust_distill.api import Evaluation, evaluate, list_attacks, list_methods, load_model, registries, train  # noqa: E402
from robust_distill.core.components import (  # noqa: E402
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
    training_defaults,
)
from robust_distill.core.context import RunContext  # noqa: E402
from robust_distill.core.registry import Registry  # noqa: E402
from robust_distill.core.step import Step  # noqa: E402
from robust_distill.core.threat import ThreatModel  # noqa: E402
from robust_distill.engine.tracking import Logger  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "Registry", "Step", "ThreatModel", "Method", "Part", "Stateful",
    "DataBundle", "StreamedBundle", "DatasetInfo", "TeacherSource", "StudentSource", "InnerAttack", "OuterLoss",
    "TeacherUpdater", "EvalAttack", "training_defaults", "RunContext", "Logger",
    "train", "evaluate", "load_model", "Evaluation", "registries", "list_methods", "list_attacks",
]
