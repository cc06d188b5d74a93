"""Teacher-student specialization (Yang et al., AISTATS 2021, "Understanding Robustness in Teacher-Student
Setting", Sec. 5.2): normalized correlation (NC) between teacher and student nodes, best NC per teacher node
(BNC), its mean per layer (MBNC) and the unspecialized/specialized ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill.data.memory import iterate_eval, to_float

__all__ = ["normalized_correlation", "specialization", "LayerStats"]




def _standardize(f: Tensor) -> Tensor:
    """(M, nodes) -> zero mean, unit variance per node (constant nodes become 0)."""
    f = f - f.mean(0, keepdim=True)
    std = f.std(0, unbiased=False, keepdim=True)
    return torch.where(std > 1e-8, f / std.clamp_min(1e-8), torch.zeros_like(f))


def normalized_correlation(student: Tensor, teacher: Tensor) -> Tensor:
    """NC matrix rho[k, j] between student node k and teacher node j over M observations.

    ``student`` (M, K) and ``teacher`` (M, J) hold each node's activations; rho is the cosine similarity
    of the standardized activations, i.e. Pearson's correlation (Tian et al. 2019; Yang et al. 2021, Sec. 5.2).
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError("activations over different numbers of observations: "
                         f"{student.shape[0]} vs {teacher.shape[0]}")
    return _standardize(student.double()).T @ _standardize(teacher.double()) / student.shape[0]


def _nodes(act: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Layer output -> (observations, nodes): a conv channel is a node observed at every position."""
    if act.dim() == 4:
        if size is not None and tuple(act.shape[-2:]) != size:
            act = F.adaptive_avg_pool2d(act, size)
        return act.permute(0, 2, 3, 1).reshape(-1, act.shape[1])
    return act.reshape(act.shape[0], -1)


@dataclass
class LayerStats:
    teacher_layer: str
    student_layer: str
    bnc: list[float]
    mbnc: float
    unspecialized: int
    specialized: int
    rho: Tensor | None = field(default=None, repr=False)  # (student nodes, teacher nodes) NC matrix

    @property
    def ratio(self) -> float:
        return self.unspecialized / self.specialized if self.specialized else float("inf")


def _capture(model: nn.Module, layers: Sequence[str], x: Tensor) -> dict[str, Tensor]:
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        names = [n for n in modules if n]
        raise ValueError(f"no layer {missing[0]!r} in {type(model).__name__}; its layers are: "
                         f"{', '.join(names[:60])}{' ...' if len(names) > 60 else ''}")
    store: dict[str, Tensor] = {}
    handles = [modules[name].register_forward_hook(
        lambda m, i, o, name=name: store.__setitem__(name, o.detach().clone())) for name in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return store


def specialization(teacher: nn.Module, student: nn.Module, pairs: Sequence[tuple[str, str]], x: Tensor, *,
                   batch_size: int = 256, device: str | torch.device = "cpu", unspecialized_below: float = 0.8,
                   specialized_above: float = 0.9) -> list[LayerStats]:
    """BNC/MBNC per (teacher layer, student layer) pair on the inputs ``x``.

    Conv layers with different spatial sizes are average-pooled to the smaller one so that a node of either
    network is observed at the same positions. Activations of the whole sample are gathered, then NC is
    computed once per layer pair.
    """
    device = torch.device(device)
    teacher, student = teacher.eval().to(device), student.eval().to(device)
    t_layers, s_layers = [p[0] for p in pairs], [p[1] for p in pairs]
    t_acts: dict[str, list[Tensor]] = {n: [] for n in t_layers}
    s_acts: dict[str, list[Tensor]] = {n: [] for n in s_layers}
    for _, xb, _ in iterate_eval(x, torch.zeros(x.shape[0]), batch_size):
        xb = to_float(xb, device)
        for store, acts in ((_capture(teacher, t_layers, xb), t_acts), (_capture(student, s_layers, xb), s_acts)):
            for name, a in store.items():
                acts[name].append(a.cpu())
    results = []
    for t_name, s_name in pairs:
        t_act, s_act = torch.cat(t_acts[t_name]), torch.cat(s_acts[s_name])
        size = None
        if t_act.dim() == 4 and s_act.dim() == 4:
            size = (min(t_act.shape[2], s_act.shape[2]), min(t_act.shape[3], s_act.shape[3]))
        elif t_act.dim() != s_act.dim():
            raise ValueError(f"cannot compare {t_name} ({t_act.dim()}-d output) with {s_name} ({s_act.dim()}-d)")
        rho = normalized_correlation(_nodes(s_act, size), _nodes(t_act, size))
        bnc = rho.max(dim=0).values  # best student node for each teacher node
        results.append(LayerStats(t_name, s_name, bnc.tolist(), bnc.mean().item(),
                                  int((bnc < unspecialized_below).sum()), int((bnc > specialized_above).sum()), rho))
    return results
