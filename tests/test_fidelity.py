"""Fidelity to the official codes beyond the losses' values (issue 14).

Each test writes the official code's step out by hand (its forwards, modes and order, in float64) and compares
it with one step of the engine (:func:`robust_distill.engine.trainer.step_loss` on the method's registered parts):
the student's BN running statistics after the step (which evaluation uses), CIARD's adversarial examples, the
TRADES learning-rate schedule, and IAD-II's documented defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill import Step, ThreatModel
from robust_distill.engine.trainer import step_loss

EPS, STEP_SIZE, STEPS = 8 / 255, 2 / 255, 5
KL_SUM = nn.KLDivLoss(reduction="sum")


def bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 4)).double()


def batch() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)


def bn_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-12), k


def build_parts(regs, method: str, **outer_kwargs: Any) -> tuple[Any, Any, Any]:
    m = regs.methods.get(method)
    inner = regs.inner_attacks.build(m.inner_attack.key, dict(m.inner_attack.kwargs))
    outer = regs.outer_losses.build(m.outer_loss.key, {**m.outer_loss.kwargs, **outer_kwargs}, num_classes=4,
                                    batch_size=8)
    updater = regs.teacher_updaters.build("frozen", {})
    return inner, outer, updater


def engine_step(regs, method: str, student: nn.Module, teachers: dict[str, nn.Module], *, epoch: int = 0,
                grad_teachers: frozenset[str] = frozenset(), updater: Any = None, **outer_kwargs: Any) -> Step:
    """One step of the engine (forward up to the loss, then backward) on ``student`` in train mode."""
    x, y = batch()
    inner, outer, frozen = build_parts(regs, method, **outer_kwargs)
    step = Step(x, y, student=student.train(), teachers=teachers, epoch=epoch, epochs=200,
                threat=ThreatModel(eps=EPS, step_size=STEP_SIZE, steps=STEPS), grad_teachers=grad_teachers)
    torch.manual_seed(1)
    loss = step_loss(step, inner_attack=inner, outer_loss=outer, teacher_updater=updater or frozen)
    loss.backward()
    step.logs["loss"] = loss.item()
    return step


# -- the official codes' steps, written out ----------------------------------------------------------


def linf_step(x_adv: Tensor, grad: Tensor, x: Tensor) -> Tensor:
    """The official codes' update: ``x' + a sign(g)``, ``min(max(., x - eps), x + eps)``, clamp to [0, 1]."""
    x_adv = x_adv.detach() + STEP_SIZE * torch.sign(grad.detach())
    return torch.clamp(torch.min(torch.max(x_adv, x - EPS), x + EPS), 0.0, 1.0)


def ard_attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """ARD/IAD ``AttackPGD.forward`` without its final forward: uniform start, train mode (the caller's)."""
    x_adv = x.detach() + torch.zeros_like(x).uniform_(-EPS, EPS)
    for _ in range(STEPS):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        x_adv = linf_step(x_adv, torch.autograd.grad(loss, [x_adv])[0], x)
    return x_adv


def kl_attack(model: nn.Module, target: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The TRADES-family inner loop: 0.001 N(0,1) start, summed KL to ``target(x_adv)``, caller's modes."""
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, dtype=x.dtype).detach()
    for _ in range(STEPS):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = KL_SUM(F.log_softmax(model(x_adv), dim=1), F.softmax(target(x_adv), dim=1))
        x_adv = linf_step(x_adv, torch.autograd.grad(loss, [x_adv])[0], x)
    return x_adv


def official_ard(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, epoch: int) -> None:
    """``goldblum/AdversariallyRobustDistillation/main.py`` ``train``: everything in train mode."""
    student.train()
    x_adv = ard_attack(student, x, y)
    student(x_adv)  # AttackPGD returns basic_net(x)
    teacher(x)
    student(x)  # basic_outputs = basic_net(inputs), weight 1 - alpha = 0


def official_trades(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, epoch: int) -> None:
    """``yaodongyu/TRADES/trades.py`` ``trades_loss``."""
    student.eval()
    x_adv = kl_attack(student, lambda _: student(x), x)
    student.train()
    student(x)  # logits = model(x_natural)
    student(x_adv)  # criterion_kl(F.log_softmax(model(x_adv)), F.softmax(model(x_natural))): left to right
    student(x)


def official_adaad(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, epoch: int) -> None:
    """``boyellow/AdaAD/main.py`` (``AdaAD``) with ``AT_helper.adaad_inner_loss``."""
    student.eval()
    teacher.eval()
    x_adv = kl_attack(student, teacher, x)
    student.train()
    student(x)  # ori_outputs = net(inputs), even with AdaAD_alpha = 1
    student(x_adv)


def official_iad1(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, epoch: int) -> None:
    """``ZFancy/IAD/IAD-I.py`` ``train`` (begin = 60)."""
    student.train()
    teacher(x)
    x_adv = ard_attack(student, x, y)
    student(x_adv)  # AttackPGD's return value
    student(x_adv)  # basicop = basic_net(pert_inputs).detach()
    teacher(x_adv)
    if epoch >= 60:
        student(x)  # the introspection term's F.softmax(basic_net(inputs))
    student(x)  # XENT_loss(basic_net(inputs), targets), weight 1 - alpha = 0


def official_adaiad(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, epoch: int) -> None:
    """``boyellow/AdaAD/main.py`` (``AdaAD_with_IAD1``, IAD_begin = 60)."""
    student.eval()
    x_adv = kl_attack(student, teacher, x)
    student.train()
    student(x)  # ori_outputs
    student(x_adv)  # adv_outputs
    if epoch >= 60:
        student(x)  # introspection term
    student(x)  # XENT_loss(net(inputs), targets), weight 1 - IAD_alpha = 0


def official_peeraid(student: nn.Module, peer: nn.Module, x: Tensor, y: Tensor, epoch: int) -> None:
    """``jaewonalive/PeerAiD/main.py`` ``train_kd`` with ``attack_function.LinfPeerAttack``."""
    peer.eval()
    with torch.no_grad():
        peer_logits = peer(x)
    student.eval()
    x_adv = kl_attack(student, lambda _: peer_logits, x)
    peer.train()
    student.train()
    peer(x_adv)
    student(x_adv)  # student_logit_target
    student(x_adv)  # student_outputs
    student(x)  # logit_nat


OFFICIAL = {"ard": (official_ard, 0), "trades": (official_trades, 0), "adaad": (official_adaad, 0),
            "iad1": (official_iad1, 0), "iad1-introspection": (official_iad1, 60),
            "adaiad": (official_adaiad, 0), "adaiad-introspection": (official_adaiad, 60),
            "peeraid": (official_peeraid, 0)}


@pytest.mark.parametrize("case", list(OFFICIAL))
def test_student_bn_statistics_after_one_step_equal_the_official_code(regs, case: str) -> None:
    """The official codes' extra train-mode forwards (unused ``S(x)``, repeated ``S(x)``/``S(x')``) move the BN
    running statistics; ``reproduce_forwards`` (default) runs them in the same order, without changing the
    loss or its gradient; ``reproduce_forwards: false`` skips them."""
    method = case.split("-")[0]
    official, epoch = OFFICIAL[case]
    student, teacher = bn_net(0), bn_net(1).eval().requires_grad_(False)
    reference = copy.deepcopy(student)
    x, y = batch()
    torch.manual_seed(1)
    official(reference, copy.deepcopy(teacher), x, y, epoch)

    role = "peer" if method == "peeraid" else "robust"
    steps = {}
    for reproduce in (True, False):
        model = copy.deepcopy(student)
        peer = copy.deepcopy(teacher).requires_grad_(method == "peeraid")
        steps[reproduce] = engine_step(regs, method, model, {role: peer}, epoch=epoch, reproduce_forwards=reproduce,
                                       grad_teachers=frozenset({role}) if method == "peeraid" else frozenset())
        steps[reproduce].logs["state"] = bn_state(model)  # type: ignore[assignment]
        steps[reproduce].logs["grads"] = [p.grad.clone() for p in model.parameters()]  # type: ignore[assignment]
    on, off = steps[True], steps[False]
    assert_same_state(on.logs["state"], bn_state(reference))  # type: ignore[arg-type]
    assert any(not torch.allclose(v, off.logs["state"][k]) for k, v in on.logs["state"].items())  # type: ignore
    assert torch.equal(on.x_adv, off.x_adv)
    assert on.logs["loss"] == pytest.approx(off.logs["loss"], rel=1e-12)
    for g_on, g_off in zip(on.logs["grads"], off.logs["grads"], strict=True):  # type: ignore[call-overload]
        assert torch.allclose(g_on, g_off, rtol=1e-10, atol=1e-14)


def test_ciard_attacks_after_the_train_mode_clean_forward(regs) -> None:
    """``eminentgu/CIARD/CIARD.py``: ``student(x)`` in train mode, then the eval-mode CE attack of
    ``robust_inner_loss_push``, which sees running statistics already updated with the batch."""
    x, y = batch()
    student, t_adv, t_nat = bn_net(0), bn_net(1), bn_net(2).eval().requires_grad_(False)
    itt = regs.teacher_updaters.build("ciard_itt", {})
    itt.setup(SimpleNamespace(teachers={"robust": t_adv}, config=SimpleNamespace(optim=SimpleNamespace(epochs=200))))
    reference = copy.deepcopy(student)

    torch.manual_seed(1)
    reference.train()
    reference(x)  # student_nat_logits = student(train_batch_data)
    reference.eval()
    x_ref = x.detach() + 0.001 * torch.randn(x.shape, dtype=x.dtype).detach()
    for _ in range(STEPS):
        x_ref.requires_grad_()
        with torch.enable_grad():
            loss_ce = F.cross_entropy(reference(x_ref), y)
        x_ref = linf_step(x_ref, torch.autograd.grad(loss_ce, [x_ref])[0], x)
    reference.train()
    reference(x_ref)  # student_logits = model(x_adv)

    step = engine_step(regs, "ciard", student, {"robust": t_adv, "natural": t_nat}, updater=itt)
    assert torch.allclose(step.x_adv, x_ref, rtol=0, atol=1e-12)
    assert_same_state(bn_state(student), bn_state(reference))

    # attacking first (the previous order) gives other examples: the order is not cosmetic
    torch.manual_seed(1)
    attack_first = regs.inner_attacks.build("pgd_ce", dict(regs.methods.get("ciard").inner_attack.kwargs))
    other = Step(x, y, student=bn_net(0).train(), teachers={}, threat=step.threat)
    assert not torch.allclose(attack_first(other), x_ref, rtol=0, atol=1e-6)


def test_before_attack_runs_before_the_inner_attack() -> None:
    """The engine's order: updater ``before_step``, outer ``before_attack``, inner attack, outer loss."""
    calls: list[str] = []
    x, y = batch()
    step = Step(x, y, student=bn_net(0), teachers={}, threat=ThreatModel(eps=EPS, step_size=STEP_SIZE, steps=1))

    class Outer:
        def before_attack(self, s: Step) -> None:
            calls.append("outer.before_attack")

        def __call__(self, s: Step) -> Tensor:
            calls.append("outer")
            return s.x_adv.sum()

    def inner(s: Step) -> Tensor:
        calls.append("inner")
        return s.x

    updater = SimpleNamespace(before_step=lambda s: calls.append("updater.before_step"))
    step_loss(step, inner_attack=inner, outer_loss=Outer(), teacher_updater=updater)  # type: ignore[arg-type]
    assert calls == ["updater.before_step", "outer.before_attack", "inner", "outer"]


def test_trades_lr_decays_at_the_official_epochs(regs) -> None:
    """``train_trades_cifar10.py`` loops ``for epoch in range(1, epochs + 1)`` with ``epoch >= 75`` (90, 100):
    the 0-based epochs 74, 89, 99 of the engine."""

    def official_lr(epoch: int) -> float:  # adjust_learning_rate, 1-based epoch
        lr = 0.1
        if epoch >= 75:
            lr = 0.1 * 0.1
        if epoch >= 90:
            lr = 0.1 * 0.01
        if epoch >= 100:
            lr = 0.1 * 0.001
        return lr

    schedule = regs.methods.get("trades").defaults["optim"]["schedule"]
    lr_factor = regs.lr_schedules.build(schedule["key"], schedule["kwargs"], epochs=110)
    for epoch in range(110):
        for within in (0.0, 0.5, 0.99):
            assert 0.1 * lr_factor(epoch + within) == pytest.approx(official_lr(epoch + 1), rel=1e-12), epoch


def test_iad2_follows_the_official_head(regs) -> None:
    """``ZFancy/IAD/IAD-II.py`` at HEAD: ``--beta`` declared once (0.1), ``--begin`` 40, a ResNet-18
    standard-trained teacher (the docstring once said the script could not start and named a WideResNet)."""
    import robust_distill_plugins.iad as iad

    kwargs = regs.methods.get("iad2").outer_loss.kwargs
    assert (kwargs["beta"], kwargs["begin"]) == (0.1, 40)
    doc = " ".join((iad.__doc__ or "").split())
    assert "does not start as shipped" not in doc and "declares ``--beta`` twice" not in doc
    assert "(WideResNet); here" not in doc and "``ResNet18`` at the repository's HEAD" in doc


def test_igdm_over_ciard_keeps_ciards_train_mode_forward_before_the_attack(regs) -> None:
    """``igdm`` with ``base: ciard`` forwards ``before_attack``: the attack sees the BN statistics of CIARD's
    train-mode ``S(x)``, so its adversarial examples are plain ``ciard``'s (issue 20: they were not)."""
    teachers = {"robust": bn_net(1).eval().requires_grad_(False), "natural": bn_net(2).eval().requires_grad_(False)}
    ciard = regs.methods.get("ciard")
    ciard_step = engine_step(regs, "ciard", bn_net(0), teachers)
    x, y = batch()
    step = Step(x, y, student=bn_net(0).train(), teachers=teachers, epoch=0, epochs=200,
                threat=ThreatModel(eps=EPS, step_size=STEP_SIZE, steps=STEPS))
    igdm = regs.outer_losses.build("igdm", {"base": "ciard", "base_kwargs": dict(ciard.outer_loss.kwargs)},
                                   num_classes=4, batch_size=8, registries=regs)
    inner, _, frozen = build_parts(regs, "ciard")
    torch.manual_seed(1)
    step_loss(step, inner_attack=inner, outer_loss=igdm, teacher_updater=frozen)
    assert torch.equal(step.x_adv, ciard_step.x_adv)
