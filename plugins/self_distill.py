"""Self-distillation teacher updaters: the teacher is a copy of the student itself.

The robust teacher of any single-teacher method (``rslad``, ``ard``, ``adaad``, ...) is replaced by an
earlier state of the student, with no ``teachers:`` entry in the config::

    method: rslad
    teacher_updater: {key: self_best, kwargs: {warmup_epochs: 5}}

* ``self_best``: the teacher is the student's best checkpoint so far (copied at the end of an epoch whose
  evaluation set ``is_best``; checkpoint selection follows ``eval.select``/``eval.split``);
* ``self_last``: the teacher is the student at the end of the previous epoch;
* ``self_ema``: the teacher is an exponential moving average of the student's weights, updated after
  every optimizer step (``decay``), its BN buffers copied from the student.

These are the "Self-Distill (Best/Last)" teachers of "Toward Understanding Adversarial Distillation: Why
Robust Teachers Fail" (ICML 2026, Sec. "Ablation: teacher type vs. student overfitting"): distilling from
the best (early, uncertain) checkpoint avoids robust overfitting, distilling from the last one does not.
That paper has no code; the EMA teacher is the usual weight-average teacher (mean teacher).

All three provide the role ``robust``. The teacher is frozen between updates (``eval()``, no parameter
requires grad), has the student's architecture and starts as a copy of the initial student, or from
``init`` (a robust-distill checkpoint or a plain state dict of the student's architecture).
``warmup_epochs`` keeps it fixed during the first epochs (``self_best`` still remembers the best
checkpoint seen during the warm-up and installs it when the warm-up ends). The teacher's weights are part
of the updater's state (``last.pt``), so a resumed run equals an uninterrupted one.

This module also holds the few helpers shared by the updaters that own teacher weights (``peeraid.py``,
``ciard.py``): state copies and gradient/buffer synchronisation under ``torchrun``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robust_distill import RunContext, Step, TeacherUpdater, build_from_checkpoint, clone_state, hookimpl

__all__ = ["SelfTeacher", "SelfBest", "SelfLast",
           "SelfEMA"]


# -------------------------------------------------------------------------------------------------
# Helpers for updaters that own teacher weights
# -------------------------------------------------------------------------------------------------


def _freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


# -------------------------------------------------------------------------------------------------
# The updaters
# -------------------------------------------------------------------------------------------------


class SelfTeacher(TeacherUpdater):
    """Base of the self-distillation updaters: builds the ``robust`` teacher from the student.

    :param init: a checkpoint to start the teacher from (default: a copy of the initial student).
    :param warmup_epochs: the teacher stays as initialised during the first ``warmup_epochs`` epochs.
    """

    provides = ("robust",)
    role = "robust"

    def __init__(self, init: str | None = None, warmup_epochs: int = 0) -> None:
        if init is not None and not Path(init).expanduser().is_file():
            raise FileNotFoundError(f"teacher_updater.kwargs.init: checkpoint {init!r} does not exist.")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.init, self.warmup_epochs = init, warmup_epochs
        self.teacher: nn.Module | None = None
        self.student: nn.Module | None = None

    def setup(self, run: RunContext) -> None:
        if self.role in run.teachers:
            raise ValueError(f"teacher_updater {type(self).__name__} builds the {self.role!r} teacher itself; "
                             f"remove teachers.{self.role} from the config.")
        self.student = run.student
        teacher = copy.deepcopy(run.student)
        if self.init is not None:
            cfg = run.config
            loaded, _ = build_from_checkpoint(Path(self.init).expanduser(), run.registries, dataset=run.data.info,
                                              arch={"key": cfg.student.key, "kwargs": dict(cfg.student.kwargs)})
            try:
                teacher.load_state_dict(loaded.state_dict())
            except RuntimeError as exc:
                raise ValueError(f"teacher_updater.kwargs.init: {self.init!r} does not fit the student's "
                                 f"architecture {cfg.student.key}: {exc}") from exc
        self.teacher = _freeze(teacher)
        run.teachers[self.role] = self.teacher

    def warm(self, epoch: int) -> bool:
        """True while the teacher must stay fixed (0-based ``epoch`` inside the warm-up)."""
        return epoch + 1 < self.warmup_epochs

    def copy_student(self) -> None:
        assert self.teacher is not None and self.student is not None
        self.teacher.load_state_dict(self.student.state_dict())

    def before_step(self, step: Step) -> None:
        assert self.teacher is not None
        if self.teacher.training:  # a part might have switched it; the teacher is always a frozen target
            self.teacher.eval()

    def state_dict(self) -> dict[str, Any]:
        assert self.teacher is not None
        return {"teacher": clone_state(self.teacher)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            assert self.teacher is not None
            self.teacher.load_state_dict(state["teacher"])


class SelfBest(SelfTeacher):
    """Teacher = the student's best checkpoint so far (``is_best`` of the epoch's evaluation)."""

    def __init__(self, init: str | None = None, warmup_epochs: int = 0) -> None:
        super().__init__(init=init, warmup_epochs=warmup_epochs)
        self.pending: dict[str, Tensor] | None = None  # best weights seen during the warm-up

    def end_epoch(self, run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> None:
        if metrics.get("is_best"):
            if self.warm(epoch):
                self.pending = clone_state(run.student)
            else:
                self.pending = None
                self.copy_student()
        elif self.pending is not None and not self.warm(epoch):
            assert self.teacher is not None
            self.teacher.load_state_dict(self.pending)
            self.pending = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pending": self.pending if self.pending is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if state:
            self.pending = dict(state["pending"]) or None


class SelfLast(SelfTeacher):
    """Teacher = the student at the end of the previous epoch."""

    def end_epoch(self, run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> None:
        if not self.warm(epoch):
            self.copy_student()


class SelfEMA(SelfTeacher):
    """Teacher = exponential moving average of the student's weights, ``t <- decay t + (1 - decay) s``.

    Updated after every optimizer step once the warm-up is over (from the teacher's initial weights);
    buffers (BN running statistics, ``num_batches_tracked``) are copied from the student.

    :param decay: EMA decay per step (0.999).
    """

    def __init__(self, decay: float = 0.999, init: str | None = None, warmup_epochs: int = 0) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        super().__init__(init=init, warmup_epochs=warmup_epochs)
        self.decay = decay

    def after_step(self, step: Step) -> None:
        if step.epoch < self.warmup_epochs:
            return
        assert self.teacher is not None and self.student is not None
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
                t.lerp_(s.detach(), 1.0 - self.decay)
            for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
                t.copy_(s)


@hookimpl
def rd_register_teacher_updaters(registry):
    registry.register(SelfBest, name="self_best", help="self-distillation: teacher = best student checkpoint")
    registry.register(SelfLast, name="self_last", help="self-distillation: teacher = student of the last epoch")
    registry.register(SelfEMA, name="self_ema", help="self-distillation: teacher = EMA of the student weights")
