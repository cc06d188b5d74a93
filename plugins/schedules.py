"""Learning-rate schedules: ``schedule(epoch) -> multiplier`` of ``optim.lr`` (epoch is fractional)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from robust_distill import epochs_of, hookimpl


def multistep(epochs: int, milestones: Sequence[float] = (100, 150), gamma: float = 0.1,
              reproduce_reset_bug: bool = False) -> Callable[[float], float]:
    """x``gamma`` at each milestone epoch (PyTorch ``MultiStepLR`` stepped per epoch).

    Milestones below 1 are fractions of ``epochs`` (``[0.5, 0.75]``), convenient for short runs.
    ``reproduce_reset_bug`` reproduces ARD's/IAD's ``adjust_learning_rate`` bug: the decay is computed from
    the *initial* lr at every milestone, so the lr stays at ``gamma`` after the first one (0.1 -> 0.01 at
    100 and never 0.001).
    """
    points = sorted(epochs_of(m, epochs) for m in milestones)

    def schedule(epoch: float) -> float:
        passed = sum(1 for m in points if math.floor(epoch + 1e-9) >= m)
        return gamma ** min(passed, 1) if reproduce_reset_bug else gamma ** passed
    return schedule


def constant(epochs: int) -> Callable[[float], float]:
    """The base learning rate throughout."""
    return lambda epoch: 1.0


def cosine(epochs: int, warmup_epochs: float = 0.0, final: float = 0.0) -> Callable[[float], float]:
    """Linear warm-up, then cosine decay to ``final`` x the base lr at the last epoch (per step)."""
    def schedule(epoch: float) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1e-3) / warmup_epochs
        t = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-9)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return schedule


def cos_exp(e: float, start: float, end: float) -> float:
    """``(0.5 + 0.5 cos(pi (e - start)/(end - start))) exp(-0.01 (e - start)^2 / (end - start)^2)``.

    CIARD's decay shape (student lr from 150 to 300, teacher lr from 50 to 300); ``e`` is clipped to ``end``.
    """
    span = max(end - start, 1e-9)
    t = min(max(e - start, 0.0), span) / span
    return (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)


def ciard_schedule(epochs: int, start: float = 150, end: float | None = None) -> Callable[[float], float]:
    """CIARD's student lr: 1 until ``start``, then :func:`cos_exp` to 0 at ``end`` (default: the last epoch).

    Evaluated per epoch on the official 1-based epoch number ``e = floor(epoch) + 1`` (``lr = 0.1`` for
    ``e < 150``), so the last epoch of a 300-epoch run has lr 0, as in the official code.
    ``start``/``end`` below 1 are fractions of ``epochs``.
    """
    s = epochs_of(start, epochs)
    t_end = float(epochs) if end is None else epochs_of(end, epochs)

    def schedule(epoch: float) -> float:
        e = math.floor(epoch + 1e-9) + 1
        return 1.0 if e < s else cos_exp(e, s, t_end)
    return schedule


@hookimpl
def rd_register_lr_schedules(registry):
    registry.register(multistep, name="multistep", help="x gamma at milestone epochs (fractions if < 1)")
    registry.register(constant, name="constant")
    registry.register(cosine, name="cosine", help="warm-up then cosine decay, per step")
    registry.register(ciard_schedule, name="ciard", help="CIARD: constant until 150, then cos x exp to 0 at the end")
