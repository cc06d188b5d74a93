"""Small fixed models and formulas written out by hand, shared by the loss tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

B, D, C = 4, 5, 3  # batch, input features, classes


def linear(seed: int, scale: float = 1.0, classes: int = C) -> nn.Linear:
    """A ``D -> classes`` linear model with fixed weights drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(D, classes)
    with torch.no_grad():
        m.weight.copy_(scale * torch.randn(classes, D, generator=g))
        m.bias.copy_(scale * torch.randn(classes, generator=g))
    return m


def softmax(z: Tensor) -> Tensor:
    e = torch.exp(z - z.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def kl_by_hand(s: Tensor, t: Tensor, eps: float = 0.0) -> Tensor:
    """Per-sample ``sum_c p_t (log(p_t + eps) - log p_s)``, written out."""
    p_s, p_t = softmax(s), softmax(t)
    return (p_t * (torch.log(p_t + eps) - torch.log(p_s))).sum(dim=1)
