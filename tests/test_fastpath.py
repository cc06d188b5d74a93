"""``robust_distill.engine.fastpath``: weights held in the autocast dtype give autocast's results bit for bit, BatchNorm
folding is exact up to rounding (and off by default on CPU), and only teachers that never change get either
for good."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from robust_distill.config import resolve_config
from robust_distill.core.manager import get_plugin_manager
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.fastpath import (
    BNFold,
    CastWeights,
    constant_teachers,
    conv_bn_pairs,
    fold_enabled,
    fused_conv_bn,
)
from robust_distill.engine.run import Run
from robust_distill.engine.trainer import _train_epoch, train
from robust_distill.errors import ConfigError
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill_plugins import architectures  # noqa: F401  (registers timm's resnet18_cifar, convnet_*)
from robust_distill_plugins.ciard_itt import IterativeTeacherTraining
from robust_distill_plugins.frozen_teacher import Frozen
from robust_distill_plugins.self_distill import SelfEMA

from .conftest import TINY
from .test_precision import _fixed_batch_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from wide_resnet import DMWideResNet, WideResNet  # noqa: E402


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with BatchNorm statistics and affine parameters far from the identity."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval().requires_grad_(False)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"resnet18_cifar": timm.create_model("resnet18_cifar"), "convnet_s": timm.create_model("convnet_s"),
            "wrn10_2": WideResNet(10, 10, 2), "dm_wrn10_1": DMWideResNet(10, 10, 1)}


# -------------------------------------------------------------------------------------------------
# Weights in the autocast dtype
# -------------------------------------------------------------------------------------------------


def test_weights_cast_once_give_autocast_bitwise_and_are_put_back() -> None:
    model = _with_statistics(_models()["resnet18_cifar"])
    params = {k: v for k, v in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 3, 32, 32)
    cast = CastWeights([model], torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        plain = model(x)
        with cast.swapped():
            assert model.conv1.weight.dtype == torch.bfloat16 and model.bn1.weight.dtype == torch.float32
            fast = model(x)
    assert fast.dtype == torch.bfloat16 and torch.equal(fast, plain)
    assert all(p is params[k] for k, p in model.named_parameters())  # the fp32 parameters themselves are back
    assert all(torch.equal(v, state[k]) and v.dtype == state[k].dtype for k, v in model.state_dict().items())


def test_cast_refresh_follows_weights_that_changed() -> None:
    lin = nn.Linear(3, 2)
    cast = CastWeights([lin], torch.bfloat16)
    with cast.swapped():
        first = lin.weight.clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    with cast.swapped(refresh=False):
        assert torch.equal(lin.weight, first)  # a constant teacher: cast once for the run
    with cast.swapped(refresh=True):  # the student: cast again at every attack
        assert torch.equal(lin.weight, lin._parameters["weight"]) and lin.weight.dtype == torch.bfloat16
        changed = lin.weight.clone()
    assert torch.equal(changed, lin.weight.detach().to(torch.bfloat16)) and not torch.equal(changed, first)


def _no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("robust_distill.engine.run.constant_teachers", lambda updater, teachers: {})
    monkeypatch.setattr(Run, "attack_weights", lambda self: None)


@pytest.mark.parametrize("method", ["adaad", "rslad"])
def test_bf16_training_steps_with_cast_weights_equal_the_plain_steps_bitwise(regs, monkeypatch, method: str) -> None:
    """Three bf16 steps on CPU: the constant teacher cast once and the student cast per attack change nothing."""
    losses, w, run = _fixed_batch_run(regs, "bf16", method)
    assert run.teacher_cast is not None and set(run.constant_teachers) == {"robust"}
    assert run.attack_weights() is not None and run.folded_bn == {"robust": 0}  # fold_bn auto: off on CPU
    with monkeypatch.context() as mp:
        _no_fast_path(mp)
        plain_losses, plain_w, plain_run = _fixed_batch_run(regs, "bf16", method)
    assert plain_run.teacher_cast is None
    assert losses == plain_losses and torch.equal(w, plain_w)
    teacher = run.teachers["robust"]
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # fp32 outside the steps


# -------------------------------------------------------------------------------------------------
# BatchNorm folding
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18_cifar", "convnet_s", "wrn10_2", "dm_wrn10_1"])
def test_folded_batchnorm_gives_the_fp32_logits_up_to_rounding(name: str) -> None:
    model = _with_statistics(_models()[name])
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
    fold = BNFold(model)
    # post-activation nets: every BN; pre-activation WRNs: the BN inside each block (and, where the first block
    # widens, its input BN after the stem conv: the shortcut then reads the activation, not the conv's output)
    expected = {"resnet18_cifar": n_bn, "convnet_s": n_bn, "wrn10_2": 4, "dm_wrn10_1": 3}[name]
    assert len(fold) == expected
    with torch.no_grad():
        with fold.folded():
            folded = model(x)
        again = model(x)
    assert torch.equal(again, plain)  # unfolded on exit
    assert torch.allclose(folded, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    assert fold.apply() == expected
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn - expected
    with torch.no_grad():
        assert torch.allclose(model(x), plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_fold_by_hand() -> None:
    conv, bn = nn.Conv2d(1, 1, 1, bias=True), nn.BatchNorm2d(1)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0 - bn.eps)  # sqrt(v + eps) = 2
        bn.weight.fill_(0.5)
        bn.bias.fill_(0.25)
    model = nn.Sequential(conv, bn).eval()
    BNFold(model).apply()
    # w' = 2 * 0.5 / 2 = 0.5, b' = (1 - 3) * 0.5 / 2 + 0.25 = -0.25
    assert conv.weight.item() == 0.5 and conv.bias.item() == -0.25 and isinstance(model[1], nn.Identity)


def test_fused_weights_equal_torchs_fusion_and_keep_the_memory_format() -> None:
    model = _with_statistics(_models()["resnet18_cifar"]).to(memory_format=torch.channels_last)
    modules = dict(model.named_modules())
    pairs = [(modules[c], modules[b]) for c, b in conv_bn_pairs(model)]
    for (conv, bn), (w, b) in zip(pairs, fused_conv_bn(pairs), strict=True):
        ref_w, ref_b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        assert torch.allclose(w, ref_w, rtol=1e-6, atol=0) and torch.allclose(b, ref_b, rtol=1e-6, atol=1e-7)
        assert w.is_contiguous(memory_format=torch.channels_last)


class _Branching(nn.Module):
    """conv -> bn, but the conv's output is also read by the residual: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.bn(h) + h


class _DataDependent(nn.Module):
    """Input-dependent control flow: does not trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.sum() > 0 else x


class _SharedConv(nn.Module):
    """One conv called twice, once before the bn: folding it would change the other call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


@pytest.mark.parametrize("cls", [_Branching, _DataDependent, _SharedConv])
def test_models_that_cannot_be_folded_are_left_untouched(cls: type[nn.Module]) -> None:
    model = _with_statistics(cls())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert conv_bn_pairs(model) == [] and BNFold(model).apply() == 0
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_fold_bn_option_values(tiny_config) -> None:
    assert tiny_config().optim.fold_bn == "auto"
    assert tiny_config(overrides=["optim.fold_bn=true"]).optim.fold_bn is True
    with pytest.raises(ConfigError, match="optim.fold_bn: expected bool | 'auto', got 'sometimes'"):
        tiny_config(overrides=["optim.fold_bn=sometimes"])


def test_fold_default_is_on_only_for_cuda_in_reduced_precision() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not fold_enabled("auto", cpu, "bf16") and not fold_enabled("auto", cuda, "fp32")
    assert fold_enabled("auto", cuda, "bf16") and fold_enabled("auto", cuda, "fp16")
    assert fold_enabled(True, cpu, "fp32") and not fold_enabled(False, cuda, "bf16")


@pytest.mark.cuda
def test_bf16_training_with_folding_follows_the_unfolded_run_on_cuda(regs) -> None:
    """fold_bn auto (on for CUDA bf16) against fold_bn false: the same steps up to bf16 rounding."""
    plain, plain_w, _ = _fixed_batch_run(regs, "bf16", "adaad", device="cuda", fold_bn=False)
    losses, w, run = _fixed_batch_run(regs, "bf16", "adaad", device="cuda")
    assert run.fold_bn and run.folded_bn == {"robust": 2} and run.teacher_cast is not None
    assert losses == pytest.approx(plain, rel=5e-2)
    assert ((w - plain_w).norm() / plain_w.norm()).item() < 1e-2


def test_fp32_training_with_folding_follows_the_plain_run(regs) -> None:
    """fold_bn: true on CPU (teacher folded for good, the student folded during each attack)."""
    plain_losses, plain_w, plain_run = _fixed_batch_run(regs, "fp32", "adaad")
    assert plain_run.folded_bn == {"robust": 0} and plain_run.attack_weights() is None
    losses, w, run = _fixed_batch_run(regs, "fp32", "adaad", fold_bn=True)
    assert run.folded_bn == {"robust": 2}  # convnet_xs: both of its conv -> BN pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in run.teachers["robust"].modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in run.student.modules())  # restored after each attack
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    assert torch.allclose(w, plain_w, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------------
# Which teachers are constant, and what is saved
# -------------------------------------------------------------------------------------------------


def test_only_teachers_the_updater_declares_constant_get_the_fast_path() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    assert set(constant_teachers(Frozen(), {"robust": a, "natural": b})) == {"robust", "natural"}
    assert set(constant_teachers(IterativeTeacherTraining(), {"robust": a, "natural": b})) == {"natural"}
    assert constant_teachers(IterativeTeacherTraining(), {"robust": a, "natural": a}) == {}  # one module, trained
    assert constant_teachers(SelfEMA(), {"robust": a}) == {}  # the base class's safe default


def test_checkpoints_are_those_of_the_plain_path(regs, tmp_path: Path) -> None:
    """CIARD (ITT trains the robust teacher, the clean one is constant) in bf16 with folding forced on: the
    trained teacher is saved unfolded in fp32, the constant one is never saved, the student's keys are its own."""
    raw = copy.deepcopy(TINY)
    raw.update(method="ciard", output_dir=str(tmp_path / "ciard"),
               teachers={"robust": "timm:convnet_xs", "natural": "timm:convnet_xs"},
               teacher_updater={"key": "ciard_itt", "kwargs": {"start_epoch": 0}})
    raw["optim"].update(epochs=1, precision="bf16", fold_bn=True)
    raw["eval"].update(attacks=["clean"], select="clean")
    train(resolve_config(raw, regs))
    ckpt = load_checkpoint(tmp_path / "ciard" / "last.pt")
    teacher = ckpt["parts"]["teacher_updater"]["teacher"]
    fresh = timm.create_model("convnet_xs", num_classes=4, in_chans=3)
    assert set(teacher) == set(fresh.state_dict()) and all(v.dtype != torch.bfloat16 for v in teacher.values())
    assert set(ckpt["state_dict"]) == set(fresh.state_dict())
    assert "natural" not in str(list(ckpt["parts"]["teacher_updater"]))


def test_teacher_updaters_see_fp32_teachers_outside_autocast(regs) -> None:
    """The cast teachers are swapped in with the step's autocast only: ``before_step``/``after_step`` (outside it,
    as :func:`robust_distill.engine.trainer.step_loss` documents) see the fp32 weights; nothing stays cast after."""
    seen = []

    class Spy(Frozen):
        def before_step(self, step) -> None:
            seen.append((torch.is_autocast_enabled("cpu"), step.teachers["robust"].classifier.weight.dtype))

        after_step = before_step

    raw = copy.deepcopy(TINY)
    raw.update(method="adaad", output_dir="unused", teachers={"robust": "timm:convnet_xs"})
    raw["optim"].update(precision="bf16")
    run = Run(resolve_config(raw, regs), regs, get_plugin_manager(), DistContext())
    assert run.fold_bn is False and run.teacher_cast is not None
    run.teacher_updater = Spy()
    _train_epoch(run, 0)
    assert seen and set(seen) == {(False, torch.float32)}
    assert all(p.dtype == torch.float32 for p in run.teachers["robust"].parameters())
