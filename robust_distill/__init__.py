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
``docs/plugins.md`` is the plugin author's guide; ``robust_distill.hookspecs`` specifies every hook.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("robust_distill")
"""Marker for hook implementations: ``@hookimpl def rd_register_methods(registry): ...``."""

from .components import (  # noqa: E402
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
from .context import RunContext  # noqa: E402
from .registry import Registry  # noqa: E402
from .step import Step  # noqa: E402
from .threat import ThreatModel  # noqa: E402
from .tracking import Logger  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "Registry", "Step", "ThreatModel", "Method", "Part", "Stateful",
    "DataBundle", "StreamedBundle", "DatasetInfo", "TeacherSource", "StudentSource", "InnerAttack", "OuterLoss",
    "TeacherUpdater", "EvalAttack", "training_defaults", "RunContext", "Logger",
]
