"""``optim.precision``: fp32, bf16 and fp16 training steps on CPU, and the fp16 input-gradient fix of the
inner attack (``robust_distill.core.precision.InputGradScale``)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robust_distill.config import resolve_config
from robust_distill.core.attacks import pgd
from robust_distill.core.manager import get_plugin_manager
from robust_distill.core.precision import InputGradScale
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.evaluation import evaluate
from robust_distill.engine.run import Run
from robust_distill.engine.trainer import _train_epoch, train
from robust_distill.errors import ConfigError
from robust_distill.files.checkpoint import load_checkpoint

from .conftest import TINY

EPS, STEP = 8 / 255, 2 / 255


def _underflowing_objective(direction: torch.Tensor):
    """``sum(direction * 1e-4 * x)`` with the factor 1e-4 applied in float16 on the way back.

    The gradient reaching the float16 product is 1e-4 * direction (a normal float16), and the float16
    multiplication by 1e-4 gives 1e-8, below float16's smallest subnormal (6e-8): zero, as under fp16
    autocast when the objective is nearly flat.
    """
    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        h = x_adv.half() * torch.tensor(1e-4, dtype=torch.float16)
        return (h.float() * 1e-4 * direction).sum()
    return objective


def test_fp16_attack_gradient_underflows_without_the_scale_and_not_with_it() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    direction = torch.randn_like(x).sign()
    objective = _underflowing_objective(direction)
    x_adv = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
    assert torch.count_nonzero(grad) == 0  # the defect: float16 flushed the whole gradient to zero
    stuck = pgd(objective, x, eps=EPS, step_size=STEP, steps=3, start="none")
    assert torch.equal(stuck, x)  # sign(0) = 0: PGD never moves
    moved = pgd(objective, x, eps=EPS, step_size=STEP, steps=3, start="none", grad_scale=InputGradScale("cpu"))
    assert torch.allclose(moved - x, 3 * STEP * direction, atol=1e-6)  # every pixel climbs the objective


def test_input_grad_scale_keeps_the_sign_of_an_overflow_and_adapts_without_host_sync() -> None:
    scale = InputGradScale("cpu", init_scale=8.0, growth_interval=2)
    obj = scale.scale(torch.tensor(2.0, dtype=torch.float16))
    assert obj.dtype == torch.float32 and obj.item() == 16.0
    grad = scale.unscale(torch.tensor([math.inf, -math.inf, math.nan, 16.0]))
    assert grad[:2].sign().tolist() == [1.0, -1.0] and grad[2] == 0 and grad[3] == 2.0  # 16 / 8
    assert scale.state_dict()["scale"].item() == 4.0  # halved after the overflow
    for expected in (4.0, 8.0, 8.0, 16.0):  # doubled after every 2 finite gradients
        scale.unscale(torch.ones(3))
        assert scale.state_dict()["scale"].item() == expected
    other = InputGradScale("cpu")
    other.load_state_dict(scale.state_dict())
    assert other.state_dict()["scale"].item() == 16.0


def _fixed_batch_run(regs, precision: str, method: str, device: str = "cpu",
                     **optim) -> tuple[list[float], torch.Tensor, Run]:
    """Three steps of ``method`` on one fixed batch of 32 (no augmentation), from the same initial weights."""
    raw = copy.deepcopy(TINY)
    raw.update(method=method, output_dir="unused", device=device,
               teachers={"robust": "timm:convnet_xs"} if method in ("adaad", "rslad") else {})
    raw["data"].update(batch_size=32, augment=False)
    raw["data"]["options"].update(n_train=64, size=16)  # 64 - val_size 32 = one batch of 32
    raw["optim"].update(precision=precision, **optim)
    torch.manual_seed(0)
    run = Run(resolve_config(raw, regs), regs, get_plugin_manager(), DistContext())
    losses = [_train_epoch(run, 0)["train_loss"] for _ in range(3)]
    return losses, torch.cat([p.detach().flatten() for p in run.student.parameters()]).cpu(), run


@pytest.mark.parametrize("method", ["pgd_at", "adaad"])
def test_training_steps_in_bf16_and_fp16_stay_finite_and_bf16_follows_fp32(regs, method: str) -> None:
    ref_losses, ref_w, _ = _fixed_batch_run(regs, "fp32", method)
    losses, w, _ = _fixed_batch_run(regs, "bf16", method)
    assert all(math.isfinite(v) for v in losses)
    assert losses == pytest.approx(ref_losses, rel=5e-2)
    assert ((w - ref_w).norm() / ref_w.norm()).item() < 1e-2
    losses16, w16, run16 = _fixed_batch_run(regs, "fp16", method)
    assert all(math.isfinite(v) for v in losses16) and torch.isfinite(w16).all()
    assert run16.scaler.is_enabled() and run16.input_grad_scale is not None
    assert losses16[-1] < losses16[0] * 1.05 and ((w16 - ref_w).norm() / ref_w.norm()).item() < 5e-2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_in_reduced_precision_equals_an_uninterrupted_run(tiny_config, tmp_path: Path, precision: str) -> None:
    over = [f"optim.precision={precision}", "optim.epochs=2", "eval.attacks=[clean]", "eval.select=clean"]
    train(tiny_config("pgd_at", overrides=over + [f"output_dir={tmp_path / 'full'}"]))
    part = tiny_config("pgd_at", overrides=over + [f"output_dir={tmp_path / 'part'}"])
    train(part, stop_after_epochs=1)
    if precision == "fp16":
        assert set(load_checkpoint(tmp_path / "part" / "last.pt")["input_grad_scale"]) == {"scale", "good"}
    train(part)
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_runs_in_fp32_unless_asked() -> None:
    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.autocast = nn.Linear(12, 3), []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.autocast.append(torch.is_autocast_enabled("cpu"))
            return self.linear(x.flatten(1))

    x, y = torch.rand(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    spy = Spy()
    evaluate(spy, x, y, {"clean": lambda m, xb, yb: xb}, batch_size=4)
    assert spy.autocast and not any(spy.autocast)
    spy.autocast.clear()
    evaluate(spy, x, y, {"clean": lambda m, xb, yb: xb}, batch_size=4, precision="bf16")
    assert spy.autocast and all(spy.autocast)


def test_amp_is_a_deprecated_alias_of_fp16(tiny_raw, regs) -> None:
    raw = tiny_raw("pgd_at")
    raw["optim"]["amp"] = True
    with pytest.warns(FutureWarning, match="optim.precision: fp16"):
        cfg = resolve_config(raw, regs)
    assert cfg.optim.precision == "fp16" and cfg.optim.amp is False
    raw["optim"]["precision"] = "bf16"
    with pytest.raises(ConfigError, match="conflicts with optim.precision: bf16"):
        resolve_config(raw, regs)
    raw["optim"].update(amp=False, precision="fp8")
    with pytest.raises(ConfigError, match="optim.precision: must be one of 'fp32', 'bf16', 'fp16'"):
        resolve_config(raw, regs)


def test_cudnn_autotuning_is_on_unless_deterministic_and_restored_after(tiny_config, monkeypatch) -> None:
    from robust_distill.engine import trainer

    seen = []
    original = trainer._train_epoch
    monkeypatch.setattr(trainer, "_train_epoch", lambda run, e: (seen.append(torch.backends.cudnn.benchmark),
                                                                 original(run, e))[1])
    before = torch.backends.cudnn.benchmark
    over = ["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean"]
    train(tiny_config("pgd_at", overrides=over))
    train(tiny_config("pgd_at", overrides=[*over, "deterministic=true"]), resume=False)
    assert seen == [True, False] and torch.backends.cudnn.benchmark == before
