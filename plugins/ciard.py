"""CIARD (Lu et al., ICCV 2025, "CIARD: Cyclic Iterative Adversarial Robustness Distillation").

Official code: ``eminentgu/CIARD/CIARD.py`` + ``mtard_loss.py`` (``robust_inner_loss_push``), current HEAD
(255be6b, 2025-05-16); the original upload (ec8a38e, mirrored as ``CIARD2025/CIARD/CIARD_cifar10.py``)
differs only in the outer combination (``weighted`` below). Built on the B-MTARD code (``mtard.py``).

Teachers: a robust ``T_adv`` (role ``robust``, fine-tuned during training by ITT) and a clean ``T_nat``
(role ``natural``, frozen).

Inner: ``x' = argmax CE(S(x'), y)``, start ``x + 0.001 N(0,1)`` (not clipped), 10 steps of 2/255, eps 8/255,
student in eval mode; no teacher involved (``pgd_ce``).

Order inside a step, as the official loop: the student's clean forward ``S(x)`` runs in train mode *before* the
inner attack (``student_nat_logits = student(train_batch_data)``, then ``robust_inner_loss_push``), so the
eval-mode attack sees BN running statistics already updated with this batch, which changes ``x'`` (6-8% of
its pixels after warm-up, compared with attacking first). :meth:`CIARDLoss.before_attack` computes ``S(x)``
there (kept with its graph for ``KL2``); ``S(x')`` follows the attack.

Outer (RSLAD's ``kl_loss``, mean over B*C; B-MTARD's entropy-balanced temperatures on the teacher side):

* ``KL1 = KL(S(x') || T_adv(x')/tau_adv)``, ``KL2 = KL(S(x) || T_nat(x)/tau_nat)``;
* contrastive push: ``mask = argmax T_nat(x') != y`` (the clean teacher is wrong on the adversarial
  input), ``KL3 = KL(S(x')/5 || T_nat(x'))`` over the masked rows (mean over ``n_mask * C``),
  ``s = 10^(min(floor log10 KL1, floor log10 KL2) - floor log10 KL3)`` (a number: no gradient through s);
* ``L = KL1 + KL2 - s KL3`` (HEAD); ``weighted: true`` gives the original upload's
  ``w_adv KL1 + w_nat KL2 - s KL3`` with B-MTARD's normalised weights (computed, unused, at HEAD);
  ``push: false`` drops the push term (the ablation ``ciard_no_push``).
  An empty mask (or a non-finite KL3) gives ``KL3 = 0``.

Iterative Teacher Training (``ciard_itt``): from epoch 51 (1-based, ``epoch > 50``) on, after the student's
step, ``CE(T_adv(x'), y)`` on the student's adversarial examples trains the robust teacher with
``SGD(lr, momentum 0.1, wd 2e-4)`` every iteration, lr
``1e-4 (0.5 + 0.5 cos(pi (e - 50)/250)) exp(-0.01 (e - 50)^2 / 250^2)`` (1-based epoch e; 0 at e = 300).
The student's lr schedule ``ciard``: 0.1 until epoch 150, then ``0.1 (0.5 + 0.5 cos(pi (e - 150)/150))
exp(-0.01 (e - 150)^2/150^2)`` (per epoch, 1-based e, so the last epoch has lr 0 as in the official code).
Both schedules' epochs are options; values below 1 are fractions of the run (short runs scale them).
Defaults: 300 epochs, lr 0.1, momentum 0.9, wd 2e-4, batch 128, seed 0.

Deliberate differences from the official code, and the switches that reproduce it:

* Teacher mode. The official code puts the robust teacher in ``train()`` for the whole run: its KD
  targets ``T_adv(x')`` use BN batch statistics from step 1 and an unused ``T_adv(x)`` forward on the clean
  batch moves its running statistics at every step, also during epochs 1-50 when its lr is 0. We keep the
  teacher in ``eval()`` (a pretrained teacher's targets are its eval-mode outputs, as in MTARD/B-MTARD);
  ITT fine-tunes it with a separate train-mode forward on ``x'`` (standard fine-tuning: batch statistics,
  running statistics updated), so before ITT starts the teacher is exactly the pretrained one. Costs one
  extra teacher forward per ITT step. ``ciard_itt`` ``teacher_train_mode: true`` reproduces the official
  behaviour (train-mode targets, the clean forward, one shared forward for KD target and ITT).
* Rate decay. ``weight_learn_rate *= 0.1`` and ``temp_learn_rate *= 0.1`` sit inside the batch loop at epochs
  215/260/285, so both rates are ``0.1^391 = 0`` after epoch 215 (temperatures and weights freeze). We decay
  them once per milestone epoch, as B-MTARD does; ``outer_loss.kwargs.reproduce_in_batch_decay: true``
  reproduces the official decay (step i of epoch 215 uses ``0.1^i``).
* ``loss3_weight`` is undefined in the official code if the first batch has an empty mask (a NameError in
  its logging); here ``s`` is 0 (and logged as 0) whenever the mask is empty.
* Under ``torchrun``: the ITT teacher's gradients are averaged over the processes and its BN buffers
  broadcast from rank 0; the push term uses the global mask count (so its gradient equals the
  single-process one), and the weight/temperature statistics are averaged (see ``mtard.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill import Method, Part, Step, TeacherUpdater, hookimpl, training_defaults
from robust_distill.attacks import model_mode
from robust_distill.components import epochs_of
from robust_distill.distributed import all_reduce_sum, broadcast_buffers, clone_state, sync_gradients
from robust_distill.losses import kl_div
from robust_distill_plugins.mtard import KL_EPS, TwoTeacherLoss

__all__ = ["cos_exp", "ciard_schedule", "magnitude_scale", "CIARDLoss", "IterativeTeacherTraining", "CIARD",
           "CIARD_NO_PUSH"]


# -------------------------------------------------------------------------------------------------
# Schedules
# -------------------------------------------------------------------------------------------------


def cos_exp(e: float, start: float, end: float) -> float:
    """``(0.5 + 0.5 cos(pi (e - start)/(end - start))) exp(-0.01 (e - start)^2 / (end - start)^2)``.

    CIARD's decay shape (student lr from 150 to 300, teacher lr from 50 to 300); ``e`` is clipped to ``end``.
    """
    span = max(end - start, 1e-9)
    t = min(max(e - start, 0.0), span) / span
    return (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)


def ciard_schedule(epochs: int, start: float = 150, end: float | None = None) -> Callable[[float], float]:
    """CIARD's student lr: 1 until ``start``, then :func:`cos_exp` to 0 at ``end`` (default: the last epoch).

    Evaluated per epoch on the official 1-based epoch number ``e = floor(epoch) + 1`` (``lr = 0.1`` for
    ``e < 150``), so the last epoch of a 300-epoch run has lr 0, as in the official code.
    ``start``/``end`` below 1 are fractions of ``epochs``.
    """
    s = epochs_of(start, epochs)
    t_end = float(epochs) if end is None else epochs_of(end, epochs)

    def schedule(epoch: float) -> float:
        e = math.floor(epoch + 1e-9) + 1
        return 1.0 if e < s else cos_exp(e, s, t_end)
    return schedule


# -------------------------------------------------------------------------------------------------
# The outer loss
# -------------------------------------------------------------------------------------------------


def magnitude_scale(a: float, b: float, c: float) -> float:
    """CIARD's ``scale_to_magnitude``: ``10^(min(floor log10 |a|, floor log10 |b|) - floor log10 |c|)``
    (an exact zero is replaced by 1e-7, as ``math.isclose(v, 0, rel_tol=1e-9)`` does in the official code)."""
    a, b, c = (v + 1e-7 if v == 0 else v for v in (a, b, c))
    mag = lambda v: math.floor(math.log10(abs(v)))  # noqa: E731
    return 10.0 ** (min(mag(a), mag(b)) - mag(c))


class CIARDLoss(TwoTeacherLoss):
    """``KL1 + KL2 - s KL3`` (CIARD HEAD): two-teacher KD with B-MTARD temperatures and a contrastive push.

    :param push: include the push term ``- s KL(S(x')/push_temperature || T_nat(x'))`` on the samples the
        clean teacher gets wrong (``false``: the ablation without it).
    :param push_temperature: student temperature of the push term (5); the teacher's is 1.
    :param weighted: ``w_adv KL1 + w_nat KL2`` with B-MTARD's normalised weights (the original upload)
        instead of ``KL1 + KL2``.
    :param reproduce_in_batch_decay: decay eta/eta_tau by 0.1 at every step of a milestone epoch, as the
        official code does (rates ~0 after the first milestone); default: once per milestone.
    :param eta_milestones: epochs (1-based in the official code: ``epoch in [215, 260, 285]``; the decay
        then acts from the 0-based epoch 215 on) where eta and eta_tau decay x ``eta_gamma``.

    The remaining options are B-MTARD's (``mtard.MTARDLoss``): ``eta`` 0.025, ``eta_tau`` 0.001,
    ``tau_init`` 1, ``tau_min`` 1, ``tau_max`` 10, ``w_init`` 1/2.
    """

    def __init__(self, push: bool = True, push_temperature: float = 5.0, weighted: bool = False,
                 eta: float = 0.025, eta_tau: float = 0.001, tau_init: float = 1.0, tau_min: float = 1.0,
                 tau_max: float = 10.0, w_init: float = 0.5,
                 eta_milestones: list[float] | None = (215, 260, 285),  # type: ignore[assignment]
                 eta_gamma: float = 0.1, reproduce_in_batch_decay: bool = False) -> None:
        super().__init__(balance="bmtard", temperatures="entropy", eta=eta, eta_tau=eta_tau, tau_init=tau_init,
                         tau_min=tau_min, tau_max=tau_max, w_init=w_init,
                         eta_milestones=None if eta_milestones is None else list(eta_milestones),
                         eta_gamma=eta_gamma)
        self.push, self.push_temperature, self.weighted = push, push_temperature, weighted
        self.reproduce_in_batch_decay = reproduce_in_batch_decay

    def rate_factor(self, step: Step) -> float:
        if not self.reproduce_in_batch_decay or self.eta_milestones is None:
            return super().rate_factor(step)
        decays = 0
        for m in (round(epochs_of(v, step.epochs)) for v in self.eta_milestones):  # official 1-based epoch m
            if step.epoch > m - 1:
                decays += step.iterations
            elif step.epoch == m - 1:
                decays += step.iteration  # decayed after the update of each earlier step of this epoch
        return self.eta_gamma ** decays

    def before_attack(self, step: Step) -> None:
        """``S(x)`` in train mode before the eval-mode attack, as the official loop (the attack sees its BN update)."""
        step.student_logits("clean")

    def push_term(self, step: Step, kl_adv: float, kl_nat: float) -> tuple[Tensor | None, float, float]:
        """``(s * KL3 to subtract or None, KL3 value, s)``; KL3 averaged over the (global) masked rows."""
        t_nat_adv = step.teacher_logits("adv", "natural")
        mask = t_nat_adv.argmax(dim=1) != step.y
        s_adv = step.student_logits("adv")
        per_sample = kl_div(s_adv[mask], t_nat_adv[mask], reduction="none", temperature=self.push_temperature,
                            teacher_temperature=1.0, log_eps=KL_EPS)
        n_local, num_classes = int(mask.sum().item()), s_adv.shape[1]
        local_sum = per_sample.sum()
        n_total, sum_total = all_reduce_sum(float(n_local), local_sum.item())
        step.logs["push_frac"] = n_local / max(step.y.shape[0], 1)
        if n_total == 0 or not math.isfinite(sum_total):
            return None, 0.0, 0.0
        kl3 = sum_total / (n_total * num_classes)
        scale = magnitude_scale(kl_adv, kl_nat, kl3)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        # this process's share, so that DDP's gradient average equals the single-process gradient
        local = local_sum * (world / (n_total * num_classes))
        return scale * local, kl3, scale

    def __call__(self, step: Step) -> Tensor:
        kl_adv, kl_nat = self.kd_terms(step)
        self.update(step, kl_adv, kl_nat)
        if self.weighted:
            total = self.w_adv * kl_adv + self.w_nat * kl_nat
        else:
            total = kl_adv + kl_nat
        kl3, scale = 0.0, 0.0
        if self.push:
            term, kl3, scale = self.push_term(step, step.logs["kl_adv"], step.logs["kl_nat"])
            if term is not None:
                total = total - term
        step.logs.update(push=kl3, push_scale=scale)
        return total


# -------------------------------------------------------------------------------------------------
# Iterative Teacher Training
# -------------------------------------------------------------------------------------------------


class IterativeTeacherTraining(TeacherUpdater):
    """CIARD's ITT: fine-tune the robust teacher with ``CE(T_adv(x'), y)`` on the student's examples.

    Every iteration of the (0-based) epochs ``>= start_epoch`` (official: ``epoch > 50``, 1-based), after
    the student's optimizer step, with ``SGD(lr_t, momentum, weight_decay)`` and
    ``lr_t = lr * cos_exp(e, start_epoch, end_epoch)`` on the 1-based epoch ``e``.

    :param start_epoch: first epoch of ITT, 0-based (50); below 1: a fraction of the run.
    :param end_epoch: where the teacher lr reaches 0 (default: the last epoch, 300); below 1: a fraction.
    :param lr: base teacher lr (1e-4). :param momentum: (0.1). :param weight_decay: (2e-4).
    :param teacher_train_mode: reproduce the official code: the teacher stays in ``train()`` for the whole
        run (KD targets with BN batch statistics, an unused clean forward each step moving its running
        statistics) and ITT reuses the KD forward ``T_adv(x')``. Default: eval mode except in ITT's own
        train-mode forward.
    """

    role = "robust"

    def __init__(self, start_epoch: float = 50, end_epoch: float | None = None, lr: float = 1e-4,
                 momentum: float = 0.1, weight_decay: float = 2e-4, teacher_train_mode: bool = False) -> None:
        self.start_option, self.end_option = start_epoch, end_epoch  # (end_epoch would shadow the hook)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.teacher_train_mode = teacher_train_mode
        # the KD targets keep their graph only when ITT reuses them (the official single forward)
        self.grad_teachers = frozenset({self.role}) if teacher_train_mode else frozenset()
        self.teacher: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._start = self._end = 0.0

    def setup(self, run: Any) -> None:
        if self.role not in run.teachers:
            raise ValueError(f"ciard_itt trains the {self.role!r} teacher, but the run has only "
                             f"{sorted(run.teachers)}.")
        epochs = run.config.optim.epochs
        self._start = epochs_of(self.start_option, epochs)
        self._end = float(epochs) if self.end_option is None else epochs_of(self.end_option, epochs)
        self.teacher = run.teachers[self.role]
        self.teacher.requires_grad_(self.teacher_train_mode)
        self.teacher.train(self.teacher_train_mode)
        self.optimizer = torch.optim.SGD(self.teacher.parameters(), lr=self.lr, momentum=self.momentum,
                                         weight_decay=self.weight_decay)

    def active(self, epoch: int) -> bool:
        """ITT runs in this 0-based epoch (official: 1-based ``epoch > 50``)."""
        return epoch + 1 > self._start

    def teacher_lr(self, epoch: int) -> float:
        e = epoch + 1
        return 0.0 if e < self._start else self.lr * cos_exp(e, self._start, self._end)

    def before_step(self, step: Step) -> None:
        assert self.teacher is not None
        if self.teacher_train_mode:
            self.teacher.train()
            with torch.no_grad():  # the official unused T_adv(x): moves the BN running statistics
                self.teacher(step.x)
        elif self.teacher.training:
            self.teacher.eval()

    def after_step(self, step: Step) -> None:
        assert self.teacher is not None and self.optimizer is not None
        if not self.active(step.epoch):
            return
        lr = self.teacher_lr(step.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher_train_mode:
            logits = step.teacher_logits_graph("adv", self.role)
            loss = F.cross_entropy(logits.float(), step.y)
            loss.backward()
        else:
            with torch.enable_grad(), model_mode(self.teacher, True):
                self.teacher.requires_grad_(True)
                try:
                    loss = F.cross_entropy(self.teacher(step.x_adv), step.y)
                    loss.backward()
                finally:
                    self.teacher.requires_grad_(False)
        sync_gradients(self.teacher)
        self.optimizer.step()
        broadcast_buffers(self.teacher)
        self.optimizer.zero_grad(set_to_none=True)
        step.logs["itt_ce"] = loss.item()
        step.logs["itt_lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        assert self.teacher is not None and self.optimizer is not None
        return {"teacher": clone_state(self.teacher), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        assert self.teacher is not None and self.optimizer is not None
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])


# -------------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------------


_DEFAULTS = training_defaults(epochs=300, weight_decay=2e-4, schedule=Part("ciard", {"start": 150}), seed=0)
_INNER = Part("pgd_ce", {"start": "gaussian", "clamp_start": False, "bn_mode": "eval"})
_ITT = Part("ciard_itt", {"start_epoch": 50, "lr": 1e-4, "momentum": 0.1, "weight_decay": 2e-4})
_LOSS = {"push_temperature": 5.0, "weighted": False, "eta": 0.025, "eta_tau": 0.001,
         "eta_milestones": [215, 260, 285]}

CIARD = Method(
    name="ciard",
    inner_attack=_INNER,
    outer_loss=Part("ciard", {"push": True, **_LOSS}),
    teacher_updater=_ITT,
    teachers=("robust", "natural"),
    defaults=_DEFAULTS,
    summary="CIARD (Lu et al. 2025): B-MTARD temperatures, a push away from the clean teacher's errors, ITT",
    reference="Lu et al., ICCV 2025 (arXiv 2509.12633); eminentgu/CIARD/CIARD.py, mtard_loss.py (HEAD 255be6b)",
)

CIARD_NO_PUSH = Method(
    name="ciard_no_push",
    inner_attack=_INNER,
    outer_loss=Part("ciard", {"push": False, **_LOSS}),
    teacher_updater=_ITT,
    teachers=("robust", "natural"),
    defaults=_DEFAULTS,
    summary="CIARD without the contrastive push term (ablation): KL1 + KL2 with ITT",
    reference="Lu et al., ICCV 2025, ablation of the push loss; eminentgu/CIARD/CIARD.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(CIARDLoss, name="ciard")


@hookimpl
def rd_register_teacher_updaters(registry):
    registry.register(IterativeTeacherTraining, name="ciard_itt",
                      help="CIARD's Iterative Teacher Training of the robust teacher")


@hookimpl
def rd_register_lr_schedules(registry):
    registry.register(ciard_schedule, name="ciard", help="CIARD: constant until 150, then cos x exp to 0 at the end")


@hookimpl
def rd_register_methods(registry):
    registry.register(CIARD)
    registry.register(CIARD_NO_PUSH)
