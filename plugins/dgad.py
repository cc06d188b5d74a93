"""DGAD (Park & Min, ECCV 2024, "Dynamic Guidance Adversarial Distillation with Enhanced Teacher Knowledge").

Official code: ``kunsaram01/DGAD/main.py`` (``--method DGAD``), built on AdaAD's code (``AT_helper.py``
``adaad_inner_loss`` unchanged).

Inner: AdaAD's ``x' = argmax KL(S(x') || T(x'))``, teacher in the graph, start ``x + 0.001 N(0,1)``, 10 steps
of 2/255, eps 8/255 (the DGAD parser's defaults), student and teacher in eval mode.

Outer, with teacher outputs under ``no_grad`` and the student's in train mode:

* **MAP** (misclassification-aware partitioning): ``Lambda_i = 1`` if the teacher is wrong on the clean
  input (``argmax T(x_i) != y_i``), else 0; ``n = sum_i Lambda_i``.
* **ELS** (error-corrective label swapping) on the teacher's *logits*: where ``Lambda_i = 1`` the true-class
  logit and the top logit of ``T(x_i)`` are swapped; where the teacher's adversarial margin
  ``T(x'_i)_y - max_{k != y} T(x'_i)_k < 0`` the true-class logit and the top other logit of ``T(x'_i)`` are
  swapped (giving ``T~(x)``, ``T~(x')``).
* ``L_clean = 1/(n + 1e-10) sum_i Lambda_i KL(S(x_i) || T~(x_i))`` and
  ``L_adv = 1/(B - n) sum_i (1 - Lambda_i) KL(S(x'_i) || T~(x'_i))`` (per-sample KL summed over classes,
  averaged over each group: ``batchmean`` within the group).
* **PCR** (predictive consistency regularisation): ``MSE(softmax S(x'), softmax S(x))``, ``nn.MSELoss()``'s
  mean over B*C, gradients through both branches.
* ``L = (n/bs) L_clean + ((bs - n)/bs) L_adv + beta_ALP PCR`` with beta_ALP = 1 (``--ALP_beta``, ``--alp on``).

``bs`` is the *configured* batch size (``args.bs``), also for the last, smaller batch of an epoch (where the
two weights then no longer add up to the group proportions), as in the code; ``B`` is the actual batch.
Unless ``outer_loss.kwargs.batch_size`` is set, the engine provides ``data.batch_size`` (divided by the
number of processes under ``torchrun``: each process computes the loss on its share of the global batch).
Training: AdaAD's (200 epochs, lr 0.1, wd 5e-4, x0.1 at 100 and 150).

Deliberate differences from the official code:

* MobileNetV2: the code's MobileNetV2 branch reads ``0.5 * ((n/bs) L_clean + ((bs - n)/bs)) * L_adv + ...``
  (misplaced parenthesis: the clean term is multiplied by L_adv). The loss does not know the student's
  architecture: the default is the ResNet-18 branch; ``outer_loss.kwargs.kl_scale: 0.5`` gives the
  MobileNetV2 branch as intended (``0.5 * ((n/bs) L_clean + ((bs - n)/bs) L_adv) + ...``) and
  ``reproduce_parenthesis_bug: true`` (with ``kl_scale: 0.5``) reproduces it as written.
* a batch on which the teacher is wrong on every clean input (``n = B``) makes the code divide by zero
  (``1 / (len(adv_inputs) - num_lambda)`` raises ``ZeroDivisionError``); here ``L_adv`` is 0 then.
* the code's ``torch.gather(...).squeeze()`` turns a batch of one into a scalar; we index per sample.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from robust_distill import Method, OuterLoss, Part, Step, hookimpl, kl_div, training_defaults
from robust_distill_plugins.inner_attacks import ADAAD_KL_PGD

__all__ = ["DGADLoss", "swap_logits", "teacher_wrong_clean", "teacher_margin_negative"]


def swap_logits(logits: Tensor, a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """A copy of ``logits`` whose entries ``a_i`` and ``b_i`` are exchanged in the rows where ``mask``."""
    out = logits.clone()
    rows = mask.nonzero().squeeze(1)
    va, vb = logits[rows, a[rows]], logits[rows, b[rows]]
    out[rows, a[rows]] = vb
    out[rows, b[rows]] = va
    return out


def teacher_wrong_clean(t_clean: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """MAP: ``(argmax T(x) != y, argmax T(x))``."""
    top = t_clean.argmax(dim=1)
    return top != y, top


def teacher_margin_negative(t_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(T(x')_y - max_{k != y} T(x')_k < 0, argmax_{k != y} T(x')_k)``."""
    others = t_adv.scatter(1, y[:, None], float("-inf"))
    top_other, idx = others.max(dim=1)
    return t_adv.gather(1, y[:, None]).squeeze(1) - top_other < 0, idx


class DGADLoss(OuterLoss):
    """DGAD: ``(n/bs) L_clean + ((bs-n)/bs) L_adv + beta_ALP MSE(softmax S(x'), softmax S(x))``, ELS targets.

    :param beta_alp: weight of the PCR term (``--ALP_beta``, 1).
    :param alp: include the PCR term (``--alp on``).
    :param batch_size: ``bs``; provided by the engine (the configured per-process batch size); ``None`` outside
        a training run: the actual batch size.
    :param kl_scale: factor of the two KL terms (1; the code's MobileNetV2 branch uses 0.5).
    :param reproduce_parenthesis_bug: the MobileNetV2 branch as written,
        ``kl_scale * ((n/bs) L_clean + (bs-n)/bs) * L_adv``.
    """

    def __init__(self, beta_alp: float = 1.0, alp: bool = True, batch_size: int | None = None,
                 kl_scale: float = 1.0, reproduce_parenthesis_bug: bool = False) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"dgad: batch_size must be >= 1 or null, got {batch_size}")
        self.beta_alp, self.alp, self.batch_size = beta_alp, alp, batch_size
        self.kl_scale, self.reproduce_parenthesis_bug = kl_scale, reproduce_parenthesis_bug

    def __call__(self, step: Step) -> Tensor:
        y = step.y
        s_nat, s_adv = step.student_logits("clean"), step.student_logits("adv")
        t_nat, t_adv = step.teacher_logits("clean"), step.teacher_logits("adv")
        wrong, top = teacher_wrong_clean(t_nat, y)  # MAP
        t_nat = swap_logits(t_nat, y, top, wrong)  # ELS on T(x)
        flipped, top_other = teacher_margin_negative(t_adv, y)
        t_adv = swap_logits(t_adv, y, top_other, flipped)  # ELS on T(x')

        lam = wrong.to(s_nat.dtype)
        n, batch = float(wrong.sum().item()), y.shape[0]
        kl_nat = kl_div(s_nat, t_nat, reduction="none")
        kl_adv = kl_div(s_adv, t_adv, reduction="none")
        loss_clean = (lam * kl_nat).sum() / (n + 1e-10)  # batchmean within the teacher-wrong group
        if batch > n:
            loss_adv = ((1.0 - lam) * kl_adv).sum() / (batch - n)  # batchmean within the other group
        else:
            loss_adv = kl_adv.sum() * 0.0
        bs = self.batch_size if self.batch_size is not None else batch
        if self.reproduce_parenthesis_bug:
            loss = self.kl_scale * ((n / bs) * loss_clean + (bs - n) / bs) * loss_adv
        else:
            loss = self.kl_scale * ((n / bs) * loss_clean + ((bs - n) / bs) * loss_adv)
        step.logs.update(dgad_teacher_wrong=n / batch, dgad_adv_swapped=flipped.float().mean().detach(),
                         dgad_clean=loss_clean.detach(), dgad_adv=loss_adv.detach())
        if self.alp:
            pcr = F.mse_loss(F.softmax(s_adv, dim=1), F.softmax(s_nat, dim=1))  # mean over B*C
            step.logs["dgad_pcr"] = pcr.detach()
            loss = loss + self.beta_alp * pcr
        return loss


DGAD = Method(
    name="dgad",
    inner_attack=ADAAD_KL_PGD,
    outer_loss=Part("dgad", {"beta_alp": 1.0, "alp": True, "kl_scale": 1.0}),
    defaults=training_defaults(epochs=200, weight_decay=5e-4, milestones=[100, 150]),
    summary="DGAD (Park & Min 2024): teacher-wrong samples distilled clean, swapped wrong teacher logits, PCR",
    reference="Park & Min, ECCV 2024; kunsaram01/DGAD/main.py (--method DGAD)",
)


@hookimpl
def rd_register_outer_losses(registry):
    registry.register(DGADLoss, name="dgad")


@hookimpl
def rd_register_methods(registry):
    registry.register(DGAD)
