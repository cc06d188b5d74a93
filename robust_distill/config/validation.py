"""Validation before any work: small named checkers, each appending the problems it finds (key path, value,
valid choices, did-you-mean), run in order by :func:`validate`. Validation builds the run without training it:
every part is constructed with its options, the lr schedule evaluated at every epoch, the student and teachers
built on the ``meta`` device.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robust_distill.config.schema import SEED_RANGE, Config, check_finite, convert
from robust_distill.core.components import DatasetInfo, Method, Part, split_spec
from robust_distill.core.preflight import (
    check_device,
    check_input_shape,
    check_output_dir,
    check_sync_bn,
    on_meta,
    path_kind,
)
from robust_distill.core.registry import UnknownNameError
from robust_distill.data.memory import dataset_info
from robust_distill.errors import RegistryError


def _check_kwargs(factory: Any, kwargs: Mapping[str, Any], path: str, problems: list[str],
                  provided: tuple[str, ...] = ()) -> None:
    """Check ``kwargs`` against the factory's signature: unknown names, Literal choices, basic types."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = inspect.Signature()
    params = {n: p for n, p in sig.parameters.items() if n not in provided
              and p.kind not in (p.VAR_POSITIONAL,)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        hints = {}
    for key, value in kwargs.items():
        if key not in params:
            valid = ", ".join(n for n in params) or "(none)"
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"{path}.{key}: not an option of {getattr(factory, '__name__', factory)}.{hint} "
                            f"Valid options: {valid}.")
            continue
        if key in hints and value is not None:
            convert(value, hints[key], f"{path}.{key}", problems)


def _check_part(registry: Any, part: Part, path: str, problems: list[str],
                provided: tuple[str, ...] = ()) -> None:
    try:
        factory = registry.get(part.key)
    except UnknownNameError as exc:
        problems.append(f"{path}.key: {exc}")
        return
    check_finite(part.kwargs, f"{path}.kwargs", problems)
    _check_kwargs(factory, part.kwargs, f"{path}.kwargs", problems, provided)


def _construct(registry: Any, part: Part, path: str, problems: list[str], **provided: Any) -> Any:
    """``registry.build(part.key, part.kwargs, **provided)`` as the engine calls it; a constructor that refuses
    its options is a problem naming the key, the part and the plugin and distribution that provide it."""
    try:
        return registry.build(part.key, part.kwargs, **provided)
    except Exception as exc:  # whatever it raises, train would raise the same in its first second
        entry = registry.entry(part.key)
        problems.append(f"{path}: the {registry.kind} {part.key!r} of {entry.describe_source()} refuses its "
                        f"options {dict(part.kwargs)}: {type(exc).__name__}: {exc}")
        return None


def _construct_parts(cfg: Config, regs: Any, info: DatasetInfo, problems: list[str]) -> None:
    """Build every part with its arguments as the run does (nothing is trained) and evaluate the learning-rate
    schedule at every epoch: what a constructor or the schedule would refuse in ``train``, is refused now."""
    _construct(regs.inner_attacks, cfg.inner_attack, "inner_attack", problems)
    _construct(regs.outer_losses, cfg.outer_loss, "outer_loss", problems, num_classes=info.num_classes,
               registries=regs, batch_size=cfg.data.batch_size)
    _construct(regs.teacher_updaters, cfg.teacher_updater, "teacher_updater", problems)
    schedule = _construct(regs.lr_schedules, cfg.optim.schedule, "optim.schedule", problems, epochs=cfg.optim.epochs)
    if schedule is not None:
        _check_schedule(schedule, cfg, problems)
    try:
        eps = cfg.eval_threat.eps
    except ValueError:  # eval.eps out of (0, 1]: reported by validate
        return
    for name in dict.fromkeys(n for n in (*cfg.eval.attacks, *cfg.eval.final_attacks) if n in regs.eval_attacks):
        _construct(regs.eval_attacks, Part(name), f"eval attack {name!r}", problems, eps=eps,
                   num_classes=info.num_classes)


def _check_schedule(schedule: Any, cfg: Config, problems: list[str]) -> None:
    """The schedule's multiplier at the start and middle of every epoch: a finite number >= 0."""
    for epoch in (e / 2 for e in range(2 * cfg.optim.epochs)):
        try:
            value = schedule(epoch)
            bad = (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                   or value < 0)
        except Exception as exc:
            problems.append(f"optim.schedule: {cfg.optim.schedule.key!r} fails at epoch {epoch:g}: "
                            f"{type(exc).__name__}: {exc}")
            return
        if bad:
            problems.append(f"optim.schedule: {cfg.optim.schedule.key!r} gives the lr multiplier {value!r} at epoch "
                            f"{epoch:g}; it must be a finite number >= 0.")
            return


@dataclass
class Validation:
    """What the checkers share: the config, the registries, the problems found so far, and what earlier checkers
    learnt (the method, the dataset's info, whether the parts' names and options are right)."""

    cfg: Config
    regs: Any
    problems: list[str]
    method: Method | None = None
    info: DatasetInfo | None = None
    parts_ok: bool = False


def check_option_values(v: Validation) -> None:
    """Options passed through to plugins (``data.options``, ``student.kwargs``, teachers' ``kwargs``) are finite."""
    cfg = v.cfg
    for path, options in (("data.options", cfg.data.options), ("student.kwargs", cfg.student.kwargs),
                          *((f"teachers.{role}.kwargs", t.kwargs) for role, t in cfg.teachers.items())):
        check_finite(options, path, v.problems)


def check_method(v: Validation) -> None:
    """``method`` is a registered method."""
    try:
        v.method = v.regs.methods.get(v.cfg.method)
    except UnknownNameError as exc:
        v.problems.append(f"method: {exc}")


def check_data(v: Validation) -> None:
    """``data``: a registered dataset, its options, its root folder, and its info read (image folders are read
    here: a bad file fails now); the loader's worker settings."""
    cfg, regs, problems = v.cfg, v.regs, v.problems
    try:
        dataset = regs.datasets.get(cfg.data.dataset)
        n_problems = len(problems)
        _check_kwargs(dataset.load, {**cfg.data.options}, "data.options", problems, provided=("root", "registries"))
        downloads = getattr(dataset, "downloads", False) and cfg.data.options.get("download", True)
        root_kind = None if cfg.data.root is None else path_kind(Path(cfg.data.root).expanduser())
        root_missing = root_kind is not None and not downloads and root_kind == "nothing"
        if root_missing:
            problems.append(f"data.root: folder {cfg.data.root!r} does not exist.")
        elif root_kind not in (None, "nothing", "a folder", "a file"):  # a dataset plugin may read one file
            problems.append(f"data.root: {cfg.data.root!r} is {root_kind}, not a folder or a file.")
        if len(problems) == n_problems + root_missing:
            try:
                v.info = dataset_info(dataset, cfg.data.root, cfg.data.options, regs)
            except (OSError, TypeError, ValueError) as exc:
                if not root_missing:
                    problems.append(f"data: {exc}")
    except UnknownNameError as exc:
        problems.append(f"data.dataset: {exc}")
    except (TypeError, ValueError) as exc:
        problems.append(f"data.options: {exc}")
    if cfg.data.workers is not None and cfg.data.workers < 0:
        problems.append(f"data.workers must be >= 0 (0: read files in the training process), got {cfg.data.workers}.")
    if cfg.data.prefetch_factor < 1:
        problems.append(f"data.prefetch_factor must be >= 1, got {cfg.data.prefetch_factor}.")


def check_parts(v: Validation) -> None:
    """The inner attack, outer loss, teacher updater and lr schedule: registered names, options they take."""
    cfg, regs, before = v.cfg, v.regs, len(v.problems)
    _check_part(regs.inner_attacks, cfg.inner_attack, "inner_attack", v.problems)
    _check_part(regs.outer_losses, cfg.outer_loss, "outer_loss", v.problems)
    _check_part(regs.teacher_updaters, cfg.teacher_updater, "teacher_updater", v.problems)
    _check_part(regs.lr_schedules, cfg.optim.schedule, "optim.schedule", v.problems, provided=("epochs",))
    v.parts_ok = len(v.problems) == before


def check_loggers(v: Validation) -> None:
    """``logging``: registered loggers, their options, and the libraries they need installed."""
    regs = v.regs
    for i, part in enumerate(v.cfg.logging):
        _check_part(regs.loggers, part, f"logging[{i}]", v.problems, provided=("output_dir",))
        check = getattr(regs.loggers.get(part.key), "check", None) if part.key in regs.loggers else None
        if check is not None:
            try:
                check(**part.kwargs)
            except (ImportError, TypeError, ValueError) as exc:
                v.problems.append(f"logging[{i}]: {exc}")


def check_evaluation(v: Validation) -> None:
    """``eval``: registered attacks, a selection among them, a split that exists, a radius in (0, 1]; the SWA
    start and the logging interval."""
    cfg, regs, problems = v.cfg, v.regs, v.problems
    for key in ("attacks", "final_attacks"):
        for name in getattr(cfg.eval, key):
            if name not in regs.eval_attacks:
                problems.append(f"eval.{key}: {UnknownNameError('eval attack', name, regs.eval_attacks.names())}")
    if cfg.eval.select not in cfg.eval.attacks:
        problems.append(f"eval.select: {cfg.eval.select!r} must be one of eval.attacks "
                        f"({', '.join(cfg.eval.attacks)}).")
    if cfg.eval.split == "val" and cfg.data.val_size <= 0:
        problems.append("eval.split: 'val' needs data.val_size > 0 (or set eval.split: test).")
    if cfg.eval.eps is not None and not 0 < cfg.eval.eps <= 1:
        problems.append(f"eval.eps must be in (0, 1]; got {cfg.eval.eps:g}.")
    if cfg.swa.start is not None and cfg.swa.start < 0:
        problems.append(f"swa.start must be a 0-based epoch (or a fraction of the run below 1), or null; "
                        f"got {cfg.swa.start:g}.")
    if cfg.optim.log_every < 1:
        problems.append(f"optim.log_every must be >= 1, got {cfg.optim.log_every}.")
    if not cfg.eval.attacks:
        problems.append("eval.attacks: empty; list at least the attack eval.select names, e.g. [clean, pgd20]. "
                        f"Registered eval attacks: {', '.join(regs.eval_attacks.names())}.")


def check_construction(v: Validation) -> None:
    """Every part constructed with its options and the lr schedule evaluated, once names and numbers are right."""
    if v.parts_ok and v.info is not None and not any(p.startswith(("optim.epochs", "data.batch_size"))
                                                     for p in v.problems):
        _construct_parts(v.cfg, v.regs, v.info, v.problems)


def check_machine(v: Validation) -> None:
    """The device (and SyncBatchNorm on it), a writable output folder, gradient clipping, the epochs to save."""
    cfg, problems = v.cfg, v.problems
    for key, problem in (("device", check_device(cfg.device)),
                         ("sync_bn", check_sync_bn(cfg.device) if cfg.sync_bn else None),
                         ("output_dir", check_output_dir(cfg.output_dir))):
        if problem:
            problems.append(f"{key}: {problem}")
    if cfg.optim.clip_grad_norm is not None and not cfg.optim.clip_grad_norm > 0:
        problems.append(f"optim.clip_grad_norm must be > 0 (or null for no clipping), got {cfg.optim.clip_grad_norm}.")
    bad = [e for e in cfg.save_epochs if not 1 <= e <= cfg.optim.epochs]
    if bad:
        problems.append(f"save_epochs: {bad} outside 1..{cfg.optim.epochs} (1-based epochs of this run).")


def check_student(v: Validation) -> None:
    """``student``: a registered source that knows the name, and the network built on ``meta`` for the data."""
    cfg, info = v.cfg, v.info
    source, name = split_spec(cfg.student.key)
    try:
        student_source = v.regs.student_sources.get(source)
        student_source.check(name, **cfg.student.kwargs)
    except UnknownNameError as exc:
        v.problems.append(f"student.key: {cfg.student.key!r} needs a source prefix: {exc}")
    except (TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        v.problems.append(f"student.key: {exc}")
    else:
        if info is not None and not cfg.student.kwargs.get("pretrained"):  # (a download: not a check's work)
            v.problems += _memo(("student", source), name, cfg.student.kwargs, info,
                                functools.partial(_student_shape_problems, student_source, name, cfg.student.kwargs,
                                                  info), v.regs)


def check_teacher_roles(v: Validation) -> None:
    """``teachers``: every role the method needs (unless the teacher updater makes it), none it does not use."""
    cfg, method = v.cfg, v.method
    if method is None:
        return
    updater_roles = ()
    try:
        updater_roles = tuple(getattr(v.regs.teacher_updaters.get(cfg.teacher_updater.key), "provides", ()))
    except UnknownNameError:
        pass
    for role in method.teachers:
        if role not in updater_roles and role not in cfg.teachers:
            v.problems.append(f"teachers.{role}: method {method.name!r} needs a {role!r} teacher, e.g. "
                              f"teachers: {{{role}: robustbench:Chen2021LTD_WRN34_10}}.")
    for role in cfg.teachers:
        if role in updater_roles:
            v.problems.append(f"teachers.{role}: teacher_updater {cfg.teacher_updater.key!r} creates the {role!r} "
                              f"teacher itself; remove teachers.{role} (or choose another teacher_updater).")
        elif role not in method.teachers:
            v.problems.append(f"teachers.{role}: method {method.name!r} does not use a {role!r} teacher "
                              f"(it uses: {', '.join(method.teachers) or 'none'}).")


def check_teachers(v: Validation) -> None:
    """Each teacher: a registered source, options its ``load`` takes, and the source's own check (the file read
    memory-mapped, the network built on ``meta`` for the data)."""
    regs, info = v.regs, v.info
    for role, teacher in v.cfg.teachers.items():
        source, name = split_spec(teacher.key)
        try:
            src = regs.teacher_sources.get(source)
        except UnknownNameError as exc:
            v.problems.append(f"teachers.{role}.key: {teacher.key!r}: {exc}")
            continue
        before = len(v.problems)
        _check_kwargs(src.load, teacher.kwargs, f"teachers.{role}.kwargs", v.problems,
                      provided=("name", "dataset", "registries"))
        if info is not None and len(v.problems) == before:
            check = functools.partial(_teacher_problems, src, name, teacher.kwargs, info, teacher.key, regs)
            found = _memo(("teacher", source), name, teacher.kwargs, info, check, regs)
            v.problems += [f"teachers.{role}.key: {p}" for p in found]


def _memo(kind: tuple[str, str], name: str, kwargs: Mapping[str, Any], info: DatasetInfo,
          check: Any, regs: Any) -> list[str]:
    """The problems ``check()`` finds, remembered for the same spec, dataset, files and registries (a grid
    validates many runs with the same teacher and student: each is read and built on ``meta`` once)."""
    stamps = []
    for value in (name, *kwargs.values()):
        if isinstance(value, str) and os.path.isfile(os.path.expanduser(value)):
            st = os.stat(os.path.expanduser(value))
            stamps.append((value, st.st_mtime_ns, st.st_size, st.st_ino))
    key = (kind, name, repr(sorted(kwargs.items())), repr(info), tuple(stamps), id(regs))
    if key not in _MEMO:
        if len(_MEMO) > 256:
            _MEMO.clear()
        _MEMO[key] = check()
    return list(_MEMO[key])


def _teacher_problems(src: Any, name: str, kwargs: Mapping[str, Any], info: DatasetInfo, key: str,
                      regs: Any) -> list[str]:
    try:
        regs.call(src.check, name, dataset=info, **kwargs)
    except (TypeError, ValueError, OSError, ImportError, RegistryError) as exc:
        return [str(exc)]
    except Exception as exc:  # the source's check itself failed: it would fail in train too
        return [f"checking {key!r} fails: {type(exc).__name__}: {exc}"]
    return []


def check_ranges(v: Validation) -> None:
    """Numbers that type-check but cannot work (a negative lr, more validation images than data, ...)."""
    cfg, info, problems = v.cfg, v.info, v.problems

    def at_least(key: str, value: Any, low: int, none_ok: bool = False) -> None:
        if (value is None and none_ok) or (isinstance(value, int) and value >= low):
            return
        problems.append(f"{key} must be {'null or ' if none_ok else ''}an integer >= {low}, got {value!r}.")

    o, d, e = cfg.optim, cfg.data, cfg.eval
    for key, seed in (("seed", cfg.seed), ("data.split_seed", d.split_seed)):
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            problems.append(f"{key} must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]} (numpy's seed range), "
                            f"got {seed}.")
    at_least("optim.epochs", o.epochs, 1)
    if not o.lr > 0:
        problems.append(f"optim.lr must be > 0, got {o.lr:g}.")
    if not 0 <= o.momentum < 1:
        problems.append(f"optim.momentum must be in [0, 1), got {o.momentum:g}.")
    if not o.weight_decay >= 0:
        problems.append(f"optim.weight_decay must be >= 0, got {o.weight_decay:g}.")
    if o.nesterov and o.momentum == 0:
        problems.append("optim.nesterov: Nesterov momentum needs optim.momentum > 0.")
    at_least("data.batch_size", d.batch_size, 1)
    at_least("data.eval_batch_size", d.eval_batch_size, 1)
    at_least("data.val_size", d.val_size, 0)
    at_least("data.train_subset", d.train_subset, 1, none_ok=True)
    if not 0 <= d.label_noise < 1:
        problems.append(f"data.label_noise must be in [0, 1) (the fraction of training labels replaced by another "
                        f"class), got {d.label_noise:g}.")
    if info is not None and info.train_size is not None and d.val_size >= info.train_size:
        problems.append(f"data.val_size={d.val_size} leaves no training data: {info.name} has {info.train_size} "
                        f"training images (data.val_size must be below {info.train_size}).")
    at_least("eval.every", e.every, 1)
    at_least("eval.n_examples", e.n_examples, 1, none_ok=True)
    at_least("eval.final_n_examples", e.final_n_examples, 1, none_ok=True)
    at_least("eval.train_records", e.train_records, 0)
    if isinstance(e.concurrency, int) and e.concurrency < 1:  # "auto" or an integer, type-checked already
        problems.append(f"eval.concurrency must be 'auto' or an integer >= 1 (AutoAttack chunks attacked at once, "
                        f"each by its own process), got {e.concurrency}.")


def _student_shape_problems(source: Any, name: str, kwargs: Mapping[str, Any], info: DatasetInfo) -> list[str]:
    """Build the student on the ``meta`` device (no memory) and run it on the data's input shape."""
    try:
        model = on_meta(lambda: source.build(name, input_shape=tuple(info.input_shape),
                                             num_classes=info.num_classes, **kwargs))
    except (TypeError, ValueError) as exc:  # an option the network does not take, or a bad value of one
        return [f"student.kwargs: {exc}"]
    except Exception as exc:  # the plugin fails to build it: it would in train too
        return [f"student.key: building {name!r} fails: {type(exc).__name__}: {exc}"]
    problem = check_input_shape(model, tuple(info.input_shape), info.num_classes) if model is not None else None
    return [f"student.key: {name!r} {problem}"] if problem else []


#: The checkers, in the order their problems are reported (later ones use what earlier ones learnt).
CHECKERS: tuple[Callable[[Validation], None], ...] = (
    check_option_values, check_method, check_data, check_parts, check_loggers, check_evaluation, check_ranges,
    check_construction, check_machine, check_student, check_teacher_roles, check_teachers)


def validate(cfg: Config, regs: Any, problems: list[str]) -> DatasetInfo | None:
    """Check plugin names, component options and files against the registries (:data:`CHECKERS`, in order);
    append every problem to ``problems``; return the dataset's info when it could be read."""
    v = Validation(cfg, regs, problems)
    for check in CHECKERS:
        check(v)
    return v.info


_MEMO: dict[tuple[Any, ...], list[str]] = {}
