"""Inactive-channel pruning (Yang et al., AISTATS 2021, Sec. 5.1 and footnote 3).

The specialization paper trains its teacher with 64 channels per layer, then removes the *inactive* ones,
"considering the norm of the fan-out weights" (64-64-64-64 -> 45-32-32-20 on CIFAR-10), and gives the
student 1.1x the pruned widths. A network supports pruning by implementing :class:`Prunable`:
``fanout_norms()`` (one vector per prunable layer) and ``pruned(keep)`` (a smaller copy computing with the
kept channels only, plus the constructor options that rebuild it). ``robust-distill prune`` applies
:func:`prune_checkpoint` to a saved model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from robust_distill.data.memory import iterate_eval, to_float
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import FORMAT, build_from_checkpoint

__all__ = ["Prunable", "select_active", "prune_inactive_channels", "scaled_widths", "prune_checkpoint"]


@runtime_checkable
class Prunable(Protocol):
    def fanout_norms(self) -> list[Tensor]:
        """One vector per prunable layer: the L2 norm of every channel's outgoing weights."""

    def pruned(self, keep: Sequence[Tensor]) -> tuple[nn.Module, dict[str, Any]]:
        """A copy with only the channels ``keep[l]`` (sorted indices) of each layer, and the constructor
        options (e.g. ``{"widths": [...]}``) that build its architecture."""


def select_active(norms: Sequence[Tensor], *, threshold: float | None = None,
                  widths: Sequence[int] | None = None) -> list[Tensor]:
    """Indices of the channels kept in each layer.

    ``threshold``: a channel is inactive when its fan-out norm is below ``threshold`` times the largest of
    its layer. ``widths``: keep that many channels per layer, those of largest fan-out norm (the paper gives
    the pruned widths). Exactly one of the two.
    """
    if (threshold is None) == (widths is None):
        raise ValueError("give either threshold (relative fan-out norm) or widths (channels to keep per layer)")
    if widths is not None and len(widths) != len(norms):
        raise ValueError(f"widths has {len(widths)} entries but the network has {len(norms)} prunable layers")
    keep = []
    for layer, n in enumerate(norms):
        if threshold is not None:
            idx = (n >= threshold * n.max()).nonzero().flatten()
        else:
            w = int(widths[layer])  # type: ignore[index]
            if not 1 <= w <= n.numel():
                raise ValueError(f"layer {layer}: cannot keep {w} of {n.numel()} channels")
            idx = n.argsort(descending=True)[:w]
        keep.append(idx.sort().values)
    return keep


def prune_inactive_channels(model: nn.Module, *, threshold: float | None = None,
                            widths: Sequence[int] | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Remove the inactive channels of a :class:`Prunable` network.

    Returns ``(pruned model, constructor options, report)``; the report lists each layer's fan-out norms,
    the kept channels and the widths before and after.
    """
    if not isinstance(model, Prunable):
        raise TypeError(f"{type(model).__name__} does not support channel pruning: it needs fanout_norms() and "
                        "pruned(keep) (robust_distill.engine.pruning.Prunable), as the specialization paper's "
                        "timm:tsconv4_teacher / tsconv4_student have.")
    norms = [n.detach().float().cpu() for n in model.fanout_norms()]
    keep = select_active(norms, threshold=threshold, widths=widths)
    small, options = model.pruned(keep)
    report = {"threshold": threshold, "widths_before": [int(n.numel()) for n in norms],
              "widths_after": [int(k.numel()) for k in keep], "kept": [k.tolist() for k in keep],
              "fanout_norms": [n.tolist() for n in norms]}
    return small, options, report


def scaled_widths(widths: Sequence[int], scale: float) -> list[int]:
    """``scale`` x the widths, rounded half up (1.1 x 45-32-32-20 = 50-35-35-22, the paper's student)."""
    return [max(1, math.floor(scale * w + 0.5)) for w in widths]


@torch.no_grad()
def prune_checkpoint(path: str | Path, out: str | Path, regs: Any, *, threshold: float | None = None,
                     widths: Sequence[int] | None = None, check_x: Tensor | None = None,
                     student_scale: float = 1.1) -> dict[str, Any]:
    """Prune the network saved in ``path`` and save it to ``out`` as a robust-distill checkpoint.

    ``check_x`` (images) measures how much the logits move (largest absolute change, and the fraction of
    images whose predicted class changes). Returns the report, with the widths of a student
    ``student_scale`` x the pruned teacher.
    """
    model, ckpt = build_from_checkpoint(path, regs)
    small, options, report = prune_inactive_channels(model, threshold=threshold, widths=widths)
    spec = dict(ckpt["model"]) if ckpt.get("format") == FORMAT else {}
    if not spec:
        raise ValueError(f"{str(path)!r} is not a robust-distill checkpoint; prune a model trained with "
                         "`robust-distill train`")
    spec["kwargs"] = {**spec.get("kwargs", {}), **options}
    report["student_widths"] = scaled_widths(report["widths_after"], student_scale)
    report["student_scale"] = student_scale
    if check_x is not None:
        diffs, flips, n = 0.0, 0, 0
        for _, xb, _ in iterate_eval(check_x, torch.zeros(check_x.shape[0]), 500):
            xb = to_float(xb, "cpu")
            a, b = model(xb), small(xb)
            diffs = max(diffs, float((a - b).abs().max()))
            flips += int((a.argmax(1) != b.argmax(1)).sum())
            n += xb.shape[0]
        report.update(check_images=n, max_abs_logit_change=diffs, prediction_changes=flips / max(n, 1))
    atomic_save({"format": FORMAT, "model": spec, "state_dict": small.state_dict(), "epoch": ckpt.get("epoch"),
                 "config": ckpt.get("config", {}), "pruning": {k: v for k, v in report.items()
                                                               if k != "fanout_norms"}}, out)
    report["out"] = str(out)
    report["model"] = spec
    return report
