"""MTARD, B-MTARD and CIARD (plugins/mtard.py, plugins/ciard.py): losses against formulas written out by
hand over consecutive steps, gradients, CIARD's ITT and schedules, resume and one-epoch smoke runs."""

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
from robust_distill.config import resolve_config
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import load_checkpoint

from .handcalc import B, C, D, softmax
from .handcalc import linear as _linear

EPS = 1e-5



def make_step(student: nn.Module, teachers: dict[str, nn.Module], seed: int, *, y: torch.Tensor | None = None,
              epoch: int = 0, epochs: int = 300, iteration: int = 0, iterations: int = 391,
              lr_factor: float = 1.0, grad_teachers: frozenset[str] = frozenset()) -> Step:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=g)
    x_adv = (x + 0.1 * torch.randn(B, D, generator=g)).clamp(0, 1)
    if y is None:
        y = torch.randint(0, C, (B,), generator=g)
    step = Step(x, y, student=student, teachers=teachers, threat=ThreatModel(), epoch=epoch, epochs=epochs,
                iteration=iteration, iterations=iterations, lr_factor=lr_factor, grad_teachers=grad_teachers)
    step.add_input("adv", x_adv)
    return step


def models(teacher_grad: bool = False) -> tuple[nn.Module, dict[str, nn.Module]]:
    # the robust teacher is sharper than the clean one, so B-MTARD's temperatures move
    return _linear(1), {"robust": _linear(2, 3.0).requires_grad_(teacher_grad),
                        "natural": _linear(3, 0.5).requires_grad_(teacher_grad)}


# -- formulas by hand --------------------------------------------------------------------------------



def kl_loss_mean(s: torch.Tensor, t: torch.Tensor, tau_t: float = 1.0, tau_s: float = 1.0) -> float:
    """RSLAD's kl_loss(log_softmax(s/tau_s), softmax(t/tau_t)).mean(): -a*b + log(b + 1e-5)*b over B*C."""
    a, b = torch.log(softmax(s / tau_s)), softmax(t / tau_t)
    return (-a * b + torch.log(b + EPS) * b).mean().item()


def neg_entropy(t: torch.Tensor, tau: float) -> float:
    p = softmax(t / tau)
    return (torch.log(p + EPS) * p).mean().item()


def sign(v: float) -> float:
    return float((v > 0) - (v < 0))


def outputs(step: Step) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        s, tr, tn = step.student, step.teachers["robust"], step.teachers["natural"]
        return {"s_adv": s(step.x_adv), "s_nat": s(step.x), "t_adv": tr(step.x_adv), "t_nat": tn(step.x),
                "tn_adv": tn(step.x_adv)}


# -- MTARD ------------------------------------------------------------------------------------------


def test_mtard_loss_and_adaptive_weights_over_three_steps(regs) -> None:
    part = regs.methods.get("mtard").outer_loss
    loss_fn = regs.outer_losses.build(part.key, dict(part.kwargs))
    student, teachers = models()
    w_nat, l0 = 0.5, None
    for k, factor in enumerate([1.0, 1.0, 0.1]):  # the lr (and with it eta) decays x0.1 at the third step
        step = make_step(student, teachers, seed=10 + k, lr_factor=factor)
        loss = loss_fn(step)
        o = outputs(step)
        l_adv, l_nat = kl_loss_mean(o["s_adv"], o["t_adv"]), kl_loss_mean(o["s_nat"], o["t_nat"])
        if l0 is None:
            l0 = (l_adv, l_nat)
        r_adv, r_nat = l_adv / l0[0], l_nat / l0[1]
        w_nat = w_nat - 0.025 * factor * (w_nat - r_nat / (r_adv + r_nat))
        expected = (1 - w_nat) * l_adv + w_nat * l_nat
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert step.logs["w_nat"] == pytest.approx(w_nat, rel=1e-6)
        assert step.logs["tau_adv"] == step.logs["tau_nat"] == 1.0
    assert w_nat != 0.5  # the weights did move


def test_bmtard_temperatures_and_normalised_weights_over_three_steps(regs) -> None:
    part = regs.methods.get("bmtard").outer_loss
    loss_fn = regs.outer_losses.build(part.key, {**part.kwargs, "eta_tau": 0.3})  # large: visible moves
    student, teachers = models()
    w_adv, w_nat, tau_adv, tau_nat, l0 = 0.5, 0.5, 1.0, 1.0, None
    for k in range(3):
        step = make_step(student, teachers, seed=20 + k)
        loss = loss_fn(step)
        o = outputs(step)
        l_adv = kl_loss_mean(o["s_adv"], o["t_adv"], tau_t=tau_adv)  # this step's KL: current temperatures
        l_nat = kl_loss_mean(o["s_nat"], o["t_nat"], tau_t=tau_nat)
        h_adv, h_nat = neg_entropy(o["t_adv"], tau_adv), neg_entropy(o["t_nat"], tau_nat)
        tau_adv = min(max(tau_adv - 0.3 * sign(h_adv / h_nat - 1), 1.0), 10.0)
        tau_nat = min(max(tau_nat - 0.3 * sign(h_nat / h_adv - 1), 1.0), 10.0)
        if l0 is None:
            l0 = (l_adv, l_nat)
        lh_adv, lh_nat = l_adv / l0[0], l_nat / l0[1]
        avg = (lh_adv + lh_nat) / 2
        r_adv, r_nat = lh_adv / avg, lh_nat / avg
        w_nat = w_nat - 0.025 * (w_nat - r_nat / (r_adv + r_nat))
        w_adv = w_adv - 0.025 * (w_adv - r_adv / (r_adv + r_nat))
        w_adv, w_nat = max(w_adv, 0), max(w_nat, 0)
        w_adv, w_nat = w_adv / (w_adv + w_nat), w_nat / (w_adv + w_nat)
        assert loss.item() == pytest.approx(w_adv * l_adv + w_nat * l_nat, rel=1e-5)
        assert (step.logs["tau_adv"], step.logs["tau_nat"]) == pytest.approx((tau_adv, tau_nat))
    assert tau_adv > 1.0  # the sharper robust teacher was softened (tau_nat stays at its clamp)
    assert loss_fn.state_dict()["tau_adv"] == pytest.approx(tau_adv)


def test_mtard_state_round_trip(regs) -> None:
    a = regs.outer_losses.build("mtard", {"balance": "bmtard", "temperatures": "entropy", "eta_tau": 0.3})
    student, teachers = models()
    for k in range(2):
        a(make_step(student, teachers, seed=k))
    b = regs.outer_losses.build("mtard", {"balance": "bmtard", "temperatures": "entropy", "eta_tau": 0.3})
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    la, lb = a(make_step(student, teachers, seed=5)), b(make_step(student, teachers, seed=5))
    assert la.item() == lb.item() and a.state_dict() == b.state_dict()


@pytest.mark.parametrize("method", ["mtard", "bmtard", "ciard"])
def test_frozen_teachers_never_receive_gradients(regs, method: str) -> None:
    part = regs.methods.get(method).outer_loss
    loss_fn = regs.outer_losses.build(part.key, dict(part.kwargs))
    student, teachers = models(teacher_grad=True)  # even teachers with trainable parameters
    step = make_step(student, teachers, seed=0, y=torch.tensor([1, 1, 1, 1]))
    loss_fn(step).backward()
    assert all(p.grad is None for t in teachers.values() for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# -- CIARD ------------------------------------------------------------------------------------------


def ciard_expected(o: dict[str, torch.Tensor], y: torch.Tensor, tau_adv: float, tau_nat: float) -> tuple[float, float]:
    """(KL1 + KL2 - s KL3, s) of CIARD's HEAD, by hand."""
    kl1 = kl_loss_mean(o["s_adv"], o["t_adv"], tau_t=tau_adv)
    kl2 = kl_loss_mean(o["s_nat"], o["t_nat"], tau_t=tau_nat)
    mask = o["tn_adv"].argmax(1) != y
    if not mask.any():
        return kl1 + kl2, 0.0
    kl3 = kl_loss_mean(o["s_adv"][mask], o["tn_adv"][mask], tau_s=5.0)  # student /5, teacher /1, mean n*C
    s = 10.0 ** (min(math.floor(math.log10(kl1)), math.floor(math.log10(kl2))) - math.floor(math.log10(kl3)))
    return kl1 + kl2 - s * kl3, s


def test_ciard_push_term_with_an_empty_and_a_non_empty_mask(regs) -> None:
    part = regs.methods.get("ciard").outer_loss
    loss_fn = regs.outer_losses.build(part.key, {**part.kwargs, "eta_tau": 0.3})
    student, teachers = models()
    tau_adv = tau_nat = 1.0
    for k, wrong in enumerate([[], [0, 2], [1]]):  # rows where the label differs from T_nat(x')'s prediction
        probe = make_step(student, teachers, seed=30 + k)
        y = teachers["natural"](probe.x_adv).argmax(1).detach()
        for i in wrong:
            y[i] = (y[i] + 1) % C
        step = make_step(student, teachers, seed=30 + k, y=y)
        loss = loss_fn(step)
        o = outputs(step)
        expected, s = ciard_expected(o, y, tau_adv, tau_nat)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert step.logs["push_scale"] == pytest.approx(s) and step.logs["push_frac"] == len(wrong) / B
        assert (step.logs["push"] == 0.0) == (not wrong)
        h_adv, h_nat = neg_entropy(o["t_adv"], tau_adv), neg_entropy(o["t_nat"], tau_nat)
        tau_adv = min(max(tau_adv - 0.3 * sign(h_adv / h_nat - 1), 1.0), 10.0)
        tau_nat = min(max(tau_nat - 0.3 * sign(h_nat / h_adv - 1), 1.0), 10.0)
    assert tau_adv > 1.0


def test_ciard_push_gradient_and_no_gradient_through_the_scale(regs) -> None:
    student, teachers = models()
    step = make_step(student, teachers, seed=3)
    y = teachers["natural"](step.x_adv).argmax(1).detach()
    y[0] = (y[0] + 1) % C
    with_push = regs.outer_losses.build("ciard", {})(make_step(student, teachers, seed=3, y=y))
    no_push = regs.outer_losses.build("ciard", {"push": False})(make_step(student, teachers, seed=3, y=y))
    g1 = torch.autograd.grad(with_push, list(student.parameters()))
    g2 = torch.autograd.grad(no_push, list(student.parameters()))
    # the difference is -s * grad KL3 with s a constant
    o = outputs(make_step(student, teachers, seed=3, y=y))
    _, s = ciard_expected(o, y, 1.0, 1.0)
    step3 = make_step(student, teachers, seed=3, y=y)
    mask = o["tn_adv"].argmax(1) != y
    a = torch.log_softmax(step3.student(step3.x_adv)[mask] / 5, 1)
    b = torch.softmax(o["tn_adv"][mask], 1)
    kl3 = (-a * b + torch.log(b + EPS) * b).mean()
    g3 = torch.autograd.grad(kl3, list(student.parameters()))
    for x1, x2, x3 in zip(g1, g2, g3, strict=True):
        assert torch.allclose(x1, x2 - s * x3, atol=1e-6)


def test_ciard_weighted_variant_is_the_original_upload(regs) -> None:
    student, teachers = models()
    loss_fn = regs.outer_losses.build("ciard", {"weighted": True, "push": False, "eta_tau": 0.0})
    w_adv = w_nat = 0.5
    l0 = None
    for k in range(2):
        step = make_step(student, teachers, seed=40 + k)
        loss = loss_fn(step)
        o = outputs(step)
        l_adv, l_nat = kl_loss_mean(o["s_adv"], o["t_adv"]), kl_loss_mean(o["s_nat"], o["t_nat"])
        l0 = l0 or (l_adv, l_nat)
        lh = (l_adv / l0[0], l_nat / l0[1])
        r = (lh[0] / (sum(lh) / 2), lh[1] / (sum(lh) / 2))
        w_nat = w_nat - 0.025 * (w_nat - r[1] / sum(r))
        w_adv = w_adv - 0.025 * (w_adv - r[0] / sum(r))
        w_adv, w_nat = w_adv / (w_adv + w_nat), w_nat / (w_adv + w_nat)
        assert loss.item() == pytest.approx(w_adv * l_adv + w_nat * l_nat, rel=1e-5)


def test_ciard_rate_decay_per_epoch_and_the_in_batch_bug(regs) -> None:
    fixed = regs.outer_losses.build("ciard", {})
    buggy = regs.outer_losses.build("ciard", {"reproduce_in_batch_decay": True})
    student, teachers = models()
    at = lambda e, i: make_step(student, teachers, seed=0, epoch=e, iteration=i, iterations=391)  # noqa: E731
    assert fixed.rate_factor(at(213, 5)) == 1.0 and fixed.rate_factor(at(214, 390)) == 1.0
    assert fixed.rate_factor(at(215, 0)) == pytest.approx(0.1)
    assert fixed.rate_factor(at(299, 0)) == pytest.approx(1e-3)
    # official: `if epoch in [215, 260, 285]: rate *= 0.1` inside the batch loop (1-based epoch 215 = 0-based 214)
    assert buggy.rate_factor(at(214, 0)) == 1.0 and buggy.rate_factor(at(214, 3)) == pytest.approx(1e-3)
    assert buggy.rate_factor(at(215, 0)) == 0.0  # 0.1 ** 391 underflows: the rates are frozen


def test_ciard_schedules() -> None:
    from robust_distill_plugins.ciard import ciard_schedule, cos_exp

    s = ciard_schedule(300)
    assert s(0) == s(148.7) == s(149) == 1.0  # 1-based epoch 150: cos(0) exp(0)
    assert s(224) == pytest.approx(0.5 * math.exp(-0.01 * 0.25))  # e = 225: t = 1/2
    assert s(299.5) == pytest.approx(0.0, abs=1e-12)  # the last epoch has lr 0, as in the official code
    short = ciard_schedule(10, start=0.5)  # fractions scale to short runs
    assert short(3) == 1.0 and short(7) == pytest.approx(cos_exp(8, 5, 10))
    assert cos_exp(51, 50, 300) == pytest.approx((0.5 + 0.5 * math.cos(math.pi / 250)) * math.exp(-0.01 / 250**2))


def _itt_run(regs, **kwargs):
    student, teachers = models()
    itt = regs.teacher_updaters.build("ciard_itt", kwargs)
    run = SimpleNamespace(teachers=teachers, config=SimpleNamespace(optim=SimpleNamespace(epochs=300)),
                          dist=DistContext())
    itt.setup(run)
    return itt, student, teachers


def test_itt_changes_the_teacher_only_from_its_start_epoch(regs) -> None:
    itt, student, teachers = _itt_run(regs)
    robust = teachers["robust"]
    assert not robust.training and not any(p.requires_grad for p in robust.parameters())
    w0 = copy.deepcopy(robust.state_dict())
    for epoch in (0, 49):  # 1-based epochs 1..50: no ITT
        step = make_step(student, teachers, seed=epoch, epoch=epoch)
        regs.outer_losses.build("ciard", {})(step).backward()
        itt.before_step(step)
        itt.after_step(step)
        assert all(torch.equal(w0[k], v) for k, v in robust.state_dict().items())
    step = make_step(student, teachers, seed=7, epoch=50)  # 1-based 51: ITT with lr 1e-4 cos_exp(51, 50, 300)
    itt.before_step(step)
    ref = copy.deepcopy(robust).requires_grad_(True)
    ce = nn.functional.cross_entropy(ref(step.x_adv), step.y)
    grads = torch.autograd.grad(ce, list(ref.parameters()))
    itt.after_step(step)
    lr = 1e-4 * (0.5 + 0.5 * math.cos(math.pi / 250)) * math.exp(-0.01 / 250**2)
    assert step.logs["itt_lr"] == pytest.approx(lr)
    for p, p0, g in zip(robust.parameters(), ref.parameters(), grads, strict=True):
        assert torch.allclose(p, p0 - lr * (g + 2e-4 * p0), atol=1e-9)  # SGD, first step: momentum buffer = g
    assert not robust.training and not any(p.requires_grad for p in robust.parameters())
    assert all(p.grad is None for p in teachers["natural"].parameters())


def test_itt_reproducing_the_official_train_mode_reuses_the_kd_forward(regs) -> None:
    itt, student, teachers = _itt_run(regs, teacher_train_mode=True)
    robust = nn.Sequential(teachers["robust"], nn.BatchNorm1d(C))  # BN: train mode is observable
    teachers["robust"] = robust
    itt.setup(SimpleNamespace(teachers=teachers, config=SimpleNamespace(optim=SimpleNamespace(epochs=300)),
                              dist=DistContext()))
    assert robust.training and itt.grad_teachers == {"robust"}
    step = make_step(student, teachers, seed=1, epoch=60, grad_teachers=itt.grad_teachers)
    itt.before_step(step)  # the official unused clean forward moves the running statistics
    assert int(robust[1].num_batches_tracked) == 1
    loss = regs.outer_losses.build("ciard", {})(step)
    assert step.teacher_logits_graph("adv", "robust").requires_grad  # the KD target's forward, with its graph
    loss.backward()
    assert all(p.grad is None for p in robust.parameters())  # the KD loss never reaches the teacher
    w0 = copy.deepcopy(robust.state_dict())
    itt.after_step(step)
    assert int(robust[1].num_batches_tracked) == 2  # no third forward: ITT reused T_adv(x')
    assert not torch.equal(w0["0.weight"], robust.state_dict()["0.weight"])


# -- through the engine -----------------------------------------------------------------------------


def two_teacher_config(tiny_raw, regs, method: str, overrides: list[str] = (), **top):
    raw = tiny_raw(method, True, **top)
    raw["teachers"]["natural"] = {"key": "timm:convnet_xs"}
    return resolve_config(raw, regs, overrides=list(overrides))


FAST = ["optim.epochs=1", "eval.attacks=[clean]", "eval.select=clean"]


@pytest.mark.parametrize("method", ["mtard", "bmtard", "ciard", "ciard_no_push"])
def test_each_multi_teacher_method_trains_one_epoch(tiny_raw, regs, method: str) -> None:
    cfg = two_teacher_config(tiny_raw, regs, method, FAST + ["teacher_updater.kwargs.start_epoch=0"]
                             if method.startswith("ciard") else FAST)
    summary = train(cfg)
    row = json.loads((Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()[0])
    assert summary["best_epoch"] == 0 and math.isfinite(row["train_loss"])
    assert {"train_w_adv", "train_w_nat", "train_tau_adv", "train_tau_nat"} <= row.keys()
    if method == "ciard":
        assert {"train_push", "train_push_scale", "train_itt_ce", "train_itt_lr"} <= row.keys()
    if method == "mtard":
        assert row["train_tau_adv"] == 1.0


def _resume_equals_uninterrupted(tiny_raw, regs, tmp_path: Path, method: str, over: list[str]) -> tuple[dict, dict]:
    full = two_teacher_config(tiny_raw, regs, method, over + [f"output_dir={tmp_path / 'full'}"])
    part = two_teacher_config(tiny_raw, regs, method, over + [f"output_dir={tmp_path / 'part'}"])
    train(full)
    assert train(part, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    after_one = load_checkpoint(tmp_path / "part" / "last.pt")
    train(part)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["parts"]["outer_loss"] == b["parts"]["outer_loss"]
    rows = lambda d: [{k: v for k, v in json.loads(r).items() if not k.startswith("time_")}  # noqa: E731
                      for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert rows("full") == rows("part")
    return after_one, a


def test_mtard_resume_equals_an_uninterrupted_run(tiny_raw, regs, tmp_path: Path) -> None:
    after_one, final = _resume_equals_uninterrupted(tiny_raw, regs, tmp_path, "mtard",
                                                    ["optim.epochs=3", "eval.attacks=[clean]", "eval.select=clean"])
    assert after_one["parts"]["outer_loss"]["l0_adv"] == final["parts"]["outer_loss"]["l0_adv"]
    assert after_one["parts"]["outer_loss"]["w_nat"] != final["parts"]["outer_loss"]["w_nat"]


def test_ciard_resume_with_itt_equals_an_uninterrupted_run(tiny_raw, regs, tmp_path: Path) -> None:
    over = ["optim.epochs=3", "eval.attacks=[clean]", "eval.select=clean", "teacher_updater.kwargs.start_epoch=1",
            "teacher_updater.kwargs.end_epoch=10", "teacher_updater.kwargs.lr=0.05"]
    after_one, final = _resume_equals_uninterrupted(tiny_raw, regs, tmp_path, "ciard", over)
    t1, t3 = after_one["parts"]["teacher_updater"]["teacher"], final["parts"]["teacher_updater"]["teacher"]
    full = load_checkpoint(tmp_path / "full" / "last.pt")["parts"]["teacher_updater"]["teacher"]
    part = load_checkpoint(tmp_path / "part" / "last.pt")["parts"]["teacher_updater"]["teacher"]
    assert all(torch.equal(full[k], part[k]) for k in full)  # the fine-tuned teacher too
    assert any(not torch.equal(t1[k], t3[k]) for k in t1)  # ITT (epochs 1 and 2) changed it
    rows = [json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert "train_itt_ce" not in rows[0] and "train_itt_ce" in rows[1]
