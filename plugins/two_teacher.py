"""The two-teacher distillation of MTARD and B-MTARD, shared by ``mtard.py`` and ``ciard.py``.

Adaptive teacher weights (MTARD's rule, B-MTARD's normalised balance) and entropy-balanced teacher
temperatures (B-MTARD), as pure functions on floats, and :class:`TwoTeacherLoss`, the outer-loss base that
computes the two KL terms with the current temperatures and updates temperatures and weights each step (the
equations, the order inside a step and the official sources are in ``mtard.py``'s docstring). Under
``torchrun`` the scalar statistics that drive the updates are averaged over the processes first, so every
process holds the same weights and temperatures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from robust_distill import KLReduction, OuterLoss, Step, all_reduce_mean, check_kl_reduction, epochs_of, kl_div

__all__ = ["KL_EPS", "Balance", "Temperatures", "neg_entropy", "entropy_temperatures", "mtard_weights",
           "normalised_weights", "TwoTeacherLoss"]

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


def neg_entropy(logits: Tensor, temperature: float) -> Tensor:
    """``mean_el p log(p + 1e-5)`` of ``softmax(logits / tau)`` (B-MTARD's ``entropy_value``, mean over B*C), a
    0-d float32 tensor (read with the step's other statistics in one host synchronisation)."""
    p = torch.softmax(logits.detach().float() / temperature, dim=1)
    return (p * torch.log(p + KL_EPS)).mean()


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
    :meth:`update` (temperatures, then weights) and combine the terms. Options: see
    :class:`~robust_distill_plugins.mtard.MTARDLoss`.
    """

    state_attributes = ("w_adv", "w_nat", "tau_adv", "tau_nat", "l0_adv", "l0_nat")

    def __init__(self, balance: Balance = "mtard", temperatures: Temperatures = "fixed", eta: float = 0.025,
                 bert: float = 1.0, eta_tau: float = 0.001, tau_init: float = 1.0, tau_min: float = 1.0,
                 tau_max: float = 10.0, w_init: float = 0.5, eta_milestones: Sequence[float] | None = None,
                 eta_gamma: float = 0.1, kl_reduction: KLReduction = "mean") -> None:
        if balance not in ("mtard", "bmtard", "none"):
            raise ValueError(f"balance must be mtard, bmtard or none, got {balance!r}")
        if temperatures not in ("fixed", "entropy"):
            raise ValueError(f"temperatures must be fixed or entropy, got {temperatures!r}")
        self.balance, self.temperatures = balance, temperatures
        self.kl_reduction = check_kl_reduction(kl_reduction, type(self).__name__)
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
        """``KL(S(x') || T_adv(x')/tau_adv)`` and ``KL(S(x) || T_nat(x)/tau_nat)``, RSLAD's kl_loss, ``kl_reduction``.

        The student runs on ``x'`` then on ``x`` (train mode), the order of MTARD's and B-MTARD's loops
        (CIARD's ``S(x)`` has already run, before its attack: :meth:`OuterLoss.before_attack`).
        """
        s_adv, s_nat = step.student_logits("adv"), step.student_logits("clean")
        kl_adv = kl_div(s_adv, step.teacher_logits("adv", "robust"), reduction=self.kl_reduction,
                        teacher_temperature=self.tau_adv, log_eps=KL_EPS)
        kl_nat = kl_div(s_nat, step.teacher_logits("clean", "natural"), reduction=self.kl_reduction,
                        teacher_temperature=self.tau_nat, log_eps=KL_EPS)
        return kl_adv, kl_nat

    def update(self, step: Step, kl_adv: Tensor, kl_nat: Tensor) -> float:
        """Update the temperatures (for the next step), then the weights (for this step). Returns the rate factor."""
        factor = self.rate_factor(step)
        stats = [kl_adv.detach().float(), kl_nat.detach().float()]
        if self.temperatures == "entropy":
            stats += [neg_entropy(step.teacher_logits("adv", "robust"), self.tau_adv),
                      neg_entropy(step.teacher_logits("clean", "natural"), self.tau_nat)]
        stats = list(all_reduce_mean(*torch.stack(stats).tolist()))  # one host synchronisation
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
