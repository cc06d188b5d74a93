"""The weight loss landscape (Wu et al., NeurIPS 2020, "Adversarial weight perturbation helps robust
generalization", Sec. 3.1; AdaAD, CVPR 2023, Sec. 4.5 and Fig. 3).

The adversarial loss of a trained model moved along random filter-normalised directions ``d`` (Li et al., NeurIPS
2018, "Visualizing the loss landscape of neural nets", Sec. 4)::

    g(s) = rho(w + s d),    rho(w) = 1/n sum_i max_{||x'_i - x_i||_inf <= eps} CE(f_w(x'_i), y_i)

(Wu et al. Eq. 1 and Sec. 3.1), for ``s`` on a symmetric grid and several directions. Wu et al. find that the
landscape of PGD-AT sharpens as robust overfitting sets in; AdaAD (Sec. 4.5) that distilled students (AdaAD and
the other AD methods) keep a flatter one.

* :func:`filter_normalized_direction`: a Gaussian direction, each filter rescaled to its weight filter's norm;
  1-D parameters (biases, BatchNorm) get a zero direction (Li et al. and Wu et al. leave them out).
* :func:`adversarial_loss`: ``rho(w)`` and the robust accuracy, with PGD (:func:`robust_distill.core.attacks.pgd`,
  uniform start clipped to [0, 1]: torchattacks' PGD) on the CE loss, the model in eval mode.
* :func:`weight_landscape`: ``g(s)`` for every direction and grid point on a copy of the model (the caller's model
  is never modified), the adversarial examples regenerated at every perturbed weight (on the fly, as Wu et al.), or,
  with ``on_the_fly=False``, crafted once at ``s = 0`` and reused (the loss surface of fixed inputs: cheaper, a
  lower bound of ``g(s)`` up to PGD's sub-optimality, not Wu et al.'s quantity).
* :func:`sharpness`: the summary, per level ``a``: the mean over directions of ``(g(a) + g(-a)) / 2 - g(0)``.
* :func:`plot_landscapes`: Fig. 3's plot, one panel per model, one curve per direction.

Cost: ``1 + directions x (points - 1)`` PGD runs on ``n`` examples (``g(0)`` is shared by the directions: every
grid point's PGD draws the same random starts, so ``g(0)`` is the same number in every direction).
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill.core.attacks import frozen_parameters, pgd
from robust_distill.core.threat import ThreatModel
from robust_distill.data.memory import to_float
from robust_distill.engine.evaluation import chunk_seed
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_write

__all__ = ["DEFAULT_LEVELS", "filter_normalized_direction", "s_grid", "craft_adversarial", "loss_and_accuracy",
           "adversarial_loss", "sharpness", "landscape_problems", "Landscape", "weight_landscape",
           "plot_landscapes"]

#: the levels |s| of the sharpness summary, as fractions of ``s_max``
DEFAULT_LEVELS = (0.25, 0.5, 1.0)


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """A random direction in weight space, filter-normalised (Li et al. 2018, Sec. 4).

    For every parameter ``w`` of dimension >= 2, ``d ~ N(0, I)`` of its shape, then each filter ``i`` (slice along
    dim 0: a conv's output channel, a linear layer's output neuron) rescaled, ``d_i <- d_i / ||d_i|| * ||w_i||``
    (Frobenius norms; a zero filter of ``w`` gets a zero direction). Parameters of dimension <= 1 (biases,
    BatchNorm's weight and bias) get a zero direction, as in Li et al.'s ``ignore='biasbn'`` and Wu et al.
    The draws come from ``generator`` (on the CPU, float32, in ``named_parameters`` order, for the >= 2-D
    parameters only), so a seed fixes the direction, whatever the weights' values and device.

    Returns ``{parameter name: direction}`` (same shape, dtype and device as the parameter).
    """
    direction = {}
    for name, w in model.named_parameters():
        if w.dim() <= 1:
            direction[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        w_norm = w.detach().float().cpu().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1)
        scale = (w_norm / (d_norm + 1e-10)).view(-1, *([1] * (w.dim() - 1)))
        direction[name] = (d * scale).to(device=w.device, dtype=w.dtype)
    return direction


def s_grid(points: int, s_max: float = 1.0) -> list[float]:
    """``points`` values of ``s`` evenly spaced on ``[-s_max, s_max]`` (odd ``points``: 0 is on it, exactly)."""
    half = points // 2
    return [s_max * (i / half) for i in range(-half, half + 1)]  # i / half first: the ends are exactly +-s_max


def _ce_sum(model: nn.Module, y: Tensor):
    return lambda x_adv: F.cross_entropy(model(x_adv), y, reduction="sum")


def craft_adversarial(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int = 0,
                      batch_size: int = 500) -> Tensor:
    """PGD on the CE loss (the inner max of ``rho(w)``): ``threat.steps`` sign-gradient steps of
    ``threat.step_size`` in the L-inf ball of ``threat.eps``, from a uniform start clipped to [0, 1]
    (:func:`robust_distill.core.attacks.pgd`, torchattacks' PGD), in batches of ``batch_size``.

    The model is put in eval mode and its parameters frozen for the loop (both restored after). Batch ``k``'s random
    start is drawn right after ``torch.manual_seed(chunk_seed(seed, k))``, inside ``torch.random.fork_rng``: the
    caller's RNG is untouched and the same ``seed`` gives the same starts at every weight. Returns float inputs on
    ``x``'s device.
    """
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    out = []
    try:
        with frozen_parameters(model), torch.random.fork_rng(devices=devices):
            for k, i in enumerate(range(0, x.shape[0], batch_size)):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                torch.manual_seed(chunk_seed(seed, k))
                out.append(pgd(_ce_sum(model, yb), xb, eps=threat.eps, step_size=threat.step_size,
                               steps=threat.steps, start="uniform", clamp_start=True))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else x.clone()


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> tuple[float, float]:
    """Mean CE loss and accuracy of ``model`` (eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    try:
        for i in range(0, x.shape[0], batch_size):
            logits = model(x[i:i + batch_size]).float()
            loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
            correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    finally:
        model.train(was_training)
    return loss / x.shape[0], correct / x.shape[0]


def adversarial_loss(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int = 0,
                     batch_size: int = 500) -> tuple[float, float]:
    """``rho(w)`` (Wu et al. Eq. 1: the mean CE at PGD's adversarial examples) and the robust accuracy there."""
    x_adv = craft_adversarial(model, x, y, threat, seed=seed, batch_size=batch_size)
    return loss_and_accuracy(model, x_adv, y, batch_size)


def _interp(s: Sequence[float], values: Sequence[float], at: float) -> float:
    """Piecewise-linear interpolation of ``values`` (on the increasing grid ``s``) at ``at`` in its range."""
    tol = 1e-9 * max(abs(s[0]), abs(s[-1]), 1e-12)  # a level given as a fraction of s_max may round past an end
    at = min(max(at, s[0]), s[-1]) if s[0] - tol <= at <= s[-1] + tol else at
    for j in range(len(s) - 1):
        if s[j] <= at <= s[j + 1]:
            t = (at - s[j]) / (s[j + 1] - s[j])
            return values[j] + t * (values[j + 1] - values[j])
    raise ValueError(f"s = {at:g} is outside the grid [{s[0]:g}, {s[-1]:g}]")


def sharpness(s: Sequence[float], loss: Sequence[Sequence[float]], loss_0: float,
              levels: Sequence[float]) -> dict[str, dict[str, float]]:
    """The flatness summary of a landscape: for each level ``a``, over the directions ``k``,

        sharpness(a) = mean_k [ (g_k(a) + g_k(-a)) / 2 - g(0) ]

    (and its standard deviation and maximum over the directions): how much the adversarial loss rises, on average
    over both signs, a distance ``a`` away along a filter-normalised direction (higher = sharper; Wu et al. read
    flatness from the same rise, by eye). ``g_k(+-a)`` is interpolated linearly between grid points when ``a`` is
    not on the grid. Keys: the levels, formatted ``f"{a:g}"``.
    """
    out = {}
    for a in levels:
        rises = [(_interp(s, g, a) + _interp(s, g, -a)) / 2 - loss_0 for g in loss]
        mean = sum(rises) / len(rises)
        std = math.sqrt(sum((r - mean) ** 2 for r in rises) / (len(rises) - 1)) if len(rises) > 1 else 0.0
        out[f"{a:g}"] = {"mean": mean, "std": std, "max": max(rises)}
    return out


def landscape_problems(directions: int, points: int, s_max: float, levels: Sequence[float] | None) -> list[str]:
    """What is wrong with a landscape's settings (each with the valid choices), or ``[]``."""
    problems = []
    if not (isinstance(directions, int) and directions >= 1):
        problems.append(f"directions: expected an integer >= 1, got {directions!r}.")
    if not (isinstance(points, int) and points >= 3 and points % 2 == 1):
        problems.append(f"points: expected an odd integer >= 3 (the grid is symmetric and holds s = 0), e.g. 11 or "
                        f"21, got {points!r}.")
    if not (isinstance(s_max, (int, float)) and math.isfinite(s_max) and s_max > 0):
        problems.append(f"s_max: expected a number > 0, e.g. 1, got {s_max!r}.")
    elif levels is not None:
        bad = [a for a in levels if not 0 < a <= s_max]
        if bad or not levels:
            problems.append(f"levels: expected values in (0, s_max = {s_max:g}], e.g. "
                            f"{','.join(f'{f * s_max:g}' for f in DEFAULT_LEVELS)}, got "
                            f"{','.join(f'{a:g}' for a in levels) or 'none'}.")
    return problems


@dataclass
class Landscape:
    """One model's weight loss landscape: ``loss[k][j] = g_k(s[j])`` along direction ``k`` (and the robust
    accuracy there), ``g(0)``, the :func:`sharpness` summary and the settings that produced them."""

    s: list[float]
    loss: list[list[float]]
    accuracy: list[list[float]]
    loss_0: float
    accuracy_0: float
    sharpness: dict[str, dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_landscape(model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, directions: int = 10,
                     points: int = 11, s_max: float = 1.0, seed: int = 0, on_the_fly: bool = True,
                     batch_size: int = 500, device: str | torch.device = "cpu",
                     levels: Sequence[float] | None = None) -> Landscape:
    """The weight loss landscape ``g_k(s) = rho(w + s d_k)`` of ``model`` on ``(x, y)`` (Wu et al., Sec. 3.1).

    ``directions`` filter-normalised directions (:func:`filter_normalized_direction`, drawn in turn from one
    ``torch.Generator`` seeded with ``seed``: the first k directions of a larger call are the same), ``s`` on
    :func:`s_grid` (``points``, odd, over ``[-s_max, s_max]``). At each point the weights of a copy of the model
    (eval mode: BatchNorm uses its running statistics, which are not moved) are set to ``w + s d`` and, with
    ``on_the_fly`` (Wu et al.), PGD (``threat``; :func:`craft_adversarial`, seed ``seed``) crafts new adversarial
    examples against them; without, the examples crafted at ``s = 0`` are reused at every point. ``g(0)`` is
    computed once. ``levels`` (default: :data:`DEFAULT_LEVELS` x ``s_max``) are the ``|s|`` of the
    :func:`sharpness` summary. The caller's model is not modified.
    """
    problems = landscape_problems(directions, points, s_max, levels)
    if problems:
        raise ConfigError(problems, "landscape settings")
    levels = list(levels) if levels is not None else [f * s_max for f in DEFAULT_LEVELS]
    start = time.perf_counter()
    device = torch.device(device)
    net = copy.deepcopy(model).to(device).eval()
    x, y = to_float(x, device), y.to(device)
    params = dict(net.named_parameters())
    base = {name: p.detach().clone() for name, p in params.items()}
    grid = s_grid(points, s_max)
    centre = points // 2

    x_adv_0 = craft_adversarial(net, x, y, threat, seed=seed, batch_size=batch_size)
    loss_0, acc_0 = loss_and_accuracy(net, x_adv_0, y, batch_size)
    generator = torch.Generator().manual_seed(seed)
    loss, accuracy = [], []
    for _ in range(directions):
        d = filter_normalized_direction(net, generator)
        row_loss, row_acc = [], []
        for j, s in enumerate(grid):
            if j == centre:
                row_loss.append(loss_0)
                row_acc.append(acc_0)
                continue
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(base[name] + s * d[name])
            x_adv = craft_adversarial(net, x, y, threat, seed=seed, batch_size=batch_size) if on_the_fly \
                else x_adv_0
            value, acc = loss_and_accuracy(net, x_adv, y, batch_size)
            row_loss.append(value)
            row_acc.append(acc)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(base[name])
        loss.append(row_loss)
        accuracy.append(row_acc)
    settings = {"eps": threat.eps, "step_size": threat.step_size, "steps": threat.steps, "directions": directions,
                "points": points, "s_max": s_max, "seed": seed, "on_the_fly": on_the_fly, "n_examples": x.shape[0],
                "levels": levels}
    return Landscape(s=grid, loss=loss, accuracy=accuracy, loss_0=loss_0, accuracy_0=acc_0,
                     sharpness=sharpness(grid, loss, loss_0, levels), settings=settings,
                     seconds=time.perf_counter() - start)


def plot_landscapes(landscapes: Mapping[str, Landscape | Mapping[str, Any]], path: str | Path,
                    title: str = "") -> Path:
    """AdaAD's Fig. 3: one panel per model, the adversarial loss against ``s``, one curve per direction (shared
    y-axis). matplotlib is imported when the plot is drawn: an optional dependency, and slow to import."""
    import matplotlib  # optional: plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: plots only

    items = [(name, ls.to_dict() if isinstance(ls, Landscape) else ls) for name, ls in landscapes.items()]
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.4, 3.0 * rows + 0.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, (name, ls) in zip(axes.flat, items, strict=False):
        for k, curve in enumerate(ls["loss"]):
            ax.plot(ls["s"], curve, color=f"C{k % 10}", linewidth=1.0, alpha=0.8)
        label = "/".join(Path(name.split(":", 1)[-1]).parts[-2:])  # the run folder and the checkpoint
        summary = ", ".join(f"{a}: {v['mean']:.3f}" for a, v in ls["sharpness"].items())
        ax.set_title(f"{label}\nsharpness at |s| {summary}", fontsize=7)
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel("adversarial loss")
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
