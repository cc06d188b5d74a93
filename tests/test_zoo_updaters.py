"""PeerAiD (plugins/peeraid.py) and the self-distillation updaters (plugins/self_distill.py): the loss by
hand, which tensors receive gradients, the updaters' copies/EMA/warm-up, resume and one-epoch smoke runs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from robust_distill import Step, ThreatModel
from robust_distill.core.manager import get_plugin_manager
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.run import Run
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import build_from_checkpoint, load_checkpoint

from .handcalc import B, C, D, softmax
from .handcalc import linear as _linear


def peer_step(student: nn.Module, peer: nn.Module) -> Step:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, D, generator=g)
    step = Step(x, torch.tensor([0, 1, 2, 1]), student=student, teachers={"peer": peer}, threat=ThreatModel(),
                grad_teachers=frozenset({"peer"}))
    step.add_input("adv", (x + 0.1 * torch.randn(B, D, generator=g)).clamp(0, 1))
    return step



def kl_mean(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """nn.KLDivLoss()(log_softmax(a/tau), softmax(b/tau)): sum p_b (log p_b - log p_a) / (B*C)."""
    p_a, p_b = softmax(a / tau), softmax(b / tau)
    return ((p_b * (torch.log(p_b) - torch.log(p_a))).sum() / a.numel()).item()


def ce(z: torch.Tensor, y: torch.Tensor) -> float:
    return (-torch.log(softmax(z)[torch.arange(len(y)), y])).mean().item()


# -- PeerAiD ----------------------------------------------------------------------------------------


def test_peeraid_loss_by_hand(regs) -> None:
    kw = {"temperature": 4.0, "lambda1": 0.3, "lambda2": 1.5, "lambda3": 0.7, "gamma1": 0.9, "gamma2": 0.2,
          "re_temperature": 2.0}
    step = peer_step(_linear(1), _linear(2))
    loss = regs.outer_losses.build("peeraid", kw)(step)
    with torch.no_grad():
        s_adv, s_nat, p_adv = step.student(step.x_adv), step.student(step.x), step.teachers["peer"](step.x_adv)
    peer = 0.9 * ce(p_adv, step.y) + 0.2 * 4.0 * kl_mean(p_adv, s_adv, 2.0)
    student = 0.3 * ce(s_adv, step.y) + 16.0 * (1.5 * kl_mean(s_adv, p_adv, 4.0) + 0.7 * kl_mean(s_adv, s_nat, 4.0))
    assert loss.item() == pytest.approx(peer + student, rel=1e-5)
    assert step.logs["loss_peer"] == pytest.approx(peer, rel=1e-5)


def test_peeraid_defaults_are_the_cifar10_readme(regs) -> None:
    method = regs.methods.get("peeraid")
    assert dict(method.outer_loss.kwargs) == {"temperature": 5.0, "lambda1": 0.0, "lambda2": 1.0, "lambda3": 1.0,
                                              "gamma1": 1.0, "gamma2": 0.1, "re_temperature": 1.0}
    assert method.defaults["optim"]["schedule"]["kwargs"]["milestones"] == [214, 259, 284]
    assert method.inner_attack.kwargs["role"] == "peer" and method.teachers == ("peer",)


def test_peeraid_gradients_reach_the_peer_and_the_student_through_the_peer_loss(regs) -> None:
    student, peer = _linear(1), _linear(2)
    only_peer = {"lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}  # the student loss is switched off
    regs.outer_losses.build("peeraid", only_peer)(peer_step(student, peer)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in peer.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())  # S(x') not detached
    student.zero_grad(set_to_none=True)
    peer.zero_grad(set_to_none=True)
    regs.outer_losses.build("peeraid", {**only_peer, "gamma2": 0.0})(peer_step(student, peer)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.parameters())
    # the student loss never trains the peer: P(x') is its detached target
    peer.zero_grad(set_to_none=True)
    regs.outer_losses.build("peeraid", {"gamma1": 0.0, "gamma2": 0.0})(peer_step(student, peer)).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in peer.parameters())


def test_peeraid_needs_a_trainable_peer(regs) -> None:
    step = peer_step(_linear(1), _linear(2))
    step.grad_teachers = frozenset()
    with pytest.raises(RuntimeError, match="frozen"):
        regs.outer_losses.build("peeraid", {})(step)


FAST = ["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean"]


def test_peeraid_trains_the_peer_and_swa(tiny_config, regs, tmp_path: Path) -> None:
    assert regs.methods.get("peeraid").defaults["swa"] == {"start": 214}  # PeerAiD switches the engine's SWA on
    over = ["optim.epochs=2", "eval.attacks=[clean]", "eval.select=clean", "swa.start=1"]
    full = tiny_config("peeraid", overrides=over + [f"output_dir={tmp_path / 'full'}"])
    part = tiny_config("peeraid", overrides=over + [f"output_dir={tmp_path / 'part'}"])
    assert "peer" not in full.teachers  # the updater provides it
    train(full)
    assert train(part, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    peer1 = load_checkpoint(tmp_path / "part" / "last.pt")["parts"]["teacher_updater"]["peer"]
    assert not (tmp_path / "part" / "swa.pt").exists()  # SWA starts at epoch 1
    train(part)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    pa, pb = a["parts"]["teacher_updater"], b["parts"]["teacher_updater"]
    assert all(torch.equal(pa["peer"][k], pb["peer"][k]) for k in pa["peer"])
    assert any(not torch.equal(peer1[k], pa["peer"][k]) for k in peer1)  # the peer is trained
    assert a["parts"]["swa"]["n"] == b["parts"]["swa"]["n"] == 1
    swa, ckpt = build_from_checkpoint(tmp_path / "full" / "swa.pt", regs)
    assert ckpt["swa_n"] == 1 and not swa.training
    # one SWA average after the last epoch = the student's parameters, with recomputed BN statistics
    student = a["state_dict"]
    params = dict(swa.named_parameters())
    assert all(torch.allclose(params[k], student[k]) for k in params)
    row = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss_peer", "train_loss_student", "train_peer_acc"} <= row.keys()


def test_swa_works_with_any_method(tiny_config, regs, tmp_path: Path) -> None:
    """SWA is the engine's, not PeerAiD's: RSLAD with ``swa.start: 1`` averages the weights of its last two
    (0-based 1 and 2) epochs, resumes exactly, and writes a swa.pt that loads as a checkpoint."""
    over = ["optim.epochs=3", "eval.attacks=[clean]", "eval.select=clean", "swa.start=1"]
    full = tiny_config("rslad", True, overrides=over + [f"output_dir={tmp_path / 'full'}"])
    part = tiny_config("rslad", True, overrides=over + [f"output_dir={tmp_path / 'part'}"])
    train(full)
    assert train(part, stop_after_epochs=2) == {"interrupted": True, "epoch": 2}
    after_two = load_checkpoint(tmp_path / "part" / "last.pt")
    assert after_two["parts"]["swa"]["n"] == 1  # epoch 1 averaged, epoch 0 not
    train(part)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["parts"]["swa"]["n"] == b["parts"]["swa"]["n"] == 2
    assert all(torch.equal(v, b["parts"]["swa"]["average"][k]) for k, v in a["parts"]["swa"]["average"].items())
    swa, ckpt = build_from_checkpoint(tmp_path / "full" / "swa.pt", regs)
    assert ckpt["swa_n"] == 2 and ckpt["epoch"] == 3 and not swa.training
    for k, p in swa.named_parameters():  # (w after epoch 1 + w after epoch 2) / 2
        assert torch.allclose(p, (after_two["state_dict"][k] + a["state_dict"][k]) / 2, atol=1e-6)
    assert regs.methods.get("rslad").defaults.get("swa") is None  # off unless asked for


# -- self-distillation ------------------------------------------------------------------------------


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, C), nn.BatchNorm1d(C))


def _setup(regs, key: str, **kwargs):
    student = _net(0)
    updater = regs.teacher_updaters.build(key, kwargs)
    run = SimpleNamespace(student=student, teachers={})
    updater.setup(run)
    return updater, student, run.teachers["robust"]


def _train_a_bit(student: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    student.train()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
        student(torch.rand(8, D))  # moves the BN running statistics


def same(a: nn.Module, b: nn.Module | dict) -> bool:
    sb = b if isinstance(b, dict) else b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def _step(epoch: int) -> SimpleNamespace:
    return SimpleNamespace(epoch=epoch)


@pytest.mark.parametrize("key", ["self_best", "self_last", "self_ema"])
def test_self_teacher_starts_as_a_frozen_copy_of_the_student(regs, key: str) -> None:
    updater, student, teacher = _setup(regs, key)
    assert teacher is not student and same(teacher, student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert updater.provides == ("robust",)


def test_self_best_copies_the_best_student_only(regs) -> None:
    updater, student, teacher = _setup(regs, "self_best")
    _train_a_bit(student, 1)
    updater.end_epoch(None, 0, {"is_best": True})
    best = copy.deepcopy(student.state_dict())
    assert same(teacher, best)
    _train_a_bit(student, 2)
    updater.end_epoch(None, 1, {"is_best": False})
    updater.end_epoch(None, 2, {})  # an epoch without evaluation
    assert same(teacher, best) and not same(teacher, student)


def test_self_best_warmup_installs_the_best_of_the_warmup(regs) -> None:
    updater, student, teacher = _setup(regs, "self_best", warmup_epochs=3)
    initial = copy.deepcopy(teacher.state_dict())
    _train_a_bit(student, 1)
    updater.end_epoch(SimpleNamespace(student=student), 0, {"is_best": True})
    best = copy.deepcopy(student.state_dict())
    _train_a_bit(student, 2)
    updater.end_epoch(SimpleNamespace(student=student), 1, {"is_best": False})
    assert same(teacher, initial)  # fixed during the first 3 epochs
    state = updater.state_dict()  # the pending best checkpoint is part of the state
    updater.end_epoch(SimpleNamespace(student=student), 2, {"is_best": False})
    assert same(teacher, best)
    other, _, other_teacher = _setup(regs, "self_best", warmup_epochs=3)
    other.load_state_dict(state)
    other.end_epoch(SimpleNamespace(student=student), 2, {"is_best": False})
    assert same(other_teacher, best)


def test_self_last_follows_the_student_after_the_warmup(regs) -> None:
    updater, student, teacher = _setup(regs, "self_last", warmup_epochs=2)
    initial = copy.deepcopy(teacher.state_dict())
    _train_a_bit(student, 1)
    updater.end_epoch(None, 0, {})
    assert same(teacher, initial)
    _train_a_bit(student, 2)
    updater.end_epoch(None, 1, {})
    assert same(teacher, student)


def test_self_ema_by_hand(regs) -> None:
    updater, student, teacher = _setup(regs, "self_ema", decay=0.9, warmup_epochs=1)
    t0 = copy.deepcopy(teacher.state_dict())
    _train_a_bit(student, 1)
    updater.after_step(_step(0))  # warm-up: fixed
    assert same(teacher, t0)
    updater.after_step(_step(1))
    s = student.state_dict()
    for k, v in teacher.state_dict().items():
        if k.endswith(("weight", "bias")):
            assert torch.allclose(v, 0.9 * t0[k] + 0.1 * s[k], atol=1e-7)
        else:  # BN buffers are copied
            assert torch.equal(v, s[k])


def test_self_teacher_from_an_init_checkpoint(tiny_config, regs, tmp_path: Path) -> None:
    src = tiny_config("pgd_at", overrides=FAST + [f"output_dir={tmp_path / 'src'}"])
    train(src)
    init = tmp_path / "src" / "best.pt"
    cfg = tiny_config("rslad", overrides=FAST + [f"output_dir={tmp_path / 'sd'}", "teacher_updater=self_last",
                                                 f"teacher_updater.kwargs.init={init}"])
    run = Run(cfg, regs, get_plugin_manager(), DistContext())
    run.teacher_updater.setup(run)
    assert same(run.teachers["robust"], load_checkpoint(init)["state_dict"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        regs.teacher_updaters.build("self_best", {"init": str(tmp_path / "missing.pt")})


@pytest.mark.parametrize("key", ["self_best", "self_last", "self_ema"])
def test_self_distillation_trains_with_any_single_teacher_method(tiny_config, key: str) -> None:
    cfg = tiny_config("rslad", overrides=["optim.epochs=2", "eval.attacks=[clean]", "eval.select=clean",
                                          f"teacher_updater={key}"])
    assert cfg.teachers == {} and cfg.teacher_updater.key == key
    summary = train(cfg)
    rows = [json.loads(r) for r in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows) and summary["epochs"] == 2


def test_self_ema_resume_equals_an_uninterrupted_run(tiny_config, tmp_path: Path) -> None:
    over = ["optim.epochs=3", "eval.attacks=[clean]", "eval.select=clean", "teacher_updater=self_ema",
            "teacher_updater.kwargs.decay=0.5"]
    full = tiny_config("adaad", overrides=over + [f"output_dir={tmp_path / 'full'}"])
    part = tiny_config("adaad", overrides=over + [f"output_dir={tmp_path / 'part'}"])
    train(full)
    assert train(part, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    train(part)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    ta, tb = a["parts"]["teacher_updater"]["teacher"], b["parts"]["teacher_updater"]["teacher"]
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], a["state_dict"][k]) for k in ta)  # an average, not a copy
    rows = lambda d: [{k: v for k, v in json.loads(r).items() if not k.startswith("time_")}  # noqa: E731
                      for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert rows("full") == rows("part")
