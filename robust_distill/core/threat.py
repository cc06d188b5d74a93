"""The threat model: one validated value object passed to every attack (never loose floats)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

__all__ = ["ThreatModel", "parse_fraction", "format_eps"]

_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def parse_fraction(value: Any, *, what: str = "value") -> float:
    """Parse ``0.031``, ``8/255`` or ``"8/255"`` into a float (the RobustBench ``"eps": "8/255"`` style)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number like 0.03 or '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _FRACTION.match(value)
        try:
            return float(m.group(1)) / float(m.group(2)) if m else float(value)
        except (ValueError, ZeroDivisionError):
            pass
    raise ValueError(f"{what} must be a number like 0.03 or a fraction like '8/255', got {value!r}")


def format_eps(eps: float) -> str:
    """``8/255`` when eps is a whole number of 1/255 steps, else the float (for table headers)."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator == 255 and math.isclose(float(frac), eps, rel_tol=1e-6):
        return f"{frac.numerator}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class ThreatModel:
    """An L-inf ball and the PGD that searches it.

    :param eps: radius of the L-inf ball, in (0, 1] (inputs live in [0, 1]).
    :param step_size: PGD step size (sign-gradient step), in (0, eps] is typical; must be > 0.
    :param steps: number of PGD steps (>= 1).
    :param eps_end: if set, the radius grows from ``eps`` to ``eps_end`` linearly over training
        (AdaAD, CVPR 2023, Fig. 2); the step size keeps its ratio to the radius.
    :param norm: the norm of the ball; only ``Linf``.
    """

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    eps_end: float | None = None
    norm: str = "Linf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", parse_fraction(self.eps, what="eps"))
        object.__setattr__(self, "step_size", parse_fraction(self.step_size, what="step_size"))
        if self.eps_end is not None:
            object.__setattr__(self, "eps_end", parse_fraction(self.eps_end, what="eps_end"))
        if self.norm != "Linf":
            raise ValueError(f"Only the Linf threat model is supported, got norm={self.norm!r}.")
        for name in ("eps", "eps_end"):
            v = getattr(self, name)
            if v is not None and not (0.0 < v <= 1.0):
                raise ValueError(
                    f"{name} must be in (0, 1] because inputs are images in [0, 1]; got {v:g}. "
                    "Write CIFAR's 8/255 as 8/255 or 0.0314, not 8."
                )
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size:g}.")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}.")

    def at(self, progress: float) -> ThreatModel:
        """The threat model at ``progress`` in [0, 1] of training (identity without ``eps_end``)."""
        if self.eps_end is None:
            return self
        eps = self.eps + (self.eps_end - self.eps) * min(max(progress, 0.0), 1.0)
        return replace(self, eps=eps, step_size=self.step_size * eps / self.eps, eps_end=None)

    def describe(self) -> str:
        """One line for logs and reports: ``Linf eps=8/255, 10 steps of 2/255``."""
        grow = f"->{format_eps(self.eps_end)}" if self.eps_end is not None else ""
        return f"Linf eps={format_eps(self.eps)}{grow}, {self.steps} steps of {format_eps(self.step_size)}"
