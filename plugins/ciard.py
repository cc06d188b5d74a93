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
* ``outer_loss.kwargs.kl_reduction: batchmean`` (the paper's per-sample KLs) divides KL1 and KL2 by B and KL3
  by ``n_mask`` instead of ``B*C`` and ``n_mask * C``: each term x C. ``s`` is unchanged when C is a power of
  10 (every ``floor log10`` moves by ``log10 C``), so on CIFAR-10/100 the whole loss is x C; with another C,
  ``s`` may move by a factor 10.

Iterative Teacher Training (``ciard_itt``, in ``ciard_itt.py``): from epoch 51 (1-based, ``epoch > 50``) on,
after the student's step, ``CE(T_adv(x'), y)`` on the student's adversarial examples trains the robust teacher with
``SGD(lr, momentum 0.1, wd 2e-4)`` every iteration, lr
``1e-4 (0.5 + 0.5 cos(pi (e - 50)/250)) exp(-0.01 (e - 50)^2 / 250^2)`` (1-based epoch e; 0 at e = 300).
The student's lr schedule ``ciard``: 0.1 until epoch 150, then ``0.1 (0.5 + 0.5 cos(pi (e - 150)/150))
exp(-0.01 (e - 150)^2/150^2)`` (per epoch, 1-based e, so the last epoch has lr 0 as in the official code).
Both schedules' epochs are options; values below 1 are fractions of the run (short runs scale them).
Defaults: 300 epochs, lr 0.1, momentum 0.9, wd 2e-4, batch 128, seed 0.

The paper's variant (method ``ciard_paper``; options of ``ciard`` and ``ciard_itt``, all defaulting to the code).
Our material on the paper is a summary (``shared/papers/ciard_iccv2025_summary.md``), which differs from the
code in three places; each is an option, the code is the default:

* ``L = KL(S, T_adv on x') + push_loss + CE(S, y)``: ``outer_loss.kwargs.ce_weight`` adds ``ce_weight
  CE(S(x'), y)`` (batch mean, whatever ``kl_reduction``; official 0: the code has no CE term). ``push_loss``
  is read as the code's ``- s KL3`` (the student is pushed *away* from the wrong clean teacher).
* "Push loss weight is adaptively adjusted based on robustness metrics on the validation set" (rule not given;
  the same summary also says the weight "requires manual tuning", hence a fixed alternative):
  ``push_weight`` multiplies the push term, ``L = ... - lambda s KL3``: a number (official 1: the code's
  magnitude-matched ``s KL3``) or ``adaptive``, the project's rule (:func:`adaptive_push_weight`):
  ``lambda_0 = push_weight_init`` (1); after each epoch with an evaluation, with ``a_k`` its
  ``push_metric`` (default: the run's model-selection metric ``<eval.split>_<eval.select>``, the validation
  PGD-20 accuracy by default) and ``a_{k-1}`` the previous evaluation's, ``lambda <- min(lambda f, lambda_max)``
  if ``a_k > a_{k-1}`` else ``max(lambda / f, lambda_min)`` (first evaluation: unchanged); ``f =
  push_weight_factor`` (1.5), ``[lambda_min, lambda_max] = [push_weight_min, push_weight_max]`` ([0.25, 4]).
  The new lambda acts from the next epoch on; lambda and ``a_{k-1}`` are checkpointed. It reads the epoch's
  metrics through :meth:`OuterLoss.end_epoch`, which the engine calls after every epoch.
* ITT "typically every 10 epochs" after a frozen warm-up: ``teacher_updater.kwargs.period`` (official 1) and
  ``retrain_steps`` (``ciard_itt.py``).

The summary's loss has no ``KL(S(x) || T_nat(x))`` term, but it also says the clean teacher's knowledge is
transmitted ("decouples the transmission pathways of clean knowledge and robust knowledge") and both code
versions have it: ``ciard_paper`` keeps it; ``outer_loss.kwargs.natural_weight: 0`` (official 1) gives the
summary's formula word for word. ``ciard_paper`` = ``ciard`` + ``ce_weight: 1`` (the summary's unit weight),
``push_weight: adaptive``, ``period: 10``; its warm-up (50 epochs), ITT lr schedule, retraining (one step per
student step, a whole epoch), the adaptive rule's constants and ``natural_weight: 1`` are the project's choices
where the summary is silent (the code's values where it has one).

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
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

from robust_distill import (
    KLReduction,
    Method,
    Part,
    RunContext,
    Step,
    epochs_of,
    global_mean,
    hookimpl,
    kl_div,
    kl_divisor,
    training_defaults,
)
from robust_distill_plugins.inner_attacks import MTARD_PGD
from robust_distill_plugins.schedules import ciard_schedule, cos_exp
from robust_distill_plugins.two_teacher import KL_EPS, TwoTeacherLoss

__all__ = ["cos_exp", "ciard_schedule", "magnitude_scale", "adaptive_push_weight", "CIARDLoss", "CIARD",
           "CIARD_NO_PUSH", "CIARD_PAPER"]


# -------------------------------------------------------------------------------------------------
# The outer loss
# -------------------------------------------------------------------------------------------------


def magnitude_scale(a: float, b: float, c: float) -> float:
    """CIARD's ``scale_to_magnitude``: ``10^(min(floor log10 |a|, floor log10 |b|) - floor log10 |c|)``
    (an exact zero is replaced by 1e-7, as ``math.isclose(v, 0, rel_tol=1e-9)`` does in the official code)."""
    a, b, c = (v + 1e-7 if v == 0 else v for v in (a, b, c))
    mag = lambda v: math.floor(math.log10(abs(v)))  # noqa: E731
    return 10.0 ** (min(mag(a), mag(b)) - mag(c))


def adaptive_push_weight(weight: float, previous: float | None, current: float, factor: float, low: float,
                         high: float) -> float:
    """The project's rule for the paper's validation-adaptive push weight (the paper gives none): ``weight x
    factor`` (at most ``high``) if the validation metric improved on the previous evaluation's, else ``weight /
    factor`` (at least ``low``); unchanged at the first evaluation (``previous`` None)."""
    if previous is None:
        return weight
    return min(weight * factor, high) if current > previous else max(weight / factor, low)


class CIARDLoss(TwoTeacherLoss):
    """``KL1 + KL2 - s KL3`` (CIARD HEAD): two-teacher KD with B-MTARD temperatures and a contrastive push;
    with the paper's options ``KL1 + natural_weight KL2 - lambda s KL3 + ce_weight CE(S(x'), y)``.

    :param push: include the push term ``- s KL(S(x')/push_temperature || T_nat(x'))`` on the samples the
        clean teacher gets wrong (``false``: the ablation without it).
    :param push_temperature: student temperature of the push term (5); the teacher's is 1.
    :param weighted: ``w_adv KL1 + w_nat KL2`` with B-MTARD's normalised weights (the original upload)
        instead of ``KL1 + KL2``.
    :param reproduce_in_batch_decay: decay eta/eta_tau by 0.1 at every step of a milestone epoch, as the
        official code does (rates ~0 after the first milestone); default: once per milestone.
    :param eta_milestones: epochs (1-based in the official code: ``epoch in [215, 260, 285]``; the decay
        then acts from the 0-based epoch 215 on) where eta and eta_tau decay x ``eta_gamma``.
    :param kl_reduction: ``mean`` (the official ``kl_loss(...).mean()``: KL1, KL2 over B*C, KL3 over
        ``n_mask * C``) or ``batchmean`` (over B and ``n_mask``: each term x C).
    :param ce_weight: weight of the paper's ``CE(S(x'), y)`` (official 0: none).
    :param natural_weight: factor of ``KL2`` (official 1; 0: the paper summary's formula without it).
    :param push_weight: lambda, the push term's factor: a number (official 1) or ``adaptive`` (the module
        docstring's rule, :func:`adaptive_push_weight`, from ``push_weight_init`` (1) by ``push_weight_factor``
        (1.5) within [``push_weight_min``, ``push_weight_max``] ([0.25, 4]) on ``push_metric`` (null: the run's
        ``<eval.split>_<eval.select>``)).

    The remaining options are B-MTARD's (``mtard.MTARDLoss``): ``eta`` 0.025, ``eta_tau`` 0.001,
    ``tau_init`` 1, ``tau_min`` 1, ``tau_max`` 10, ``w_init`` 1/2.
    """

    def __init__(self, push: bool = True, push_temperature: float = 5.0, weighted: bool = False,
                 eta: float = 0.025, eta_tau: float = 0.001, tau_init: float = 1.0, tau_min: float = 1.0,
                 tau_max: float = 10.0, w_init: float = 0.5,
                 eta_milestones: list[float] | None = (215, 260, 285),  # type: ignore[assignment]
                 eta_gamma: float = 0.1, reproduce_in_batch_decay: bool = False,
                 kl_reduction: KLReduction = "mean", ce_weight: float = 0.0, natural_weight: float = 1.0,
                 push_weight: float | Literal["adaptive"] = 1.0, push_weight_init: float = 1.0,
                 push_weight_factor: float = 1.5, push_weight_min: float = 0.25, push_weight_max: float = 4.0,
                 push_metric: str | None = None) -> None:
        super().__init__(balance="bmtard", temperatures="entropy", eta=eta, eta_tau=eta_tau, tau_init=tau_init,
                         tau_min=tau_min, tau_max=tau_max, w_init=w_init,
                         eta_milestones=None if eta_milestones is None else list(eta_milestones),
                         eta_gamma=eta_gamma, kl_reduction=kl_reduction)
        self.push, self.push_temperature, self.weighted = push, push_temperature, weighted
        self.reproduce_in_batch_decay = reproduce_in_batch_decay
        self.ce_weight, self.natural_weight = float(ce_weight), float(natural_weight)
        self.adaptive = push_weight == "adaptive"
        if not self.adaptive and (isinstance(push_weight, (str, bool)) or not isinstance(push_weight, (int, float))):
            raise ValueError(f"ciard: push_weight must be a number or 'adaptive', got {push_weight!r}")
        if self.adaptive and not (push_weight_factor >= 1 and 0 <= push_weight_min <= push_weight_init
                                  <= push_weight_max):
            raise ValueError(f"ciard: the adaptive push weight needs push_weight_factor >= 1 and 0 <= "
                             f"push_weight_min <= push_weight_init <= push_weight_max, got {push_weight_factor}, "
                             f"{push_weight_min} <= {push_weight_init} <= {push_weight_max}")
        self.push_lambda = float(push_weight_init if self.adaptive else push_weight)  # type: ignore[arg-type]
        self.push_factor, self.push_bounds = float(push_weight_factor), (float(push_weight_min),
                                                                          float(push_weight_max))
        self.push_metric = push_metric
        self.push_previous: float | None = None  # the metric at the previous evaluation
        if self.adaptive:  # (the official loss's checkpoint state is unchanged)
            self.state_attributes = (*TwoTeacherLoss.state_attributes, "push_lambda", "push_previous")

    def end_epoch(self, run: RunContext, epoch: int, metrics: Mapping[str, Any]) -> None:
        """The adaptive push weight's update after an epoch with an evaluation (the module docstring's rule)."""
        if not self.adaptive:
            return
        key = self.push_metric or f"{run.config.eval.split}_{run.config.eval.select}"
        if key not in metrics:
            if "is_best" in metrics:  # an evaluation without the metric
                raise ValueError(f"ciard: push_metric {key!r} is not among the metrics of epoch {epoch + 1} "
                                 f"({', '.join(sorted(metrics))}); set outer_loss.kwargs.push_metric to one of them")
            return  # no evaluation in this epoch (eval.every)
        current = float(metrics[key])
        self.push_lambda = adaptive_push_weight(self.push_lambda, self.push_previous, current, self.push_factor,
                                                *self.push_bounds)
        self.push_previous = current

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
        """``(s * KL3 to subtract or None, KL3 value, s)``; KL3 reduced over the (global) masked rows."""
        t_nat_adv = step.teacher_logits("adv", "natural")
        mask = t_nat_adv.argmax(dim=1) != step.y
        s_adv = step.student_logits("adv")
        rows = kl_div(s_adv[mask], t_nat_adv[mask], reduction="none", temperature=self.push_temperature,
                      teacher_temperature=1.0, log_eps=KL_EPS)
        n_local = int(mask.sum().item())
        # kl_reduction over the masked rows: mean over n_mask * C elements, or batchmean over n_mask rows
        share, kl3, _ = global_mean(rows.sum(), kl_divisor(self.kl_reduction, n_local, s_adv.shape[1]))
        step.logs["push_frac"] = n_local / max(step.y.shape[0], 1)
        if not math.isfinite(kl3):  # no masked row on any process, or a non-finite KL3
            return None, 0.0, 0.0
        scale = magnitude_scale(kl_adv, kl_nat, kl3)
        return scale * share, kl3, scale

    def __call__(self, step: Step) -> Tensor:
        kl_adv, kl_nat = self.kd_terms(step)
        self.update(step, kl_adv, kl_nat)
        if self.natural_weight != 1.0:
            kl_nat = self.natural_weight * kl_nat
        if self.weighted:
            total = self.w_adv * kl_adv + self.w_nat * kl_nat
        else:
            total = kl_adv + kl_nat
        kl3, scale = 0.0, 0.0
        if self.push:
            term, kl3, scale = self.push_term(step, step.logs["kl_adv"], step.logs["kl_nat"])
            if term is not None:
                total = total - (term if self.push_lambda == 1.0 else self.push_lambda * term)
        step.logs.update(push=kl3, push_scale=scale)
        if self.adaptive or self.push_lambda != 1.0:
            step.logs["push_weight"] = self.push_lambda
        if self.ce_weight:
            ce = F.cross_entropy(step.student_logits("adv").float(), step.y)
            total = total + self.ce_weight * ce
            step.logs["ce"] = ce.detach()
        return total


# -------------------------------------------------------------------------------------------------
# Methods
# -------------------------------------------------------------------------------------------------


CIARD = Method(
    name="ciard",
    inner_attack=MTARD_PGD,
    outer_loss=Part("ciard", {"push": True, "push_temperature": 5.0, "weighted": False, "eta": 0.025,
                              "eta_tau": 0.001, "eta_milestones": [215, 260, 285]}),
    teacher_updater=Part("ciard_itt", {"start_epoch": 50, "lr": 1e-4, "momentum": 0.1, "weight_decay": 2e-4}),
    teachers=("robust", "natural"),
    defaults=training_defaults(epochs=300, weight_decay=2e-4, schedule=Part("ciard", {"start": 150}), seed=0),
    summary="CIARD (Lu et al. 2025): B-MTARD temperatures, a push away from the clean teacher's errors, ITT",
    reference="Lu et al., ICCV 2025 (arXiv 2509.12633); eminentgu/CIARD/CIARD.py, mtard_loss.py (HEAD 255be6b)",
)

#: the ablation without the push term: CIARD with ``outer_loss.kwargs.push: false``, nothing else changed
CIARD_NO_PUSH = replace(
    CIARD,
    name="ciard_no_push",
    outer_loss=Part("ciard", {**CIARD.outer_loss.kwargs, "push": False}),
    summary="CIARD without the contrastive push term (ablation): KL1 + KL2 with ITT",
    reference="Lu et al., ICCV 2025, ablation of the push loss; eminentgu/CIARD/CIARD.py",
)


#: CIARD as the paper describes it (our summary of it, ``ciard_iccv2025_summary.md``), beside the code's ``ciard``.
#: From the paper: the CE(S(x'), y) term (unit weight), a push weight adapted to validation robustness, ITT every
#: 10 epochs after a warm-up with the teachers frozen. The project's choices where the summary is silent: the
#: adaptive rule and its constants (module docstring), one retraining = one ITT step per student step over a whole
#: epoch, the code's warm-up (50 epochs), ITT optimizer and lr schedule, KL2 kept (``natural_weight: 1``), the
#: code's magnitude scale s of the push, B-MTARD temperatures, 1:1 KL weights and training set-up. Differences from
#: the code: the CE term (none there), lambda != 1 (1 there), ITT in 1 epoch of 10 (every iteration there).
CIARD_PAPER = replace(
    CIARD,
    name="ciard_paper",
    outer_loss=Part("ciard", {**CIARD.outer_loss.kwargs, "ce_weight": 1.0, "push_weight": "adaptive"}),
    teacher_updater=Part("ciard_itt", {**CIARD.teacher_updater.kwargs, "period": 10}),
    summary="CIARD as its paper describes it: + CE(S(x'), y), validation-adaptive push weight, ITT every 10 epochs",
    reference="Lu et al., ICCV 2025 (arXiv 2509.12633), as summarised in ciard_iccv2025_summary.md; "
              "built on eminentgu/CIARD/CIARD.py (HEAD 255be6b)",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(CIARDLoss, name="ciard")


@hookimpl
def rd_register_methods(registry):
    registry.register(CIARD)
    registry.register(CIARD_NO_PUSH)
    registry.register(CIARD_PAPER)
