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
``outer_loss.kwargs.kl_reduction: batchmean`` averages over the batch only (the papers' per-sample KL): both
terms x C; the weights (ratios ``L_k / L_k0``) and the temperatures (entropies) are unchanged, so the loss x C.

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

The balancing rules live once in ``two_teacher.py`` (:func:`entropy_temperatures`, :func:`mtard_weights`,
:func:`normalised_weights`, :class:`TwoTeacherLoss`), shared with CIARD (``ciard.py``).
"""

from __future__ import annotations

from torch import Tensor

from robust_distill import KLReduction, Method, Part, Step, hookimpl, training_defaults
from robust_distill_plugins.inner_attacks import MTARD_PGD
from robust_distill_plugins.two_teacher import Balance, Temperatures, TwoTeacherLoss

__all__ = ["MTARDLoss", "MTARD", "BMTARD"]


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
    :param kl_reduction: ``mean`` (sum/(B*C), the official ``kl_loss(...).mean()``) or ``batchmean`` (x C).
    """

    def __init__(self, balance: Balance = "mtard", temperatures: Temperatures = "fixed", eta: float = 0.025,
                 bert: float = 1.0, eta_tau: float = 0.001, tau_init: float = 1.0, tau_min: float = 1.0,
                 tau_max: float = 10.0, w_init: float = 0.5, eta_milestones: list[float] | None = None,
                 eta_gamma: float = 0.1, scale: float = 1.0, kl_reduction: KLReduction = "mean") -> None:
        super().__init__(balance=balance, temperatures=temperatures, eta=eta, bert=bert, eta_tau=eta_tau,
                         tau_init=tau_init, tau_min=tau_min, tau_max=tau_max, w_init=w_init,
                         eta_milestones=eta_milestones, eta_gamma=eta_gamma, kl_reduction=kl_reduction)
        self.scale = scale

    def __call__(self, step: Step) -> Tensor:
        kl_adv, kl_nat = self.kd_terms(step)
        self.update(step, kl_adv, kl_nat)
        return self.scale * (self.w_adv * kl_adv + self.w_nat * kl_nat)


_TRAINING = training_defaults(epochs=300, weight_decay=2e-4, milestones=[215, 260, 285])

MTARD = Method(
    name="mtard",
    inner_attack=MTARD_PGD,
    outer_loss=Part("mtard", {"balance": "mtard", "temperatures": "fixed", "eta": 0.025, "bert": 1.0}),
    teachers=("robust", "natural"),
    defaults=_TRAINING,
    summary="MTARD (Zhao et al. 2022): robust and clean teachers, adaptive weights from the loss ratios",
    reference="Zhao et al., ECCV 2022; zhaoshiji123/MTARD/mtard/mtard_resnet18_cifar10.py, mtard_loss.py",
)

BMTARD = Method(
    name="bmtard",
    inner_attack=MTARD_PGD,
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
