"""MTARD (Zhao et al., ECCV 2022, "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial
Distillation") and B-MTARD (Zhao et al., TPAMI 2024, "Mitigating Accuracy-Robustness Trade-off via Balanced
Multi-Teacher Adversarial Distillation", arXiv 2306.16170).

Official code: ``zhaoshiji123/MTARD/mtard/mtard_resnet18_cifar10.py`` + ``mtard_loss.py``
(``mtard_inner_loss_ce``) and ``zhaoshiji123/MTARD-extension/resnet18_mtard_cifar10.py`` (B-MTARD).

Two teachers: a robust one ``T_adv`` (role ``robust``) and a clean one ``T_nat`` (role ``natural``).

Inner: ``x' = argmax CE(S(x'), y)``, start ``x + 0.001 N(0,1)`` (not clipped), 10 steps of 2/255, eps 8/255,
student in eval mode (``pgd_ce`` with ``start: gaussian``).

Outer, with RSLAD's ``kl_loss`` (``p_T (log(p_T + 1e-5) - log p_S)`` averaged over B*C):
``L = w_adv KL(S(x') || T_adv(x')/tau_adv) + w_nat KL(S(x) || T_nat(x)/tau_nat)`` (student temperature 1).

* MTARD (``balance: mtard``, tau = 1): ``L_k0`` = the two KL values at the very first iteration,
  ``r_k = (L_k / L_k0)^bert`` (bert = 1), ``w_nat <- w_nat - eta (w_nat - r_nat / (r_adv + r_nat))``,
  ``w_adv = 1 - w_nat``; init 1/2, eta = 0.025.
* B-MTARD (``balance: bmtard``, ``temperatures: entropy``): normalised loss balance
  ``lhat_k = L_k / L_k0``, ``r_k = lhat_k / mean(lhat)``, ``w_k <- w_k - eta (w_k - r_k / sum r)`` for both
  k, clipped at 0 and renormalised to sum 1; entropy-balanced teacher temperatures
  ``H_k = mean_el p log(p + 1e-5)`` of ``softmax(T_k / tau_k)`` (a negative entropy / C),
  ``tau_adv <- tau_adv - eta_tau sign(H_adv / H_nat - 1)``, ``tau_nat <- tau_nat - eta_tau sign(H_nat / H_adv - 1)``,
  clamped to [1, 10], init 1, eta_tau = 0.001.

Order inside one step, as in the official code: the two KL terms are computed with the current
temperatures; then the temperatures are updated (they act from the next step on); then the weights are
updated and the *updated* weights multiply this step's KL terms. ``eta`` and ``eta_tau`` decay x0.1 with
the learning rate (the official code multiplies them by 0.1 at epochs 215/260/285 together with the lr):
by default they are multiplied by ``step.lr_factor``; ``eta_milestones`` gives them their own milestones.

Training: 300 epochs, lr 0.1, momentum 0.9, wd 2e-4, x0.1 at 215/260/285, batch 128, seed 0.

Deliberate differences from the official code (none changes the numbers of a single-process run):

* Under ``torchrun`` the scalar statistics that drive the weights and temperatures (the two KL values and
  the two entropies) are averaged over the processes before the update, so every process holds the same
  weights and a multi-process run follows the single-process rule on the global batch (the official code
  is single-GPU).
* The CIFAR-100 scripts multiply both KL terms by 10 (RSLAD's README convention): ``outer_loss.kwargs.scale: 10``.
* The official B-MTARD repository is incomplete (``mtard_loss``/``rslad_inner_loss_ce_2`` are missing);
  its inner maximisation is taken to be MTARD's, as the paper states.

The balancing rules live here once (:func:`entropy_temperatures`, :func:`mtard_weights`,
:func:`normalised_weights`, :class:`TwoTeacherLoss`); CIARD (``ciard.py``) reuses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, training_defaults
from robust_distill.components import epochs_of
from robust_distill.distributed import all_reduce_mean
from robust_distill.losses import kl_div

__all__ = ["entropy_temperatures", "mtard_weights", "normalised_weights", "neg_entropy", "TwoTeacherLoss",
           "MTARDLoss", "MTARD", "BMTARD", "KL_EPS"]

KL_EPS = 1e-5  # RSLAD's kl_loss: log(p_T + 1e-5)

Balance = Literal["mtard", "bmtard", "none"]
Temperatures = Literal["fixed", "entropy"]


# -------------------------------------------------------------------------------------------------
# The balancing rules (pure functions on Python floats)
# -------------------------------------------------------------------------------------------------


def _sign(v: float) -> float:
    """``torch.sign`` on a float; 0 for a non-finite value (a 0/0 ratio leaves the temperature alone)."""
    if not math.isfinite(v):
        return 0.0
    return float((v > 0) - (v < 0))


def neg_entropy(logits: Tensor, temperature: float) -> float:
    """``mean_el p log(p + 1e-5)`` of ``softmax(logits / tau)`` (B-MTARD's ``entropy_value``, mean over B*C)."""
    p = torch.softmax(logits.detach().float() / temperature, dim=1)
    return (p * torch.log(p + KL_EPS)).mean().item()


def entropy_temperatures(tau_adv: float, tau_nat: float, h_adv: float, h_nat: float, rate: float,
                         tau_min: float = 1.0, tau_max: float = 10.0) -> tuple[float, float]:
    """B-MTARD's entropy balance: soften the lower-entropy teacher until the two entropies match.

    ``h_*`` are :func:`neg_entropy` values (negative); ``rate`` is eta_tau at this step.
    """
    ratio_adv = h_adv / h_nat if h_nat != 0 else math.nan
    ratio_nat = h_nat / h_adv if h_adv != 0 else math.nan
    tau_adv = tau_adv - rate * _sign(ratio_adv - 1)
    tau_nat = tau_nat - rate * _sign(ratio_nat - 1)
    return max(min(tau_max, tau_adv), tau_min), max(min(tau_max, tau_nat), tau_min)


def mtard_weights(w_nat: float, lhat_adv: float, lhat_nat: float, rate: float,
                  bert: float = 1.0) -> tuple[float, float]:
    """MTARD's rule: ``w_nat <- w_nat - eta (w_nat - r_nat / (r_adv + r_nat))``, ``r = lhat^bert``.

    Returns ``(w_adv, w_nat)`` with ``w_adv = 1 - w_nat``.
    """
    r_adv, r_nat = lhat_adv ** bert, lhat_nat ** bert
    w_nat = w_nat - rate * (w_nat - r_nat / (r_adv + r_nat))
    return 1.0 - w_nat, w_nat


def normalised_weights(w_adv: float, w_nat: float, lhat_adv: float, lhat_nat: float,
                       rate: float) -> tuple[float, float]:
    """B-MTARD's normalised loss balance: ``r_k = lhat_k / mean(lhat)``, both weights moved toward
    ``r_k / sum r``, clipped at 0, renormalised to sum 1. Returns ``(w_adv, w_nat)``."""
    avg = (lhat_adv + lhat_nat) / 2
    r_adv, r_nat = lhat_adv / avg, lhat_nat / avg
    w_nat = w_nat - rate * (w_nat - r_nat / (r_adv + r_nat))
    w_adv = w_adv - rate * (w_adv - r_adv / (r_adv + r_nat))
    w_adv, w_nat = max(w_adv, 0.0), max(w_nat, 0.0)
    coef = 1.0 / (w_adv + w_nat)
    return w_adv * coef, w_nat * coef


# -------------------------------------------------------------------------------------------------
# The two-teacher loss
# -------------------------------------------------------------------------------------------------


class TwoTeacherLoss(OuterLoss):
    """Two-teacher KD with MTARD/B-MTARD's adaptive weights and temperatures (state: checkpointed).

    Subclasses call :meth:`kd_terms` (the two KL terms with the current temperatures) and
    :meth:`update` (temperatures, then weights) and combine the terms. Options: see :class:`MTARDLoss`.
    """

    def __init__(self, balance: Balance = "mtard", temperatures: Temperatures = "fixed", eta: float = 0.025,
                 bert: float = 1.0, eta_tau: float = 0.001, tau_init: float = 1.0, tau_min: float = 1.0,
                 tau_max: float = 10.0, w_init: float = 0.5, eta_milestones: Sequence[float] | None = None,
                 eta_gamma: float = 0.1) -> None:
        if balance not in ("mtard", "bmtard", "none"):
            raise ValueError(f"balance must be mtard, bmtard or none, got {balance!r}")
        if temperatures not in ("fixed", "entropy"):
            raise ValueError(f"temperatures must be fixed or entropy, got {temperatures!r}")
        self.balance, self.temperatures = balance, temperatures
        self.eta, self.bert, self.eta_tau = eta, bert, eta_tau
        self.tau_min, self.tau_max = tau_min, tau_max
        self.eta_milestones = None if eta_milestones is None else list(eta_milestones)
        self.eta_gamma = eta_gamma
        self.w_adv, self.w_nat = 1.0 - w_init, w_init
        self.tau_adv = self.tau_nat = float(tau_init)
        self.l0_adv: float | None = None
        self.l0_nat: float | None = None

    # -- the rate decay ---------------------------------------------------------------------------
    def rate_factor(self, step: Step) -> float:
        """Multiplier of eta and eta_tau at this step: the lr factor, or ``eta_gamma^(milestones passed)``."""
        if self.eta_milestones is None:
            return step.lr_factor
        passed = sum(1 for m in self.eta_milestones if step.epoch >= epochs_of(m, step.epochs))
        return self.eta_gamma ** passed

    # -- the two terms and the updates ------------------------------------------------------------
    def kd_terms(self, step: Step) -> tuple[Tensor, Tensor]:
        """``KL(S(x') || T_adv(x')/tau_adv)`` and ``KL(S(x) || T_nat(x)/tau_nat)``, RSLAD's kl_loss (mean).

        The student runs on ``x'`` then on ``x`` (train mode), the order of MTARD's and B-MTARD's loops.
        """
        s_adv, s_nat = step.student_logits("adv"), step.student_logits("clean")
        kl_adv = kl_div(s_adv, step.teacher_logits("adv", "robust"), reduction="mean",
                        teacher_temperature=self.tau_adv, log_eps=KL_EPS)
        kl_nat = kl_div(s_nat, step.teacher_logits("clean", "natural"), reduction="mean",
                        teacher_temperature=self.tau_nat, log_eps=KL_EPS)
        return kl_adv, kl_nat

    def update(self, step: Step, kl_adv: Tensor, kl_nat: Tensor) -> float:
        """Update the temperatures (for the next step), then the weights (for this step). Returns the rate factor."""
        factor = self.rate_factor(step)
        stats = [kl_adv.item(), kl_nat.item()]
        if self.temperatures == "entropy":
            stats += [neg_entropy(step.teacher_logits("adv", "robust"), self.tau_adv),
                      neg_entropy(step.teacher_logits("clean", "natural"), self.tau_nat)]
        stats = list(all_reduce_mean(*stats))
        l_adv, l_nat = stats[0], stats[1]
        if self.temperatures == "entropy":
            self.tau_adv, self.tau_nat = entropy_temperatures(self.tau_adv, self.tau_nat, stats[2], stats[3],
                                                              self.eta_tau * factor, self.tau_min, self.tau_max)
        if self.l0_adv is None or self.l0_nat is None:
            self.l0_adv, self.l0_nat = l_adv, l_nat
        lhat_adv, lhat_nat = l_adv / self.l0_adv, l_nat / self.l0_nat
        if self.balance == "mtard":
            self.w_adv, self.w_nat = mtard_weights(self.w_nat, lhat_adv, lhat_nat, self.eta * factor, self.bert)
        elif self.balance == "bmtard":
            self.w_adv, self.w_nat = normalised_weights(self.w_adv, self.w_nat, lhat_adv, lhat_nat,
                                                        self.eta * factor)
        step.logs.update(kl_adv=l_adv, kl_nat=l_nat, w_adv=self.w_adv, w_nat=self.w_nat,
                         tau_adv=self.tau_adv, tau_nat=self.tau_nat)
        return factor

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"w_adv": self.w_adv, "w_nat": self.w_nat, "tau_adv": self.tau_adv, "tau_nat": self.tau_nat,
                "l0_adv": self.l0_adv, "l0_nat": self.l0_nat}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.w_adv, self.w_nat = float(state["w_adv"]), float(state["w_nat"])
        self.tau_adv, self.tau_nat = float(state["tau_adv"]), float(state["tau_nat"])
        self.l0_adv = None if state["l0_adv"] is None else float(state["l0_adv"])
        self.l0_nat = None if state["l0_nat"] is None else float(state["l0_nat"])


class MTARDLoss(TwoTeacherLoss):
    """``scale [w_adv KL(S(x')||T_adv(x')/tau_adv) + w_nat KL(S(x)||T_nat(x)/tau_nat)]`` (MTARD / B-MTARD).

    :param balance: ``mtard`` (ECCV'22 rule, ``w_adv = 1 - w_nat``), ``bmtard`` (normalised balance of
        both weights, clip and renormalise) or ``none`` (fixed ``w_init``).
    :param temperatures: ``fixed`` (tau = ``tau_init``, MTARD) or ``entropy`` (B-MTARD's entropy balance).
    :param eta: weight learning rate (0.025). :param bert: exponent of MTARD's loss ratios (1).
    :param eta_tau: temperature learning rate (0.001). :param tau_init: initial temperatures (1).
    :param tau_min: lower clamp (1). :param tau_max: upper clamp (10). :param w_init: initial ``w_nat`` (1/2).
    :param eta_milestones: ``null`` (default): eta and eta_tau follow the lr schedule's factor; a list:
        x ``eta_gamma`` at each of these epochs (fractions of the run if < 1).
    :param scale: overall factor (10 in the official CIFAR-100 scripts).
    """

    def __init__(self, balance: Balance = "mtard", temperatures: Temperatures = "fixed", eta: float = 0.025,
                 bert: float = 1.0, eta_tau: float = 0.001, tau_init: float = 1.0, tau_min: float = 1.0,
                 tau_max: float = 10.0, w_init: float = 0.5, eta_milestones: list[float] | None = None,
                 eta_gamma: float = 0.1, scale: float = 1.0) -> None:
        super().__init__(balance=balance, temperatures=temperatures, eta=eta, bert=bert, eta_tau=eta_tau,
                         tau_init=tau_init, tau_min=tau_min, tau_max=tau_max, w_init=w_init,
                         eta_milestones=eta_milestones, eta_gamma=eta_gamma)
        self.scale = scale

    def __call__(self, step: Step) -> Tensor:
        kl_adv, kl_nat = self.kd_terms(step)
        self.update(step, kl_adv, kl_nat)
        return self.scale * (self.w_adv * kl_adv + self.w_nat * kl_nat)


_TRAINING = training_defaults(epochs=300, weight_decay=2e-4, milestones=[215, 260, 285])
_INNER = Part("pgd_ce", {"start": "gaussian", "clamp_start": False, "bn_mode": "eval"})

MTARD = Method(
    name="mtard",
    inner_attack=_INNER,
    outer_loss=Part("mtard", {"balance": "mtard", "temperatures": "fixed", "eta": 0.025, "bert": 1.0}),
    teachers=("robust", "natural"),
    defaults=_TRAINING,
    summary="MTARD (Zhao et al. 2022): robust and clean teachers, adaptive weights from the loss ratios",
    reference="Zhao et al., ECCV 2022; zhaoshiji123/MTARD/mtard/mtard_resnet18_cifar10.py, mtard_loss.py",
)

BMTARD = Method(
    name="bmtard",
    inner_attack=_INNER,
    outer_loss=Part("mtard", {"balance": "bmtard", "temperatures": "entropy", "eta": 0.025, "eta_tau": 0.001,
                              "tau_min": 1.0, "tau_max": 10.0}),
    teachers=("robust", "natural"),
    defaults=_TRAINING,
    summary="B-MTARD (Zhao et al. 2024): MTARD with entropy-balanced teacher temperatures, normalised weights",
    reference="Zhao et al., TPAMI 2024 (arXiv 2306.16170); zhaoshiji123/MTARD-extension/resnet18_mtard_cifar10.py",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(MTARDLoss, name="mtard")


@hookimpl
def rd_register_methods(registry):
    registry.register(MTARD)
    registry.register(BMTARD)
