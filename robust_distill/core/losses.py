"""Divergences shared by the methods, with the reduction always explicit.

Notation of the ARD papers (``shared/reference/ard_methods.md`` §1.3): ``KL(S || T)`` is
``F.kl_div(log_softmax(S), softmax(T))`` = ``sum_c p_T (log p_T - log p_S)``; the *second* argument is
the (soft) target. PyTorch's default ``reduction='mean'`` divides by B*C, not B, which is the #1 source
of silent mismatches between re-implementations, so :func:`kl_div` has no default reduction.

The ``kl_reduction`` option: the official codes of ARD, RSLAD, AdaAD (CIFAR-10), MTARD, B-MTARD, CIARD and
PeerAiD compute their distillation KLs with ``nn.KLDivLoss()``'s default (or RSLAD's ``kl_loss(...).mean()``),
a mean over B*C; the papers write the KL of each sample, averaged over the batch. Their outer losses take
``kl_reduction: mean`` (the default: the official code) or ``batchmean`` (the papers' math), checked by
:func:`check_kl_reduction`; ``batchmean`` multiplies each such KL term by C, the number of classes.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_distill import _moved

__all__ = ["kl_div", "js_divergence", "squared_l2", "Reduction", "KLReduction", "KL_REDUCTIONS", "entropy",
           "reduce", "kl_divisor", "check_kl_reduction"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release

Reduction = Literal["batchmean", "mean", "sum", "none"]
Reduction.__doc__ = "How a loss reduces its per-sample values: sum/B, mean over elements, sum, or none."
KLReduction = Literal["mean", "batchmean"]
KLReduction.__doc__ = "A distillation KL's reduction: the official codes' element mean, or the papers' sum/B."
"""The ``kl_reduction`` option of the distillation losses (see the module docstring)."""

KL_REDUCTIONS: dict[str, str] = {
    "mean": "sum / (B*C), the official codes' nn.KLDivLoss() default",
    "batchmean": "sum / B, the per-sample KL of the papers averaged over the batch",
}


def check_kl_reduction(value: object, owner: str, renamed: object = None) -> KLReduction:
    """``value`` if it is a valid ``kl_reduction``, else a ``ValueError`` naming ``owner`` and the choices.

    ``renamed``: the same option under its former name ``reduction`` (ARD, AdaAD), used instead of ``value``
    with a ``FutureWarning`` for one release, so that older configs and result folders still resolve.
    """
    if renamed is not None:
        warnings.warn(f"{owner}: the option 'reduction' is now called 'kl_reduction'; 'reduction' will be removed "
                      "in the next release.", FutureWarning, stacklevel=3)
        value = renamed
    if value not in KL_REDUCTIONS:
        choices = "; ".join(f"{k!r} ({v})" for k, v in KL_REDUCTIONS.items())
        raise ValueError(f"{owner}: kl_reduction must be one of {choices}; got {value!r}")
    return value  # type: ignore[return-value]


def kl_divisor(reduction: Reduction, batch: int, num_classes: int) -> int:
    """What ``reduction`` divides the summed per-sample values of ``batch`` rows by: B, B*C or 1."""
    if reduction == "batchmean":
        return batch
    if reduction == "mean":
        return batch * num_classes
    if reduction in ("sum", "none"):
        return 1
    raise ValueError(f"reduction must be batchmean, mean, sum or none, got {reduction!r}")


def reduce(per_sample: Tensor, reduction: Reduction, num_classes: int) -> Tensor:
    """Reduce a per-sample sum over classes: ``batchmean`` /B, ``mean`` /(B*C), ``sum``, ``none``."""
    n = kl_divisor(reduction, per_sample.shape[0], num_classes)
    return per_sample if reduction == "none" else per_sample.sum() / n


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature``; no kernel for tau = 1 (x / 1 is x exactly: the PGD objective runs 10x a step)."""
    return logits if temperature == 1.0 else logits / temperature


def kl_div(student: Tensor, teacher: Tensor, *, reduction: Reduction, temperature: float = 1.0,
           teacher_temperature: float | None = None, log_eps: float | None = None) -> Tensor:
    """``KL(S^tau || T^tau)`` between logits ``student`` and target logits ``teacher``.

    :param reduction: ``"batchmean"`` (true KL: sum / B; TRADES, IAD, AdaAD on CIFAR-100),
        ``"mean"`` (sum / (B*C), ``nn.KLDivLoss()``'s default; ARD, AdaAD on CIFAR-10, PeerAiD, and with
        ``log_eps`` RSLAD/MTARD/CIARD), ``"sum"`` or ``"none"`` (per-sample vector, summed over classes).
    :param temperature: divides the student logits (and the teacher's, unless ``teacher_temperature``).
    :param log_eps: if set, the target's entropy term is ``p_T log(p_T + log_eps)``, as RSLAD's
        ``kl_loss`` writes it (``1e-5``); gradients w.r.t. the student are unchanged.

    The target is used as given: pass ``teacher.detach()`` unless gradients should reach it
    (IAD's introspection term and PeerAiD's peer loss deliberately let them through).
    """
    t_temp = temperature if teacher_temperature is None else teacher_temperature
    log_p_s = F.log_softmax(_scaled(student, temperature), dim=1)
    if log_eps is None:
        log_p_t = F.log_softmax(_scaled(teacher, t_temp), dim=1)
        per_class = log_p_t.exp() * (log_p_t - log_p_s)
    else:
        p_t = F.softmax(_scaled(teacher, t_temp), dim=1)
        per_class = p_t * (torch.log(p_t + log_eps) - log_p_s)
    return reduce(per_class.sum(dim=1), reduction, student.shape[1])


def squared_l2(student: Tensor, teacher: Tensor, *, reduction: Reduction) -> Tensor:
    """``||S - T||^2`` between logits, per sample summed over classes, then reduced.

    The logit-matching loss of oracle teacher-student training (Yang et al., AISTATS 2021, Sec. 5.1:
    "minimize the l2 distance between the teacher and student's output logits"): ``batchmean`` is the
    squared distance averaged over the batch, ``mean`` divides by B*C as ``nn.MSELoss()`` does.
    """
    return reduce((student - teacher).pow(2).sum(dim=1), reduction, student.shape[1])


def js_divergence(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample Jensen-Shannon divergence between ``softmax(a)`` and ``softmax(b)`` (nats, <= log 2).

    Symmetric; gradients reach both arguments unless the caller detaches one.
    """
    log_p, log_q = F.log_softmax(a, dim=1), F.log_softmax(b, dim=1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * (log_p.exp() * (log_p - log_m)).sum(1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(1)


def entropy(logits: Tensor) -> Tensor:
    """Per-sample Shannon entropy (nats) of ``softmax(logits)``."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)
