"""What the training loop watches without stopping the GPU.

* :class:`StepMonitor`: per-step diagnostics (the loss and every ``step.logs`` value) summed *on the
  device* and read with one host synchronisation per logging interval, not one per step; it also records,
  still on the device, the first step whose loss was not finite.
* :func:`check_outer_loss`: the outer-loss contract (a floating-point scalar tensor with grad), checked on
  tensor metadata only, so it costs no synchronisation either.
* :func:`nonfinite_tensors`: every non-finite tensor of a checkpoint (nested dicts and lists), found with one
  synchronisation; the engine calls it before anything is saved, so no checkpoint with a NaN or an inf is
  ever written (:func:`robust_distill.files.atomic.atomic_save` refuses one too).

Errors: :class:`OuterLossError` (a plugin broke the contract; a :class:`~robust_distill.errors.PluginError`)
and :class:`DivergenceError` (training produced non-finite values; nothing non-finite was saved).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from robust_distill.errors import DivergenceError, OuterLossError
from robust_distill.files.atomic import describe_nonfinite, nonfinite_tensors

__all__ = ["StepMonitor", "OuterLossError", "DivergenceError", "check_outer_loss", "nonfinite_tensors",
           "describe_nonfinite"]


def check_outer_loss(loss: Any, part: str, where: str) -> None:
    """Raise :class:`OuterLossError` unless ``loss`` is a floating-point scalar tensor with a graph.

    ``part`` names the loss and its plugin (``"outer loss 'rslad' (plugin 'rslad', distribution ...)"``),
    ``where`` the step (``"at epoch 1, step 3"``). Reads metadata only: no host synchronisation.
    """
    rule = ("An outer loss must return a floating-point scalar torch.Tensor computed from the student's "
            "outputs (step.student_logits(...)), so that the engine can back-propagate it.")
    problem = None
    if not isinstance(loss, Tensor):
        problem = f"a {type(loss).__name__} ({loss!r})"
        if isinstance(loss, (int, float)):
            problem += ", a Python number: was .item() or float() applied to the loss?"
    elif loss.numel() != 1:
        problem = f"a non-scalar tensor of shape {tuple(loss.shape)}: reduce it (e.g. .mean()) to one number"
    elif not loss.is_floating_point():
        problem = f"a tensor of dtype {loss.dtype}, not a floating-point value"
    elif not loss.requires_grad:
        problem = ("a tensor without grad: it was detached, computed under torch.no_grad(), or built only from "
                   "teacher outputs (step.teacher_logits is detached)")
    if problem is not None:
        raise OuterLossError(f"The {part} returned {problem} {where}. {rule}")


class StepMonitor:
    """Sums of the per-step diagnostics, kept on the device until :meth:`read`.

    ``add(loss, logs)`` after every step: the loss and every ``step.logs`` value (tensors are detached and
    summed on their device; Python numbers are summed on the host). The first step whose loss is not
    finite is recorded on the device too. :meth:`read` synchronises once and returns the running means and
    that step (``None`` when every loss so far was finite).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.count = 0
        self._tensor_sums: dict[str, Tensor] = {}
        self._float_sums: dict[str, float] = {}
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._last_loss = torch.zeros((), device=device)

    def add(self, loss: Tensor, logs: Mapping[str, Any], step: int) -> None:
        loss = loss.detach().float().reshape(())
        bad = ~torch.isfinite(loss)
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        self._last_loss = loss
        self._add("loss", loss)
        for k, v in logs.items():
            self._add(k, v)
        self.count += 1

    def _add(self, key: str, value: Any) -> None:
        if isinstance(value, Tensor) or key in self._tensor_sums:
            v = value.detach().float().reshape(()).to(self.device) if isinstance(value, Tensor) else float(value)
            base = self._tensor_sums.get(key, self._float_sums.pop(key, 0.0))
            self._tensor_sums[key] = v + base if isinstance(v, Tensor) else base + v
        else:
            self._float_sums[key] = self._float_sums.get(key, 0.0) + float(value)

    def read(self) -> tuple[dict[str, float], float, int | None]:
        """``(means, last loss, first non-finite step or None)``; one host synchronisation."""
        keys = list(self._tensor_sums)
        packed = torch.stack([*(self._tensor_sums[k] for k in keys), self._last_loss,
                              self._first_bad.to(self._last_loss.dtype)]).tolist()
        n = max(self.count, 1)
        means = {k: v / n for k, v in zip(keys, packed[:len(keys)], strict=True)}
        means.update({k: v / n for k, v in self._float_sums.items()})
        first_bad = int(packed[-1])
        ordered = {k: means[k] for k in ("loss", *[k for k in means if k != "loss"]) if k in means}
        return ordered, packed[-2], (first_bad if first_bad >= 0 else None)
