"""The papers' analyses: robustly unlearnable samples, teacher scores, and teacher-student specialization.

* ``unlearnable_sets``: the robustly unlearnable set S_U (training samples that every given run
  misclassifies under attack at its peak-robust-accuracy epoch) and the learnable set S_L (correct in every
  run), from the per-sample records runs keep with ``eval.train_records: N`` ("Toward Understanding
  Adversarial Distillation: Why Robust Teachers Fail", ICML 2026, Sec. 3).
* ``teacher_scores``: each candidate teacher's mean predictive entropy and true-class confidence on S_U
  and S_L from one forward pass; higher entropy on S_U predicts the better teacher (same paper, Sec. 5).
* ``specialization``: normalized correlation (NC) between teacher and student nodes, best NC per teacher
  node (BNC), its mean per layer (MBNC) and the unspecialized/specialized ratio (Yang et al., AISTATS 2021,
  "Understanding Robustness in Teacher-Student Setting", Sec. 5.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_checkpoint
from .data import iterate_eval, to_float
from .losses import entropy

__all__ = ["unlearnable_sets", "teacher_scores", "normalized_correlation", "specialization", "LayerStats"]


# -------------------------------------------------------------------------------------------------
# Robustly unlearnable set
# -------------------------------------------------------------------------------------------------


def _peak_epoch(run: Path) -> int:
    import json

    summary = run / "summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text())["best_epoch"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best = [r for r in rows if r.get("is_best")]
    if not best:
        raise ValueError(f"run {run} has no evaluated epoch yet")
    return int(best[-1]["epoch"])


def unlearnable_sets(runs: Sequence[str | Path]) -> dict[str, Any]:
    """S_U and S_L over ``runs`` (each with ``train_records.pt``), at each run's peak-robust epoch.

    Returns dataset positions (indices into the dataset's own training split), sizes, labels and, per run,
    the epoch used. All runs must have recorded the same training samples.
    """
    if not runs:
        raise ValueError("give at least one run folder")
    indices, labels, correct, used = None, None, [], {}
    for run in map(Path, runs):
        path = run / "train_records.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: train the run with eval.train_records: N (e.g. 10000) "
                                    "to record per-sample robustness on the training set.")
        rec = load_checkpoint(path)
        epoch = _peak_epoch(run)
        if str(epoch) not in rec["records"]:
            raise ValueError(f"run {run}: no training-set record at its peak epoch {epoch + 1}")
        if indices is None:
            indices, labels = rec["indices"], rec["labels"]
        elif not torch.equal(indices, rec["indices"]):
            raise ValueError(f"run {run} recorded other training samples than {runs[0]}; use the same "
                             "data.val_size, data.split_seed and eval.train_records for every run.")
        correct.append(rec["records"][str(epoch)])
        used[str(run)] = epoch
    stacked = torch.stack(correct)
    su, sl = ~stacked.any(0), stacked.all(0)
    return {"indices_unlearnable": indices[su].tolist(), "indices_learnable": indices[sl].tolist(),
            "labels_unlearnable": labels[su].tolist(), "labels_learnable": labels[sl].tolist(),
            "size_unlearnable": int(su.sum()), "size_learnable": int(sl.sum()), "n_recorded": int(indices.numel()),
            "runs": used}


# -------------------------------------------------------------------------------------------------
# Teacher scores
# -------------------------------------------------------------------------------------------------


@torch.no_grad()
def _entropy_confidence(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device
                        ) -> tuple[float, float]:
    ent, conf = [], []
    for _, xb, yb in iterate_eval(x, y, batch_size):
        logits = model(to_float(xb, device)).float()
        ent.append(entropy(logits).cpu())
        conf.append(F.softmax(logits, 1).gather(1, yb.to(device)[:, None]).squeeze(1).cpu())
    return torch.cat(ent).mean().item(), torch.cat(conf).mean().item()


def teacher_scores(teachers: Mapping[str, nn.Module], train_x: Tensor, train_y: Tensor, sets: Mapping[str, Any],
                   *, batch_size: int = 500, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Mean entropy and true-class confidence of each teacher on S_U and S_L, ranked by entropy on S_U.

    ``train_x``/``train_y`` is the dataset's whole training split; ``sets`` is :func:`unlearnable_sets`'s
    output. One forward pass per teacher over S_U and S_L.
    """
    device = torch.device(device)
    su, sl = torch.tensor(sets["indices_unlearnable"]), torch.tensor(sets["indices_learnable"])
    out = []
    for name, model in teachers.items():
        model = model.eval().to(device)
        row: dict[str, Any] = {"teacher": name}
        for key, idx in (("unlearnable", su), ("learnable", sl)):
            if idx.numel() == 0:
                row[key] = {"entropy": float("nan"), "confidence": float("nan"), "n": 0}
                continue
            ent, conf = _entropy_confidence(model, train_x[idx], train_y[idx], batch_size, device)
            row[key] = {"entropy": ent, "confidence": conf, "n": int(idx.numel())}
        out.append(row)
    out.sort(key=lambda r: -r["unlearnable"]["entropy"])
    for rank, row in enumerate(out, 1):
        row["rank"] = rank
    return out


# -------------------------------------------------------------------------------------------------
# Specialization
# -------------------------------------------------------------------------------------------------


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
    store: dict[str, Tensor] = {}  # cloned: a later in-place op (ReLU(inplace=True)) must not change it
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
