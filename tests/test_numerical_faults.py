"""Numerical faults (issue 9, items 3 and 4): no checkpoint with a non-finite tensor is ever written, and an
outer loss that breaks its contract gets an error naming the part, its plugin and what was wrong."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from robust_distill import Method, OuterLoss, Part
from robust_distill.cli import main
from robust_distill.config import resolve_config
from robust_distill.engine.monitor import StepMonitor, nonfinite_tensors
from robust_distill.engine.trainer import train
from robust_distill.errors import CheckpointError, DivergenceError, OuterLossError
from robust_distill.files.atomic import atomic_save
from robust_distill.files.checkpoint import load_checkpoint

from .test_hooks import manager_with


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _all_finite(path: Path) -> bool:
    return not nonfinite_tensors(load_checkpoint(path))


def test_divergence_stops_before_saving_anything_non_finite(tiny_config) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.lr=1e6"])  # BatchNorm's running_var overflows in epoch 1
    with pytest.raises(DivergenceError, match=r"epoch 1 .*running_var.*optim\.lr") as info:
        train(cfg)
    assert "'student." in str(info.value) and "no checkpoint was written" in str(info.value)
    out = Path(cfg.output_dir)
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_divergence_on_resume_leaves_the_good_checkpoints_intact(tiny_config, tmp_path: Path) -> None:
    out = tmp_path / "run"  # one config (resume refuses another): the lr jumps 1e8-fold at the second epoch
    overrides = [f"output_dir={out}", "optim.schedule.key=multistep", "optim.schedule.kwargs.milestones=[1]",
                 "optim.schedule.kwargs.gamma=1.0e+8"]
    train(tiny_config("pgd_at", overrides=overrides), stop_after_epochs=1)
    before = {name: _digest(out / name) for name in ("last.pt", "best.pt", "metrics.jsonl")}
    with pytest.raises(DivergenceError, match=r"epoch 2 .*last good checkpoint.*after epoch 1"):
        train(tiny_config("pgd_at", overrides=overrides))
    assert {name: _digest(out / name) for name in before} == before
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and _all_finite(out / "last.pt")


def test_one_step_per_epoch_divergence_exits_non_zero(tiny_raw, tmp_path: Path, capsys) -> None:
    raw = tiny_raw("pgd_at", optim={"epochs": 3, "lr": 1e6})
    raw["data"]["batch_size"] = 64  # 64 training images: one step per epoch, the guard before the step sees
    path = tmp_path / "c.yaml"   # only finite losses while the update overflows BatchNorm
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 4
    err = capsys.readouterr().err
    assert "Training stopped at epoch" in err and "Traceback" not in err
    for name in ("last.pt", "best.pt"):
        p = Path(raw["output_dir"]) / name
        assert not p.exists() or _all_finite(p)


def test_atomic_save_refuses_non_finite_tensors(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    atomic_save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"'state\.w' \(1 NaN and 1 inf of 3\)"):
        atomic_save({"state": {"w": torch.tensor([1.0, math.nan, math.inf])}}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    atomic_save({"mask": torch.tensor([True]), "best": {"value": -math.inf}}, path)  # not float tensors


# -- the outer-loss contract ----------------------------------------------------------------------

BAD_RETURNS: dict[str, Any] = {
    "python_float": lambda s: 0.5,
    "non_scalar": lambda s: s.student_logits("adv").sum(1),
    "no_grad": lambda s: s.student_logits("adv").sum().detach(),
    "integer": lambda s: torch.tensor(3),
    "nan": lambda s: s.student_logits("adv").sum() * math.nan,
}
MESSAGES = {
    "python_float": "returned a float (0.5), a Python number: was .item()",
    "non_scalar": "returned a non-scalar tensor of shape (16,)",
    "no_grad": "returned a tensor without grad",
    "integer": "returned a tensor of dtype torch.int64",
    "nan": "is not finite (NaN or inf) at epoch 1, step 1",
}


@pytest.mark.parametrize("kind", list(BAD_RETURNS))
def test_a_broken_outer_loss_is_named_with_its_plugin(tiny_raw, kind: str) -> None:
    class Broken(OuterLoss):
        def __call__(self, step):
            return BAD_RETURNS[kind](step)

    pm = manager_with(
        rd_register_outer_losses=lambda registry: registry.register(Broken, name="broken"),
        rd_register_methods=lambda registry: registry.register(Method(
            "broken_method", inner_attack=Part("pgd_ce"), outer_loss=Part("broken"), teachers=())))
    regs = pm.build_registries()
    cfg = resolve_config(tiny_raw("broken_method"), regs)
    error = DivergenceError if kind == "nan" else OuterLossError
    with pytest.raises(error) as info:
        train(cfg, regs=regs, pm=pm)
    message = str(info.value)
    assert "outer loss 'broken' (plugin 'test_plugin', distribution <local>)" in message
    assert MESSAGES[kind] in message
    assert not (Path(cfg.output_dir) / "last.pt").exists()


def test_step_monitor_sums_on_the_device_and_finds_the_first_bad_step() -> None:
    monitor = StepMonitor(torch.device("cpu"))
    for i, (loss, kl) in enumerate([(1.0, 0.5), (3.0, 1.5), (math.inf, 2.0), (math.nan, 4.0)]):
        monitor.add(torch.tensor(loss, requires_grad=True) * 1, {"kl": torch.tensor(kl), "w": 0.25}, i)
        if i == 1:
            means, last, bad = monitor.read()
            assert means == {"loss": 2.0, "kl": 1.0, "w": 0.25} and last == 3.0 and bad is None
    means, last, bad = monitor.read()
    assert bad == 2 and means["kl"] == 2.0 and math.isnan(last)
