"""Confidence-calibrated adversarial training (CCAT; Stutz, Hein & Schiele, ICML 2020) in the oracle
teacher-student setting (Yang et al., AISTATS 2021, "Understanding Robustness in Teacher-Student Setting",
Sec. 5.6, Table 4).

Stutz et al.: the adversarial example maximises the largest confidence on a wrong class; its training target is
the label's one-hot vector calibrated by the perturbation's size,

    lambda(delta) = (1 - min(1, ||delta||_inf / eps))^rho,    y~ = lambda onehot(y) + (1 - lambda) 1/K,

and every batch is half clean (target ``onehot(y)``), half adversarial. Yang et al. adapt the attack: the
confidence is the L-inf distance between the student's and the oracle teacher's logits,

    delta = argmax_{||delta||_inf <= eps} max_k |s_k(x + delta) - t_k(x + delta)|,

and "apply the confidence-calibrated soft label y~ to the adversarial examples" (rho = 5, 10, 20; Table 4).

What the text leaves open, and what is chosen here (each an option):

* **The label y.** The paper keeps Stutz's ``(x, y)`` notation; in the oracle setting the label of ``x`` is the
  teacher's class ``argmax T(x)`` (the ``oracle`` dataset's label). Default ``label_at: clean``: the teacher's
  class of the clean point, as Stutz uses the clean label; ``label_at: adv``: its class at ``x + delta`` (the
  oracle labels every input).
* **The loss.** Stutz: cross-entropy to the soft target (``supervision: label``, the default: the paper speaks of
  a soft *label*, and its remark that calibration "provide[s] inconsistent confidence to the teacher's output"
  fits a target that is not the teacher's logits). ``supervision: logit`` is the logit-training analogue:
  ``||S(x') - z||^2`` with ``z = lambda T + (1 - lambda) mean_k(T_k)``, the teacher's logits shrunk towards the
  constant vector whose softmax is uniform (``softmax(z) = softmax(lambda T)``: the teacher at temperature
  ``1/lambda``).
* **The attack's schedule and start.** Not in the paper. Stutz's code starts from zero or from a perturbation of
  uniformly drawn L-inf norm (one of the two at random per batch) and returns, per sample, the iterate of
  highest objective; with the last iterate of sign-gradient PGD from a uniform start ``||delta||_inf`` is
  ``eps`` almost always and every target would be uniform. ``ccat_pgd`` does the same (``start:
  zero_or_norm``, best iterate) with the project's sign-gradient steps (threat's ``steps`` x ``step_size``;
  Stutz's momentum and backtracking are left out).
* **The clean half.** ``fraction: 0.5`` of each batch is attacked (the last ``round(fraction B)`` samples; the
  batches are shuffled); the clean ones have ``delta = 0``, so ``lambda = 1`` and the same loss gives them
  Stutz's clean term (cross-entropy to ``onehot(y)``; under ``supervision: logit``, logit training).

Robustness is measured as for every oracle student (agreement with the teacher under oracle PGD), without the
confidence threshold Stutz et al. use at test time: Table 4 reports plain robust accuracy.

Parts: inner attack ``ccat_pgd``, outer loss ``ccat`` (``rho``, default 10); method ``ccat`` (teacher role
``oracle``, the paper's oracle defaults with Table 4's 150 epochs). ``--set outer_loss.kwargs.rho=5`` trains
Table 4's other columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_distill import BNMode, InnerPGD, Method, OuterLoss, Part, Reduction, Step, hookimpl, sign_step, squared_l2
from robust_distill_plugins.oracle import ROLE, oracle_defaults, oracle_method

CCATStart = Literal["zero_or_norm", "zero", "uniform_norm", "uniform"]
Supervision = Literal["label", "logit"]
LabelAt = Literal["clean", "adv"]


# -------------------------------------------------------------------------------------------------
# The calibration (Stutz et al. 2020, Eq. 4-5)
# -------------------------------------------------------------------------------------------------


def linf_norms(delta: Tensor) -> Tensor:
    """Per sample ``||delta||_inf`` of a batch (B, ...)."""
    return delta.detach().abs().flatten(1).amax(1)


def calibration(norms: Tensor, eps: float, rho: float) -> Tensor:
    """``lambda = (1 - min(1, ||delta||_inf / eps))^rho``: 1 on the clean point, 0 from the ball's surface on."""
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return (1.0 - (norms / eps).clamp(max=1.0)).clamp(min=0.0).pow(rho)


def calibrated_target(label: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """``y~ = lambda onehot(label) + (1 - lambda) / K``, (B, K): Stutz's soft target."""
    onehot = F.one_hot(label, num_classes).to(lam.dtype)
    lam = lam[:, None]
    return lam * onehot + (1.0 - lam) / num_classes


def calibrated_logits(teacher: Tensor, lam: Tensor) -> Tensor:
    """``z = lambda T + (1 - lambda) mean_k(T_k)``: the teacher's logits shrunk towards the constant vector
    (``softmax(z) = softmax(lambda T)``; uniform at ``lambda = 0``), the ``supervision: logit`` target."""
    lam = lam[:, None].to(teacher.dtype)
    return lam * teacher + (1.0 - lam) * teacher.mean(1, keepdim=True)


def logit_gap(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per sample ``max_k |s_k - t_k|``: the teacher-student confidence of Sec. 5.6."""
    return (student_logits - teacher_logits).abs().amax(1)


# -------------------------------------------------------------------------------------------------
# The inner attack
# -------------------------------------------------------------------------------------------------


def ccat_start(x: Tensor, eps: float, start: CCATStart) -> Tensor:
    """The first iterate. ``zero``: ``x``; ``uniform``: ``x + U(-eps, eps)`` per pixel (Madry); ``uniform_norm``:
    per sample a direction ``u ~ U(-1, 1)^D`` scaled to an L-inf norm ``r ~ U(0, eps)`` (Stutz's
    ``LInfUniformNormInitialization``); ``zero_or_norm``: one of ``zero`` / ``uniform_norm`` for the whole batch,
    drawn with probability 1/2 (Stutz's ``RandomInitializations``). Clamped to [0, 1]."""
    if start == "zero_or_norm":
        start = "zero" if bool(torch.rand(()) < 0.5) else "uniform_norm"
    if start == "zero":
        return x.clone()
    if start == "uniform":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    elif start == "uniform_norm":
        u = torch.empty_like(x).uniform_(-1.0, 1.0)
        r = torch.rand(x.shape[0], device=x.device, dtype=x.dtype) * eps
        delta = u * (r / linf_norms(u).clamp_min(1e-12)).view(-1, *([1] * (x.dim() - 1)))
    else:
        raise ValueError(f"start must be 'zero_or_norm', 'zero', 'uniform_norm' or 'uniform', got {start!r}")
    return (x + delta).clamp(0.0, 1.0)


def best_iterate_pgd(objective: Callable[[Tensor], Tensor], x: Tensor, x0: Tensor, *, eps: float, step_size: float,
                     steps: int, grad_scale: Any = None) -> tuple[Tensor, Tensor]:
    """Sign-gradient ascent on the per-sample ``objective`` (B,) from ``x0`` in the L-inf ball around ``x`` within
    [0, 1] (the order of :func:`robust_distill.pgd`), returning per sample the iterate of highest objective among
    the ``steps + 1`` visited (start and last included, as Stutz et al.'s attack) and that value."""
    x = x.detach()
    x_adv = x0.detach()
    best, best_value = x_adv.clone(), None
    for i in range(steps + 1):
        x_adv.requires_grad_(i < steps)
        with torch.set_grad_enabled(i < steps):
            values = objective(x_adv)
        v = values.detach()
        if best_value is None:
            best_value = v.clone()
        else:
            better = v > best_value
            best[better] = x_adv.detach()[better]
            best_value = torch.where(better, v, best_value)
        if i == steps:
            break
        x_adv = sign_step(values.sum(), x_adv, x, eps=eps, step_size=step_size, grad_scale=grad_scale)
    return best, best_value  # type: ignore[return-value]


class CCATPGD(InnerPGD):
    """CCAT's high-confidence examples in the teacher-student setting (Yang et al. 2021, Sec. 5.6):
    ``delta = argmax_{||delta||_inf <= eps} max_k |S_k(x + delta) - T_k(x + delta)|``, through both networks.

    :param fraction: share of each batch that is attacked (its last ``round(fraction B)`` samples; the others
        are returned clean, ``delta = 0``). Stutz et al.: 0.5.
    :param start: ``zero_or_norm`` (Stutz's: zero or a uniformly drawn norm, per batch), ``zero``,
        ``uniform_norm`` or ``uniform`` (see :func:`ccat_start`).
    :param role: the teacher role (``oracle``).
    :param bn_mode: the student's mode during the attack (the paper's networks have no BatchNorm).

    Returns the best iterate per sample (:func:`best_iterate_pgd`): its ``||delta||_inf`` is what the ``ccat``
    loss calibrates by. The threat's ``steps`` and ``step_size`` are the PGD schedule.
    """

    def __init__(self, fraction: float = 0.5, start: CCATStart = "zero_or_norm", role: str = ROLE,
                 bn_mode: BNMode = "eval") -> None:
        if start not in ("zero_or_norm", "zero", "uniform_norm", "uniform"):
            raise ValueError(f"start must be 'zero_or_norm', 'zero', 'uniform_norm' or 'uniform', got {start!r}")
        super().__init__(start="none", clamp_start=True, bn_mode=bn_mode)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction (the attacked share of a batch) must be in [0, 1], got {fraction}")
        self.fraction, self.ccat_start, self.role = float(fraction), start, role

    def make_objective(self, step: Step) -> Callable[[Tensor], Tensor]:
        student, teacher = step.student_module, step.teachers[self.role]
        return lambda xa: logit_gap(student(xa), teacher(xa))

    def attack(self, step: Step) -> tuple[Tensor, Tensor]:
        """``(x', gap)``: the batch with its attacked samples replaced, and the attacked samples' objective."""
        x = step.x
        n_adv = int(round(self.fraction * x.shape[0]))
        out = x.detach().clone()
        if n_adv == 0:
            return out, x.new_zeros(0)
        threat = self.threat(step)
        xs = x[x.shape[0] - n_adv:].detach()
        with self.attack_context(step):
            objective = self.make_objective(step)
            x0 = ccat_start(xs, threat.eps, self.ccat_start)
            best, value = best_iterate_pgd(objective, xs, x0, eps=threat.eps, step_size=threat.step_size,
                                           steps=threat.steps, grad_scale=step.input_grad_scale)
        out[x.shape[0] - n_adv:] = best
        return out, value

    def __call__(self, step: Step) -> Tensor:
        return self.attack(step)[0]

    def __repr__(self) -> str:
        return f"CCATPGD(fraction={self.fraction}, start={self.ccat_start!r}, role={self.role!r})"


# -------------------------------------------------------------------------------------------------
# The outer loss
# -------------------------------------------------------------------------------------------------


class CCATLoss(OuterLoss):
    """CCAT's loss on the calibrated target, ``lambda = (1 - min(1, ||x' - x||_inf / eps))^rho`` per sample.

    :param rho: the calibration's exponent (Stutz et al.: 10; Table 4: 5, 10, 20).
    :param supervision: ``label``: ``CE(S(x'), lambda onehot(c) + (1 - lambda)/K)`` with ``c`` the teacher's
        class (Stutz's loss; cross-entropy to a soft target); ``logit``: ``||S(x') - (lambda T + (1 - lambda)
        mean_k T_k)||^2`` (logit training towards the tempered teacher).
    :param label_at: where the teacher labels: ``clean`` (``T(x)``: the label of the input, as Stutz's y) or
        ``adv`` (``T(x')``: the oracle's output at the adversarial point).
    :param eps: the radius that calibrates (default: the step's training threat, the attack's radius).
    :param reduction: ``supervision: logit`` only, as ``logit_l2`` (``mean``: over B*K, ``batchmean``).
    :param role: the teacher role (``oracle``).

    The clean samples of the batch (``x' = x``) get ``lambda = 1``: the plain label (or logit) loss.
    """

    def __init__(self, rho: float = 10.0, supervision: Supervision = "label", label_at: LabelAt = "clean",
                 eps: float | None = None, reduction: Reduction = "mean", role: str = ROLE) -> None:
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if supervision not in ("label", "logit"):
            raise ValueError(f"supervision must be 'label' (soft-label CE) or 'logit', got {supervision!r}")
        if label_at not in ("clean", "adv"):
            raise ValueError(f"label_at must be 'clean' (T(x)) or 'adv' (T(x')), got {label_at!r}")
        if eps is not None and eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.rho, self.supervision, self.label_at = float(rho), supervision, label_at
        self.eps, self.reduction, self.role = eps, reduction, role

    def calibration(self, step: Step) -> Tensor:
        """Per sample lambda of the step's ``x'``."""
        eps = self.eps if self.eps is not None else step.threat.eps
        return calibration(linf_norms(step.x_adv - step.x), eps, self.rho)

    def __call__(self, step: Step) -> Tensor:
        lam = self.calibration(step)
        logits = step.student_logits("adv")
        teacher = step.teacher_logits(self.label_at, self.role)
        if self.supervision == "label":
            target = calibrated_target(teacher.argmax(1), lam.to(logits.dtype), logits.shape[1])
            loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
        else:
            loss = squared_l2(logits, calibrated_logits(teacher, lam), reduction=self.reduction)
        step.logs["ccat_lambda"] = lam.mean()
        step.logs["ccat_loss"] = loss.detach()
        return loss


# -------------------------------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------------------------------


def ccat_method() -> Method:
    """``ccat``: the oracle methods' defaults (:func:`~robust_distill_plugins.oracle.oracle_defaults`: the threat
    model of Sec. 5.1, SGD at lr 0.02 with clipping) with Table 4's 150 epochs; rho 10 (Stutz et al.'s and the
    best of Table 4)."""
    method = oracle_method(
        "ccat", Part("ccat_pgd", {"fraction": 0.5, "start": "zero_or_norm"}),
        "CCAT (Stutz et al. 2020) with an oracle teacher: half of each batch attacked by max_k |S_k(x') - T_k(x')|, "
        "CE to lambda onehot(argmax T(x)) + (1 - lambda)/K, lambda = (1 - ||x'-x||_inf/eps)^rho, rho 10",
        outer_loss=Part("ccat", {"rho": 10.0, "supervision": "label", "label_at": "clean"}), where="Sec. 5.6, Table 4")
    defaults = oracle_defaults()
    defaults["optim"]["epochs"] = 150
    return replace(method, defaults=defaults)


CCAT = ccat_method()


@hookimpl
def rd_register_inner_attacks(registry):
    registry.register(CCATPGD, name="ccat_pgd",
                      help="CCAT's high-confidence examples: argmax max_k |S_k(x') - T_k(x')|, best iterate (Sec. 5.6)")


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(CCATLoss, name="ccat",
                      help="CCAT's calibrated target: lambda = (1 - ||x'-x||_inf/eps)^rho (Stutz et al.; Sec. 5.6)")


@hookimpl
def rd_register_methods(registry):
    registry.register(CCAT)
