"""Robust feature training in the oracle teacher-student setting (Yang et al., AISTATS 2021, App. A.11, Eq. 35):
the objective against a hand computation, the optimisation (alpha = 0 is the project's representation inversion,
the objective falls, the minimiser is x itself when f_M is the identity), the dataset file and the
``robust_features`` dataset, and a tiny fine-tuning run through the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robust_distill.analysis.inversion import invert
from robust_distill.analysis.robust_features import (
    rft_objective,
    robust_feature_stats,
    robust_features,
    save_robust_features,
    training_positions,
)
from robust_distill.config import resolve_config
from robust_distill.engine.run import build_student, load_data
from robust_distill.engine.trainer import train
from robust_distill_plugins.specialization_models import TeacherStudentConvNet

from .handcalc import linear


def flat_linear(seed: int) -> nn.Module:
    """(B, 1, 1, 5) images -> 3 logits; the representation (the classifier's input) is the flattened image."""
    return nn.Sequential(nn.Flatten(), linear(seed))


def test_objective_by_hand() -> None:
    model, teacher = flat_linear(1), flat_linear(2)
    x = torch.tensor([[[[0.1, 0.2, 0.3, 0.4, 0.5]]], [[[0.9, 0.8, 0.7, 0.6, 0.5]]]])
    x_r = x.clone()
    x_r[0, 0, 0, 0] += 0.3  # sample 0 moved along one pixel by 0.3, sample 1 by 0.4 along another
    x_r[1, 0, 0, 2] -= 0.4
    value, d_rep, d_t = rft_objective(model, teacher, x, 0.5)(x_r)
    w = teacher[1].weight  # T(x_r) - T(x) = W (x_r - x): column 0 times 0.3, column 2 times -0.4
    t0 = math.sqrt(sum((0.3 * w[k, 0].item()) ** 2 for k in range(3)))
    t1 = math.sqrt(sum((0.4 * w[k, 2].item()) ** 2 for k in range(3)))
    assert d_rep.tolist() == pytest.approx([0.3, 0.4], rel=1e-5)  # f_M = identity: the pixel distance
    assert d_t.tolist() == pytest.approx([t0, t1], rel=1e-5)
    assert value.tolist() == pytest.approx([0.5 * t0 + 0.3, 0.5 * t1 + 0.4], rel=1e-5)


def convnet(seed: int, widths=(6, 5, 5, 4)) -> TeacherStudentConvNet:
    torch.manual_seed(seed)
    return TeacherStudentConvNet(num_classes=3, in_chans=1, widths=widths, kernel_sizes=3, strides=1)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 10, 10, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_representation_inversion() -> None:
    """Eq. 34 (alpha = 0) takes the steps of robust_distill.analysis.inversion.invert (up to float rounding)."""
    model, teacher, x = convnet(1), convnet(2), images()
    ours = robust_features(model, teacher, x, alpha=0.0, steps=5, start="noise", seed=3)
    theirs = invert(model, x, steps=5, start="noise", seed=3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_the_objective_falls_and_the_teacher_term_keeps_the_teacher_class() -> None:
    model, teacher, x = convnet(1), convnet(2), images(16)
    history: list[float] = []
    x_r = robust_features(model, teacher, x, alpha=0.5, steps=30, history=history)
    assert len(history) == 31 and history[-1] < 0.5 * history[0]
    assert 0 <= x_r.min() and x_r.max() <= 1 and x_r.shape == x.shape
    assert model.training and all(p.requires_grad for p in (*model.parameters(), *teacher.parameters()))
    free = robust_feature_stats(model, teacher, x, robust_features(model, teacher, x, alpha=0.0, steps=30))
    tied = robust_feature_stats(model, teacher, x, robust_features(model, teacher, x, alpha=5.0, steps=30))
    assert tied["teacher_distance"] < free["teacher_distance"]
    assert tied["teacher_agreement"] >= free["teacher_agreement"]


def test_with_an_identity_representation_the_images_return_to_x() -> None:
    """f_M = the image itself: both terms vanish only at x_r = x, so from another image the descent goes back."""
    model, teacher = flat_linear(1), flat_linear(2)
    x = 0.2 + 0.6 * torch.rand(6, 1, 1, 5, generator=torch.Generator().manual_seed(0))
    x_r = robust_features(model, teacher, x, alpha=0.5, steps=100, step_size=0.5, start="other")
    start_distance = (x - x.roll(1, 0)).flatten(1).norm(dim=1).mean()
    assert (x_r - x).flatten(1).norm(dim=1).max() < 0.02 * start_distance


SYNTH = {"n_train": 96, "n_test": 32, "size": 10, "num_classes": 3, "channels": 1}


def test_the_dataset_replaces_exactly_the_saved_training_images(regs, tmp_path: Path) -> None:
    base = regs.datasets.get("synthetic").load(**SYNTH)
    new = torch.full((2, 1, 10, 10), 0.5)
    new[1] = 1.0
    path = save_robust_features(tmp_path / "d.pt", new, torch.tensor([2, 5]), base="synthetic", base_options=SYNTH,
                                settings={"alpha": 0.5})
    data = regs.call(regs.datasets.get("robust_features").load, file=str(path))
    assert data.info.name == "robust_features" and data.info.input_shape == (1, 10, 10)
    assert data.train_x.dtype == torch.uint8
    assert data.train_x[2].unique().tolist() == [128] and data.train_x[5].unique().tolist() == [255]  # 0.5 * 255
    keep = [i for i in range(96) if i not in (2, 5)]
    assert torch.equal(data.train_x[keep], base.train_x[keep]) and torch.equal(data.test_x, base.test_x)
    assert torch.equal(data.train_y, base.train_y)
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a robust-feature dataset file"):
        regs.call(regs.datasets.get("robust_features").load, file=str(tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="needs data.options.file"):
        regs.call(regs.datasets.get("robust_features").info)


def _checkpoint(path: Path, key: str, widths: list[int], seed: int, regs) -> str:
    from robust_distill.core.components import DatasetInfo
    from robust_distill.engine.run import model_spec
    from robust_distill.files.atomic import atomic_save
    from robust_distill.files.checkpoint import FORMAT

    info = DatasetInfo("synthetic", 3, (1, 10, 10))
    kwargs = {"widths": widths, "kernel_sizes": 3, "strides": 1}
    torch.manual_seed(seed)
    model = build_student(key, kwargs, info, regs)
    atomic_save({"format": FORMAT, "model": model_spec(key, kwargs, info), "state_dict": model.state_dict(),
                 "epoch": 1, "config": {}}, path)
    return str(path)


def test_rft_fine_tunes_a_student_on_the_robust_features_with_oracle_labels(regs, tiny_raw, tmp_path: Path) -> None:
    from robust_distill.files.checkpoint import build_from_checkpoint, load_checkpoint

    teacher_path = _checkpoint(tmp_path / "t.pt", "timm:tsconv4_teacher", [6, 5, 5, 4], 0, regs)
    st_path = _checkpoint(tmp_path / "st.pt", "timm:tsconv4_student", [7, 6, 6, 4], 1, regs)
    teacher, _ = build_from_checkpoint(teacher_path, regs)
    robust, _ = build_from_checkpoint(st_path, regs)  # stands in for the AT student f
    base = regs.datasets.get("synthetic").load(**SYNTH)
    pos = training_positions(base, val_size=32, train_subset=48)
    x_r = robust_features(robust, teacher, base.train_x[pos], steps=3)
    file = save_robust_features(tmp_path / "rf.pt", x_r, pos, base="synthetic", base_options=SYNTH)
    raw = tiny_raw("oracle_logit")
    raw["data"] = {**raw["data"], "val_size": 32, "train_subset": 48, "dataset": "oracle",
                   "options": {"base": "robust_features", "base_options": {"file": str(file)},
                               "teacher": f"checkpoint:{teacher_path}"}}
    raw.update(teachers={"oracle": f"checkpoint:{teacher_path}"}, output_dir=str(tmp_path / "rft"),
               student={"key": "timm:tsconv4_student", "kwargs": {"widths": [7, 6, 6, 4], "kernel_sizes": 3,
                                                                  "strides": 1, "checkpoint_path": st_path}})
    raw["optim"] = {**raw["optim"], "epochs": 1, "schedule": {"key": "constant"}}
    raw["eval"] = {"n_examples": 32, "attacks": ["clean"], "select": "clean"}
    cfg = resolve_config(raw, regs)
    splits = load_data(cfg, regs)
    stored = (x_r * 255).round().to(torch.uint8)
    assert torch.equal(splits.train_index, pos) and torch.equal(splits.train_x, stored)  # trains on x_r only
    assert torch.equal(splits.val_x, base.train_x[splits.val_index])  # validated on real images
    with torch.no_grad():
        assert torch.equal(splits.train_y, teacher(stored.float() / 255).argmax(1))  # the oracle's labels of x_r
    start = build_student(cfg.student.key, cfg.student.kwargs, splits.info, regs).state_dict()
    for k, v in load_checkpoint(st_path)["state_dict"].items():
        assert torch.equal(start[k], v), k  # fine-tuning starts from the ST student
    summary = train(cfg, regs=regs, resume=False)
    assert 0 <= summary["best"]["val_clean"] <= 1
