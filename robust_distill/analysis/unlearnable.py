"""Which teacher? The robustly unlearnable set and teacher scores ("Why Robust Teachers Fail", ICML 2026).

* ``unlearnable_sets``: the robustly unlearnable set S_U (training samples that every given run
  misclassifies under attack at its peak-robust-accuracy epoch) and the learnable set S_L (correct in every
  run), from the per-sample records runs keep with ``eval.train_records: N`` ("Toward Understanding
  Adversarial Distillation: Why Robust Teachers Fail", ICML 2026, Sec. 3).
* ``teacher_scores``: each candidate teacher's mean predictive entropy and true-class confidence on S_U
  and S_L from one forward pass; higher entropy on S_U predicts the better teacher (same paper, Sec. 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill.core.losses import entropy
from robust_distill.core.manager import Registries, get_registries
from robust_distill.data.memory import iterate_eval, to_float
from robust_distill.data.splits import split_images
from robust_distill.errors import InputError
from robust_distill.files.atomic import read_json, read_jsonl
from robust_distill.files.checkpoint import load_checkpoint

__all__ = ["unlearnable_sets", "teacher_scores", "set_images", "jaccard", "EPOCH_RULES"]



EPOCH_RULES = ("peak", "last")


def jaccard(a: Set[int], b: Set[int]) -> float:
    """The Jaccard index |A & B| / |A | B| of two sets of training indices (NaN when both are empty), how the
    S_U of two epoch rules or two groups of runs are compared."""
    return len(a & b) / len(a | b) if a | b else float("nan")


def _peak_epoch(run: Path) -> int:
    summary = run / "summary.json"
    if summary.is_file():
        return int(read_json(summary, "run summary")["best_epoch"])
    rows = read_jsonl(run / "metrics.jsonl", "metrics file")
    best = [r for r in rows if r.get("is_best")]
    if not best:
        raise InputError(f"run {str(run)!r} has no evaluated epoch yet: wait for its first evaluation.")
    return int(best[-1]["epoch"])


def unlearnable_sets(runs: Sequence[str | Path], *, at: str = "peak") -> dict[str, Any]:
    """S_U and S_L over ``runs`` (each with ``train_records.pt``), at each run's peak-robust epoch.

    ``at="peak"`` is the paper's rule (Sec. 3: each model at its best robust epoch, so that robust overfitting
    does not shape the sets); ``at="last"`` takes each run's last recorded epoch instead, to measure what the rule
    changes in a run that overfits. Returns dataset positions (indices into the dataset's own training split),
    sizes, labels and, per run, the epoch used. All runs must have recorded the same training samples.
    """
    if not runs:
        raise InputError("give at least one run folder")
    if at not in EPOCH_RULES:
        raise InputError(f"at must be one of {', '.join(EPOCH_RULES)} (the epoch of each run whose records are "
                         f"used), got {at!r}")
    indices, labels, correct, used = None, None, [], {}
    for run in map(Path, runs):
        path = run / "train_records.pt"
        if not run.is_dir():
            raise FileNotFoundError(f"run folder {str(run)!r} does not exist" + (" (it is a file)." if run.exists()
                                                                                 else "."))
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: train the run with eval.train_records: N (e.g. 10000) "
                                    "to record per-sample robustness on the training set.")
        rec = load_checkpoint(path)
        epoch = _peak_epoch(run) if at == "peak" else max(map(int, rec["records"]))
        if str(epoch) not in rec["records"]:
            raise InputError(f"run {str(run)!r}: no training-set record at its {at} epoch {epoch + 1}")
        if indices is None:
            indices, labels = rec["indices"], rec["labels"]
        elif not torch.equal(indices, rec["indices"]):
            raise InputError(f"run {run} recorded other training samples than {runs[0]}; use the same "
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


def set_images(sets: Mapping[str, Any], indices: Sequence[int], regs: Registries | None = None
               ) -> tuple[Tensor, Tensor]:
    """The training images and labels at dataset positions ``indices``, from the dataset named in the
    ``data`` section of an ``unlearnable`` JSON (as ``teacher-score`` reads them: the dataset plugin's loader,
    then only those images of its training split)."""
    regs = regs or get_registries()
    data = sets.get("data") or {}
    bundle = regs.call(regs.datasets.get(data.get("dataset", "cifar10")).load, root=data.get("root"),
                       **(data.get("options") or {}))
    return split_images(bundle, "train", torch.tensor(list(indices), dtype=torch.int64))
