"""The PGD loop, the inner attacks and the evaluation attacks: eps ball, [0, 1], frozen parameters, modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robust_distill import Step, ThreatModel
from robust_distill.core.attacks import frozen_parameters, model_mode, pgd
from robust_distill.engine.evaluation import make_eval_attacks

EPS = 8 / 255


def cnn(seed: int, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4)]
    return nn.Sequential(*layers)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=g)
    x[0] = 0.0  # corners of the [0, 1] box are where clamping matters
    x[1] = 1.0
    return x, torch.randint(0, 4, (8,), generator=g)


def in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


def test_pgd_reproduces_torchattacks_pgd_exactly(batch) -> None:
    x, y = batch
    model = cnn(0).eval()
    torch.manual_seed(1)
    ref = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=5, random_start=True)(x, y)
    torch.manual_seed(1)
    with frozen_parameters(model):
        ours = pgd(lambda xa: F.cross_entropy(model(xa), y), x, eps=EPS, step_size=2 / 255, steps=5,
                   start="uniform", clamp_start=True)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("start", ["uniform", "gaussian", "none"])
@pytest.mark.parametrize("clamp_start", [True, False])
def test_pgd_stays_in_the_ball_and_increases_the_loss(batch, start: str, clamp_start: bool) -> None:
    x, y = batch
    model = cnn(0).eval()
    objective = lambda xa: F.cross_entropy(model(xa), y, reduction="sum")  # noqa: E731
    x_adv = pgd(objective, x, eps=EPS, step_size=2 / 255, steps=5, start=start, clamp_start=clamp_start)
    assert in_ball(x_adv, x, EPS)
    assert objective(x_adv) > objective(x)
    assert not x_adv.requires_grad


def test_frozen_parameters_and_model_mode_restore_state() -> None:
    model = cnn(0)
    model[1].eval()  # a submodule with its own mode
    model[0].weight.requires_grad_(False)  # a parameter already frozen stays frozen
    with frozen_parameters(model), model_mode(model, False):
        assert not any(p.requires_grad for p in model.parameters())
        assert not any(m.training for m in model.modules())
    assert model.training and not model[1].training
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad


def _step(regs, x: torch.Tensor, y: torch.Tensor, teacher_bn: bool = True) -> Step:
    return Step(x, y, student=cnn(0).train(), teachers={"robust": cnn(1, teacher_bn).eval().requires_grad_(False)},
                threat=ThreatModel(eps=EPS, step_size=2 / 255, steps=4))


INNER = [
    ("pgd_ce", {}),
    ("pgd_ce", {"start": "gaussian", "clamp_start": False, "bn_mode": "train"}),
    ("kl_pgd", {"target": "teacher_clean"}),
    ("kl_pgd", {"target": "teacher_adv"}),
    ("kl_pgd", {"target": "student_clean", "start": "uniform", "clamp_start": True}),
]


@pytest.mark.parametrize("key,kwargs", INNER, ids=[f"{k}-{i}" for i, (k, _) in enumerate(INNER)])
def test_inner_attacks_stay_in_the_ball_and_touch_no_parameter(regs, batch, key: str, kwargs: dict) -> None:
    x, y = batch
    step = _step(regs, x, y)
    attack = regs.inner_attacks.build(key, kwargs)
    student = step.student
    running = student[1].running_mean.clone()
    x_adv = attack(step)
    assert in_ball(x_adv, x, EPS)
    assert all(p.grad is None for p in student.parameters())  # input gradients only
    assert all(p.requires_grad for p in student.parameters())  # restored
    assert student.training  # mode restored
    moved = not torch.equal(running, student[1].running_mean)
    assert moved == (kwargs.get("bn_mode") == "train")  # BN statistics move only in train-mode attacks


def test_adaad_inner_attack_uses_the_teacher_gradient(regs, batch) -> None:
    """KL(S(x')||T(x')) depends on x' through the teacher; KL(S(x')||T(x)) does not (RSLAD)."""
    x, y = batch
    out = {}
    for target in ("teacher_adv", "teacher_clean"):
        torch.manual_seed(0)
        out[target] = regs.inner_attacks.build("kl_pgd", {"target": target})(_step(regs, x, y))
    assert not torch.equal(out["teacher_adv"], out["teacher_clean"])


EVAL = ["clean", "fgsm", "pgd20", "pgd20_trades", "pgd10", "cw_inf", "apgd_ce"]


@pytest.mark.parametrize("name", EVAL)
def test_eval_attacks_stay_in_the_ball(regs, batch, name: str) -> None:
    x, y = batch
    model = cnn(0).eval()
    attack = make_eval_attacks([name], regs, ThreatModel(eps=EPS), num_classes=4)[name]
    x_adv = attack(model, x, y)
    assert in_ball(x_adv, x, EPS)
    if name != "clean":
        with torch.no_grad():
            assert (model(x_adv).argmax(1) == y).sum() <= (model(x).argmax(1) == y).sum()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["autoattack", "autoattack_apgd", "autoattack_fast"])
def test_autoattack_stays_in_the_ball(regs, batch, name: str) -> None:
    x, y = batch
    model = cnn(0).eval()
    x_adv = make_eval_attacks([name], regs, ThreatModel(eps=EPS), num_classes=4)[name](model, x[:4], y[:4])
    assert in_ball(x_adv, x[:4], EPS)


def test_eval_step_sizes_follow_the_paper_conventions(regs) -> None:
    attacks = make_eval_attacks(["pgd20", "pgd20_trades", "cw_inf"], regs, ThreatModel(eps=EPS), num_classes=10)
    assert "2/255" in attacks["pgd20"].label
    assert "0.003" in attacks["pgd20_trades"].label
    assert attacks["cw_inf"].steps == 30 and attacks["cw_inf"].kappa == 50


def test_eval_attacks_take_a_threat_model(regs, batch) -> None:
    """Every attack is built at ``threat.eps``; the former ``eps=<float>`` builds the same attacks, with a
    DeprecationWarning for one release; a missing, doubled or loose-float radius is refused."""
    x, y = batch
    model = cnn(0).eval()
    built = make_eval_attacks(["pgd20", "cw_inf"], regs, ThreatModel(eps="4/255", steps=3), num_classes=4)
    assert built["pgd20"].eps == built["cw_inf"].eps == 4 / 255
    with pytest.warns(DeprecationWarning, match=r"pass threat=ThreatModel\(eps=...\)"):
        former = make_eval_attacks(["pgd20"], regs, eps=4 / 255, num_classes=4)
    assert former["pgd20"].label == built["pgd20"].label
    torch.manual_seed(0)
    x_adv = built["pgd20"](model, x, y)
    torch.manual_seed(0)
    assert torch.equal(former["pgd20"](model, x, y), x_adv) and in_ball(x_adv, x, 4 / 255)
    with pytest.raises(TypeError, match="not neither"):
        make_eval_attacks(["pgd20"], regs, num_classes=4)
    with pytest.raises(TypeError, match="not both"):
        make_eval_attacks(["pgd20"], regs, ThreatModel(), eps=0.03, num_classes=4)
    with pytest.raises(TypeError, match="must be a ThreatModel"):
        make_eval_attacks(["pgd20"], regs, 0.03, num_classes=4)  # type: ignore[arg-type]
