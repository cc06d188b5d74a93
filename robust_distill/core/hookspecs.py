"""Hook specifications: every extension point of robust-distill, in one place.

A plugin is a module (or object) with functions named like these hooks and decorated with
``@robust_distill.hookimpl`` (a function named ``rd_*`` without it is ignored, with a warning). It reaches the
plugin manager through the setuptools entry-point group ``robust_distill`` (built-in plugins use the same
group). Hooks must be called with keyword arguments; an implementation may accept fewer arguments than the
specification.

Registration hooks run once at start-up and fill registries; the training loop then calls the registered
objects directly and never goes through pluggy. The plugin manager calls every collecting hook (registration
and lifecycle) once per implementing plugin, in load order, through pluggy: a registration is attributed to
its plugin, ``wrapper=True`` implementations wrap each plugin's call, ``RD_TRACE_PLUGINS=1`` prints each call.
The guide for plugin authors is ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from robust_distill.cli import CommandRegistry
    from robust_distill.core.components import (
        InnerAttack,
        Method,
        OuterLoss,
        StudentSource,
        TeacherSource,
        TeacherUpdater,
    )
    from robust_distill.core.context import RunContext
    from robust_distill.core.registry import Registry
    from robust_distill.engine.tracking import Logger

hookspec = pluggy.HookspecMarker("robust_distill")
hookimpl = pluggy.HookimplMarker("robust_distill")
"""Marker for hook implementations: ``@hookimpl def rd_register_methods(registry): ...``."""

# -------------------------------------------------------------------------------------------------
# Bootstrapping hooks
# -------------------------------------------------------------------------------------------------


@hookspec(historic=True)
def rd_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add new hook specifications (``pluginmanager.add_hookspecs(module)``).

    Historic, as pytest's ``pytest_addhooks``: fired when the plugin manager is created, so each plugin's
    implementation runs the moment that plugin registers, before the plugins loaded after it are checked
    against the specifications. Cannot return a value; wrappers are not allowed.

    :param pluginmanager: the robust-distill plugin manager.
    """


# -------------------------------------------------------------------------------------------------
# Registration hooks: called once at start-up, after all plugins are loaded; never during training.
# Each receives a :class:`~robust_distill.core.registry.Registry`; call ``registry.register(obj, name=...)``.
# A name registered by two plugins is an error naming both. All results are collected (not firstresult).
# -------------------------------------------------------------------------------------------------


@hookspec
def rd_register_datasets(registry: Registry[Any]) -> None:
    """Register datasets: objects with ``info(**options) -> DatasetInfo`` and ``load(**options)``.

    ``options`` come from the config's ``data.options`` plus ``root`` (``data.root``; ``info`` receives it
    too when its signature takes ``root``, for datasets whose classes come from their folders). ``load``
    returns either the whole train and test split in memory (:class:`~robust_distill.core.components.DataBundle`,
    with the augmentation it uses: crop padding, flip) or, for data too big for memory, the image files of
    each split and a per-sample transform (:class:`~robust_distill.core.components.StreamedBundle`, read by
    ``DataLoader`` workers, see :mod:`robust_distill.data.streaming`). The engine splits a validation set off
    the training set either way. ``info`` describes the data without loading it (classes, input shape,
    and ``train_size`` where it is known, so that ``data.val_size`` is checked before any loading); it runs
    when the config is checked: raise ``ValueError`` or ``OSError`` there, naming the file, for data that
    cannot work. A dataset built on other parts (relabelled by a teacher) declares a keyword ``registries`` in
    ``info`` and ``load`` and is given the run's (:meth:`~robust_distill.core.manager.Registries.call`).

    :param registry: registry of dataset loaders, keyed by the name used in ``data.dataset``.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_teacher_sources(registry: Registry[TeacherSource]) -> None:
    """Register teacher sources: :class:`~robust_distill.core.components.TeacherSource` objects.

    A source resolves the part after the colon of a teacher spec (``robustbench:Chen2021LTD_WRN34_10``,
    ``checkpoint:runs/x/best.pt``, ``timm:resnet18``) into a model in ``eval()`` mode that takes inputs in
    [0, 1] and returns logits; ``check`` validates a spec without loading it. A source that builds a registered
    architecture declares a keyword ``registries`` in ``load`` and ``check`` and is given the run's
    (:meth:`~robust_distill.core.manager.Registries.call`), never the process-global ones.

    :param registry: keyed by the prefix before the colon.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_student_sources(registry: Registry[StudentSource]) -> None:
    """Register student sources: :class:`~robust_distill.core.components.StudentSource` objects.

    ``source.build(name, input_shape=(C, H, W), num_classes=K, **options)`` returns a freshly initialised
    model taking [0, 1] inputs (normalisation, if any, inside the model).

    :param registry: keyed by the prefix before the colon of a student spec (``timm:resnet18_cifar``).
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_inner_attacks(registry: Registry[type[InnerAttack]]) -> None:
    """Register inner-attack generators: classes (or factories) of
    :class:`~robust_distill.core.components.InnerAttack`.

    An instance is created once per run with the config's ``inner_attack.kwargs``; then, every step,
    ``attack(step) -> x_adv`` crafts the training inputs (the inner maximisation). The threat model is
    ``step.threat``. Most attacks subclass :class:`~robust_distill.core.attacks.InnerPGD` and only write the
    objective.

    :param registry: keyed by the name used in ``inner_attack.key``.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_outer_losses(registry: Registry[type[OuterLoss]]) -> None:
    """Register outer losses: classes (or factories) of :class:`~robust_distill.core.components.OuterLoss`.

    Created once per run with ``outer_loss.kwargs`` (plus ``num_classes`` and the per-process ``batch_size``
    if the constructor declares them and the config does not set them);
    every step ``loss(step)`` returns the scalar the student minimises. Read model outputs through
    ``step.student_logits(...)`` and ``step.teacher_logits(...)`` so nothing is computed twice. Work that must
    happen before the inner attack (an official code's train-mode forward whose BN update the eval-mode
    attack sees) goes in ``before_attack(step)``, which the engine calls every step before the attack;
    ``step.student_forwards(sequence, needed)`` runs the student's forwards in an official code's number and
    order (BN running statistics).

    :param registry: keyed by the name used in ``outer_loss.key``.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_teacher_updaters(registry: Registry[type[TeacherUpdater]]) -> None:
    """Register teacher updaters: classes of :class:`~robust_distill.core.components.TeacherUpdater`.

    An updater decides whether and how teachers change during training: ``frozen`` (default) never
    changes them; others fine-tune a teacher on the student's adversarial examples (CIARD), train a peer
    jointly (PeerAiD) or make the student's own checkpoints the teacher (self-distillation).

    :param registry: keyed by the name used in ``teacher_updater.key``.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_eval_attacks(registry: Registry[Any]) -> None:
    """Register evaluation attacks: factories ``make(eps=..., **options) -> EvalAttack``.

    An :class:`~robust_distill.core.components.EvalAttack` is called as ``attack(model, x, y) -> x_adv`` with
    the model in eval mode. Used by per-epoch evaluation (``eval.attacks``) and ``robust-distill eval``.

    :param registry: keyed by attack name (``clean``, ``pgd20``, ``autoattack``, ...).
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_lr_schedules(registry: Registry[Any]) -> None:
    """Register learning-rate schedules: factories ``make(epochs=..., **options) -> LRSchedule``.

    A schedule maps the (fractional) epoch to a multiplier of the base learning rate.

    :param registry: keyed by the name used in ``optim.schedule.key``.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_methods(registry: Registry[Method]) -> None:
    """Register methods: :class:`~robust_distill.core.components.Method` objects.

    A method names its inner attack, outer loss, teacher updater and teacher roles, and carries its
    paper's defaults; ``method: <name>`` in a config selects it and any key can still be overridden.

    :param registry: keyed by ``method.name``.
    :returns: nothing; register into ``registry``.
    """


@hookspec
def rd_register_commands(commands: CommandRegistry) -> None:
    """Register sub-commands of the ``robust-distill`` command line (datasette's ``register_commands``).

    Declare a command with the :func:`robust_distill.cli.command` decorator (name, help, a function adding its
    arguments to an ``argparse`` parser) and register it: ``commands.register(cmd_export)``; or register a plain
    function with ``commands.register(fn, name=..., help=..., setup=...)``. The function receives the parsed
    ``argparse.Namespace`` and returns the exit code. The built-in commands (``train``, ``eval``, ...) are
    registered the same way by the core plugins ``cli.*``; a name registered twice is an error naming both
    plugins. Called when the command line starts, never during training.

    :param commands: the command registry (:class:`~robust_distill.cli.CommandRegistry`), keyed by command name.
    :returns: nothing; register into ``commands``.
    """


@hookspec
def rd_register_loggers(registry: Registry[type[Logger]]) -> None:
    """Register experiment trackers: classes (or factories) of :class:`~robust_distill.engine.tracking.Logger`.

    ``logging: [name, ...]`` in a config selects them; the engine creates them once per run on the main
    process (with the entry's ``kwargs``, plus ``output_dir`` if the constructor names it) and calls them at
    the run's lifecycle points (config, every ``log_every`` steps, every epoch, the final table and curves),
    never through pluggy inside the training loop. A logger whose library is missing says which extra to
    install from its ``check`` classmethod, when the config is validated.

    :param registry: keyed by the name used in ``logging``.
    :returns: nothing; register into ``registry``.
    """


# -------------------------------------------------------------------------------------------------
# Run lifecycle hooks: called by the engine a few times per run, never inside the step loop.
# -------------------------------------------------------------------------------------------------


@hookspec
def rd_run_start(run: RunContext) -> None:
    """Called once per run, after models, data and parts are built and before the first epoch.

    :param run: the run, as :class:`~robust_distill.core.context.RunContext` describes it (config, registries,
        student, teachers, device, dist, output folder, data, and ways to build models from specs).
    """


@hookspec
def rd_epoch_end(run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """Called after each epoch's evaluation, before the metrics row is written.

    :param run: the run.
    :param epoch: 0-based epoch that just ended.
    :param metrics: the metrics of this epoch so far (read-only).
    :returns: extra metrics to add to the row (``{name: number}``), or None. All plugins' results are added. A
        name the engine owns (``epoch``, ``lr``, ``is_best`` and any name starting with ``train_``,
        ``trainrec_``, ``time_``, ``val_`` or ``test_``: they select the best checkpoint and fill the reports)
        or one that another plugin already returned is an error naming the plugin.
    """


@hookspec
def rd_run_end(run: RunContext, summary: Mapping[str, Any]) -> None:
    """Called once when a run finishes (not when it crashes).

    :param run: the run.
    :param summary: best/last metrics and checkpoint paths, as written to ``summary.json``.
    """
