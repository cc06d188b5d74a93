"""Divergences shared by the methods, with the reduction always explicit.

Notation of the ARD papers (``shared/reference/ard_methods.md`` §1.3): ``KL(S || T)`` is
``F.kl_div(log_softmax(S), softmax(T))`` = ``sum_c p_T (log p_T - log p_S)``; the *second* argument is
the (soft) target. PyTorch's default ``reduction='mean'`` divides by B*C, not B, which is the #1 source
of silent mismatches between re-implementations, so :func:`kl_div` has no default reduction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kl_div", "js_divergence", "squared_l2", "Reduction", "entropy", "reduce"]

Reduction = Literal["batchmean", "mean", "sum", "none"]


def reduce(per_sample: Tensor, reduction: Reduction, num_classes: int) -> Tensor:
    """Reduce a per-sample sum over classes: ``batchmean`` /B, ``mean`` /(B*C), ``sum``, ``none``."""
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "batchmean":
        return per_sample.sum() / per_sample.shape[0]
    if reduction == "mean":
        return per_sample.sum() / (per_sample.shape[0] * num_classes)
    raise ValueError(f"reduction must be batchmean, mean, sum or none, got {reduction!r}")


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
