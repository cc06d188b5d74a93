"""Numerical precision of training (``optim.precision``) and evaluation (``eval.precision``).

* ``fp32``: no autocast. On CUDA, PyTorch's TF32 defaults apply (convolutions may use TF32 tensor cores
  on Ampere and later GPUs, matrix products do not), as in the official training scripts.
* ``bf16``: ``torch.autocast`` to bfloat16, on CUDA and on CPU. bfloat16 has float32's exponent range, so
  gradients neither underflow nor overflow and nothing is scaled.
* ``fp16``: autocast to float16. The outer loss goes through a ``GradScaler`` (the optimizer step is
  skipped when the scaled gradients overflow), and the inner attack's objective through an
  :class:`InputGradScale`: float16's smallest subnormal is 6e-8, so without it the input gradient of a
  nearly flat objective (a KL at the start of PGD) is zero and the sign step does not move.

Evaluation attacks run in fp32 unless ``eval.precision: bf16`` asks otherwise, so reported robust accuracy
is comparable with the papers; fp16 is not offered for evaluation, since the attacks of torchattacks and
AutoAttack take unscaled input gradients.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["Precision", "PRECISIONS", "autocast", "autocast_dtype", "grad_scaler", "InputGradScale"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager[Any]:
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``'s type; a no-op for ``fp32``."""
    if precision == "fp32":
        return nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast computes in for ``precision``; ``None`` for ``fp32``."""
    return _DTYPES.get(precision)


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """The outer loss's ``GradScaler``: enabled for ``fp16`` only (CUDA and CPU)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


class InputGradScale:
    """Dynamic scale of a sign-gradient attack's objective under fp16 autocast, kept on the device.

    :meth:`scale` multiplies the objective by ``s`` before ``torch.autograd.grad`` (a positive factor does
    not change the sign step); :meth:`unscale` divides the gradient by ``s``, replaces NaN entries by 0 (an
    inf keeps its sign, which is all PGD uses) and updates ``s`` with the ``GradScaler`` rule: halved after a
    gradient with a non-finite entry, doubled after ``growth_interval`` finite ones. The scale and the
    counter are device tensors: no host synchronisation. Attack objectives are sums over the batch
    (per-sample gradients of order 1), hence the small initial scale (2^10).
    """

    def __init__(self, device: torch.device | str, init_scale: float = 2.0 ** 10, growth_interval: int = 100,
                 min_scale: float = 2.0 ** -14) -> None:
        self.growth_interval, self.min_scale = growth_interval, min_scale
        self._scale = torch.full((), float(init_scale), dtype=torch.float32, device=device)
        self._good = torch.zeros((), dtype=torch.int32, device=device)

    def scale(self, objective: Tensor) -> Tensor:
        return objective.float() * self._scale

    def unscale(self, grad: Tensor) -> Tensor:
        used = self._scale
        finite = torch.isfinite(grad).all()
        grow = finite & (self._good + 1 >= self.growth_interval)
        self._scale = torch.where(finite, torch.where(grow, used * 2.0, used), (used * 0.5).clamp_min(self.min_scale))
        self._good = torch.where(finite & ~grow, self._good + 1, torch.zeros_like(self._good))
        return grad.nan_to_num(nan=0.0) / used.to(grad.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"scale": self._scale.detach().clone(), "good": self._good.detach().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            self._scale = state["scale"].to(self._scale.device, torch.float32)
            self._good = state["good"].to(self._good.device, torch.int32)
