"""CIARD's Iterative Teacher Training (Lu et al., ICCV 2025; ``eminentgu/CIARD/CIARD.py``): the teacher
updater ``ciard_itt``, which fine-tunes the robust teacher on the student's adversarial examples.

From epoch 51 (1-based, ``epoch > 50``) on, after the student's step, ``CE(T_adv(x'), y)`` on the student's
adversarial examples trains the robust teacher with ``SGD(lr, momentum 0.1, wd 2e-4)`` every iteration, lr
``1e-4 (0.5 + 0.5 cos(pi (e - 50)/250)) exp(-0.01 (e - 50)^2 / 250^2)`` (1-based epoch e; 0 at e = 300).
The CIARD methods (``ciard.py``) use it; it works with any method that has a ``robust`` teacher.

The paper's periodic ITT (``period``, ``retrain_steps``; the ``ciard_paper`` method). The paper (Lu et al., ICCV
2025, its "Iterative Teacher Training", as our summary ``ciard_iccv2025_summary.md`` gives it) describes a
warm-up with both teachers frozen, then the robust teacher "periodically retrained" on the current student's
adversarial examples, "typically every 10 epochs", alternating like a GAN's discriminator and generator; the
official code instead trains it at every iteration from the warm-up's end (``period: 1``, the default). The
summary does not say what one retraining is; the project's choice: in a *retraining epoch* (the first ITT epoch
and every ``period``-th one after it) the teacher takes one ITT step (the same CE, SGD and cos-exp lr as above)
after each of the first ``retrain_steps`` student steps (``null``: all of them, one pass over that epoch's
adversarial examples); in the other epochs it is left exactly as it is (weights and BN statistics; with
``teacher_train_mode`` the official train-mode forwards still move its BN statistics every step). The SGD
momentum buffer carries over from one retraining epoch to the next. This reuses
the adversarial examples the student's own step crafted (no extra attack), so a retraining costs what an
official ITT epoch costs.

Teacher mode, a deliberate difference: the official code keeps the robust teacher in ``train()`` for the
whole run (KD targets with BN batch statistics; an unused ``T_adv(x)`` forward moves its running
statistics every step, also while its lr is 0). Here the teacher stays in ``eval()`` (a pretrained
teacher's targets are its eval-mode outputs, as in MTARD/B-MTARD) and ITT fine-tunes it with a separate
train-mode forward on ``x'``, so before ITT starts the teacher is exactly the pretrained one (one extra
teacher forward per ITT step). ``teacher_train_mode: true`` reproduces the official behaviour. Under
``torchrun``, fp16 AMP and resume the teacher is a :class:`~robust_distill.engine.trained.TrainedModel`; its own
forward runs in the run's ``optim.precision`` (a bf16 run fine-tunes it under bf16 autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robust_distill import RunContext, Step, TrainedModel, TrainedTeacher, epochs_of, hookimpl
from robust_distill_plugins.schedules import cos_exp

__all__ = ["IterativeTeacherTraining"]


class IterativeTeacherTraining(TrainedTeacher):
    """CIARD's ITT: fine-tune the robust teacher with ``CE(T_adv(x'), y)`` on the student's examples.

    Every iteration of the (0-based) epochs ``>= start_epoch`` (official: ``epoch > 50``, 1-based), after
    the student's optimizer step, with ``SGD(lr_t, momentum, weight_decay)`` and
    ``lr_t = lr * cos_exp(e, start_epoch, end_epoch)`` on the 1-based epoch ``e``; the teacher is a
    :class:`~robust_distill.engine.trained.TrainedModel` (DDP gradient average, AMP scaling, resume state).

    :param start_epoch: first epoch of ITT, 0-based (50); below 1: a fraction of the run.
    :param end_epoch: where the teacher lr reaches 0 (default: the last epoch, 300); below 1: a fraction.
    :param lr: base teacher lr (1e-4). :param momentum: (0.1). :param weight_decay: (2e-4).
    :param period: epochs between retraining epochs, the first ITT epoch being one (1: every epoch, the
        official code; the paper: "typically every 10 epochs").
    :param retrain_steps: ITT steps in a retraining epoch, after the first ``retrain_steps`` student steps
        (``null``: every step of the epoch, the official code).
    :param teacher_train_mode: reproduce the official code: the teacher stays in ``train()`` for the whole
        run (KD targets with BN batch statistics, an unused clean forward each step moving its running
        statistics) and ITT reuses the KD forward ``T_adv(x')``. Default: eval mode except in ITT's own
        train-mode forward.
    """

    role = "robust"

    def __init__(self, start_epoch: float = 50, end_epoch: float | None = None, lr: float = 1e-4,
                 momentum: float = 0.1, weight_decay: float = 2e-4, teacher_train_mode: bool = False,
                 period: int = 1, retrain_steps: int | None = None) -> None:
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"ciard_itt: period must be a whole number of epochs >= 1 (1: every epoch, the "
                             f"official code), got {period!r}")
        if retrain_steps is not None and (isinstance(retrain_steps, bool) or not isinstance(retrain_steps, int)
                                          or retrain_steps < 1):
            raise ValueError(f"ciard_itt: retrain_steps must be a number of steps >= 1, or null (every step of a "
                             f"retraining epoch), got {retrain_steps!r}")
        self.start_option, self.end_option = start_epoch, end_epoch  # (end_epoch would shadow the hook)
        self.period, self.retrain_steps = period, retrain_steps
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.teacher_train_mode = teacher_train_mode
        # the KD targets keep their graph only when ITT reuses them (the official single forward)
        self.grad_teachers = frozenset({self.role}) if teacher_train_mode else frozenset()
        self.trained: TrainedModel | None = None
        self._start = self._end = 0.0

    def constant_teachers(self, roles: frozenset[str]) -> frozenset[str]:
        return roles - {self.role}  # the clean teacher stays as loaded

    def setup(self, run: RunContext) -> None:
        if self.role not in run.teachers:
            raise ValueError(f"ciard_itt trains the {self.role!r} teacher, but the run has only "
                             f"{sorted(run.teachers)}.")
        epochs = run.config.optim.epochs
        self._start = epochs_of(self.start_option, epochs)
        self._end = float(epochs) if self.end_option is None else epochs_of(self.end_option, epochs)
        teacher = run.teachers[self.role].requires_grad_(self.teacher_train_mode).train(self.teacher_train_mode)
        self.trained = TrainedModel(teacher, name="teacher", lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay, scaler=getattr(run, "scaler", None),
                                    precision=getattr(run.config.optim, "precision", "fp32"))

    def active(self, epoch: int) -> bool:
        """ITT has started in this 0-based epoch (official: 1-based ``epoch > 50``)."""
        return epoch + 1 > self._start

    def retraining(self, epoch: int) -> bool:
        """The teacher trains in this 0-based epoch: ITT has started and the epoch is the first ITT epoch
        (``floor(start_epoch)``) plus a multiple of ``period`` (every ITT epoch with ``period: 1``)."""
        return self.active(epoch) and (epoch - max(0, math.floor(self._start))) % self.period == 0

    def teacher_lr(self, epoch: int) -> float:
        e = epoch + 1
        return 0.0 if e < self._start else self.lr * cos_exp(e, self._start, self._end)

    def before_step(self, step: Step) -> None:
        assert self.trained is not None
        teacher = self.trained.model
        if self.teacher_train_mode:
            teacher.train()
            with torch.no_grad():  # the official unused T_adv(x): moves the BN running statistics
                teacher(step.x)
        elif teacher.training:
            teacher.eval()

    def after_step(self, step: Step) -> None:
        assert self.trained is not None
        if not self.retraining(step.epoch):
            return
        if self.retrain_steps is not None and step.iteration >= self.retrain_steps:
            return
        self.trained.set_lr(self.teacher_lr(step.epoch))
        if self.teacher_train_mode:  # the official single forward: ITT reuses the KD target T_adv(x')
            loss = F.cross_entropy(step.teacher_logits_graph("adv", self.role).float(), step.y)
            self.trained.own_step(loss)
        else:  # a train-mode forward of its own on x'
            loss = self.trained.train_on(lambda teacher: F.cross_entropy(teacher(step.x_adv).float(), step.y))
        step.logs.update(itt_ce=loss.detach(), itt_lr=self.trained.lr)


@hookimpl
def rd_register_teacher_updaters(registry):
    registry.register(IterativeTeacherTraining, name="ciard_itt",
                      help="CIARD's Iterative Teacher Training of the robust teacher")
