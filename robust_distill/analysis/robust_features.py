"""The robust-feature dataset in the teacher-student setting (Yang et al., AISTATS 2021, App. A.11, Eq. 34-35;
Ilyas et al., NeurIPS 2019, "Adversarial examples are not bugs, they are features", Sec. 3.1).

From a robust (AT) student ``f``, every training image ``x`` gets a robust-feature image

    x_r = argmin_{x_r in [0,1]^d}  alpha ||L_t(x_r) - L_t(x)||_2 + ||f_M(x) - f_M(x_r)||_2        (Eq. 35)

started from a random other training image or from noise; ``f_M`` is ``f``'s representation and ``L_t`` the oracle
teacher's logits. With ``alpha = 0`` it is Ilyas et al.'s Eq. 34; the teacher term (``alpha = 0.5`` in the paper)
keeps ``x_r`` in ``x``'s class as the oracle sees it ("the generated x_r may lie in different categories with x
from the teacher's perspective"). A model is then trained on the ``x_r`` with the teacher's logit feedback
(robust feature training, RFT: ``oracle_logit`` on the dataset ``robust_features`` wrapped by ``oracle``, whose
labels are the teacher's on ``x_r``), fine-tuned from a standard-trained student, and compared with ST and AT
(Table 5).

Choices the text leaves open: ``f_M`` is the input of ``f``'s classifier layer (the penultimate features, as in
Ilyas et al. and :mod:`robust_distill.analysis.inversion`, whose ``representation`` reads it); the optimiser is
:func:`~robust_distill.analysis.inversion.invert`'s normalised-gradient L2 descent
(:func:`~robust_distill.analysis.inversion.descend`: step decayed linearly, the iterate of lowest objective kept;
with ``alpha = 0`` it returns what ``invert`` returns); the norms are not squared, as written in Eq. 35.

:func:`save_robust_features` writes the images of a set of training positions; the dataset plugin
``robust_features`` (``plugins/robust_features.py``) loads a base dataset with those images replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robust_distill.analysis.inversion import classifier_layer, descend, representation, start_images
from robust_distill.core.components import DataBundle
from robust_distill.data.memory import to_float
from robust_distill.data.splits import make_splits
from robust_distill.errors import ConfigError
from robust_distill.files.atomic import atomic_save

__all__ = ["FORMAT", "STARTS", "rft_objective", "robust_features", "robust_feature_stats", "training_positions",
           "save_robust_features"]

FORMAT = "robust-distill/robust-features/1"
#: where the optimisation of ``x_r`` starts: uniform noise, or another image of the set (a random derangement)
STARTS = ("other", "noise")


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def rft_objective(model: nn.Module, teacher: nn.Module, x: Tensor, alpha: float,
                  layer: nn.Module | None = None) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """``x_r -> (objective, representation distance, teacher distance)``, each per sample (Eq. 35):
    ``alpha ||L_t(x_r) - L_t(x)||_2 + ||f_M(x) - f_M(x_r)||_2``. Targets are computed once, on ``x``."""
    layer = layer if layer is not None else classifier_layer(model)[1]
    with torch.no_grad():
        r_target = representation(model, x, layer)[0]
        t_target = teacher(x) if alpha else None

    def objective(x_r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d_rep = _distance(representation(model, x_r, layer)[0], r_target)
        d_t = _distance(teacher(x_r), t_target) if t_target is not None else torch.zeros_like(d_rep)
        return alpha * d_t + d_rep, d_rep, d_t

    return objective


def _distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample L2 distance, with a gradient that stays finite at 0."""
    return (a - b).flatten(1).pow(2).sum(1).clamp_min(1e-24).sqrt()


def robust_features(model: nn.Module, teacher: nn.Module, x: Tensor, *, alpha: float = 0.5, steps: int = 200,
                    step_size: float = 3.0, start: str | Tensor = "other", seed: int = 0, anneal: bool = True,
                    batch_size: int = 128, history: list[float] | None = None) -> Tensor:
    """The robust-feature images ``x_r`` of ``x`` (Eq. 35) for the robust model ``model`` and the oracle ``teacher``.

    Normalised-gradient (L2) descent, ``x_r <- clip_[0,1](x_r - a_t g / ||g||_2)``, ``steps`` times from ``start``
    (``"other"``: another image of ``x``, Ilyas et al.'s; ``"noise"``: uniform; or a tensor), ``a_t = step_size``
    decayed linearly to ``step_size / steps`` when ``anneal``; each sample's iterate of lowest objective is
    returned. Both models run in eval mode and are left as given. ``history`` receives the mean objective before
    each step and after the last. Deterministic from ``seed``.

    :param x: images in [0, 1] (float) or uint8.
    :param alpha: weight of the teacher term (0.5 in the paper; 0: Ilyas et al.'s Eq. 34).
    :return: float images in [0, 1], the shape of ``x``.
    """
    if steps < 0 or step_size <= 0 or batch_size < 1 or alpha < 0:
        raise ConfigError([f"steps >= 0, step_size > 0, batch_size >= 1 and alpha >= 0, got {steps}, {step_size}, "
                           f"{batch_size}, {alpha}"], "robust-feature arguments")
    device = _device(model)
    x = to_float(x, device)
    x0 = start_images(x, start, seed, STARTS, "robust-feature arguments")
    layer = classifier_layer(model)[1]
    modes = [(m, m.training) for net in (model, teacher) for m in net.modules()]
    flags = [(p, p.requires_grad) for net in (model, teacher) for p in net.parameters()]
    model.eval()
    teacher.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    out, traces = [], []
    try:
        for lo in range(0, x.shape[0], batch_size):
            objective = rft_objective(model, teacher, x[lo:lo + batch_size], alpha, layer)
            trace: list[Tensor] = []
            out.append(descend(lambda x_r, f=objective: f(x_r)[0], x0[lo:lo + batch_size], steps=steps,
                               step_size=step_size, anneal=anneal, trace=trace))
            traces.append(torch.stack(trace))
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
    if history is not None:
        history.extend(torch.cat(traces, 1).mean(1).tolist())
    return torch.cat(out)


@torch.no_grad()
def robust_feature_stats(model: nn.Module, teacher: nn.Module, x: Tensor, x_r: Tensor, alpha: float = 0.5,
                         batch_size: int = 500) -> dict[str, float]:
    """Means over the set: the relative representation error ``||f_M(x_r) - f_M(x)|| / ||f_M(x)||``, the teacher
    distance ``||L_t(x_r) - L_t(x)||``, the share of ``x_r`` the teacher puts in ``x``'s class, the share the robust
    model does, and the L2 pixel distance of ``x_r`` to ``x``."""
    device = _device(model)
    layer = classifier_layer(model)[1]
    sums = {"rel_rep_error": 0.0, "teacher_distance": 0.0, "teacher_agreement": 0.0, "model_agreement": 0.0,
            "pixel_l2": 0.0}
    training = [(m, m.training) for net in (model, teacher) for m in net.modules()]
    model.eval()
    teacher.eval()
    try:
        for lo in range(0, x.shape[0], batch_size):
            xb, rb = to_float(x[lo:lo + batch_size], device), to_float(x_r[lo:lo + batch_size], device)
            (r, logits), (r_r, logits_r) = representation(model, xb, layer), representation(model, rb, layer)
            t, t_r = teacher(xb), teacher(rb)
            sums["rel_rep_error"] += float(((r_r - r).norm(dim=1) / r.norm(dim=1).clamp_min(1e-12)).sum())
            sums["teacher_distance"] += float((t_r - t).norm(dim=1).sum())
            sums["teacher_agreement"] += float((t_r.argmax(1) == t.argmax(1)).sum())
            sums["model_agreement"] += float((logits_r.argmax(1) == logits.argmax(1)).sum())
            sums["pixel_l2"] += float((rb - xb).flatten(1).norm(dim=1).sum())
    finally:
        for m, mode in training:
            m.training = mode
    return {k: v / max(x.shape[0], 1) for k, v in sums.items()}


def training_positions(bundle: DataBundle, *, val_size: int, split_seed: int = 0,
                       train_subset: int | None = None) -> Tensor:
    """The positions, in ``bundle``'s training split, of the images a run with these ``data`` settings trains on
    (the engine's split: :func:`robust_distill.data.splits.make_splits`)."""
    return make_splits(bundle, val_size=val_size, split_seed=split_seed, train_subset=train_subset).train_index


def save_robust_features(path: str | Path, images: Tensor, indices: Tensor, *, base: str,
                         base_options: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None
                         ) -> Path:
    """Write the ``robust_features`` dataset file: ``images`` (float in [0, 1], stored as uint8) replace the
    training images of the dataset ``base`` at the positions ``indices`` of its training split."""
    if images.shape[0] != indices.numel():
        raise ConfigError([f"{images.shape[0]} images for {indices.numel()} training positions"],
                          "robust-feature dataset")
    stored = images if images.dtype == torch.uint8 else (images.detach().float().clamp(0, 1) * 255).round().to(
        torch.uint8)
    atomic_save({"format": FORMAT, "base": base, "base_options": dict(base_options or {}),
                 "indices": indices.to(torch.int64).cpu(), "images": stored.cpu(), "settings": dict(settings or {})},
                path)
    return Path(path)
