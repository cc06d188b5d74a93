"""Networks trained beside the student (robust_distill/trained.py): one step, AMP unscaling, skipped steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robust_distill.engine.trained import TrainedModel


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def loss_of(model: nn.Module, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return nn.functional.cross_entropy(model(x), y)


def sgd_by_hand(model: nn.Module, lr: float) -> dict[str, torch.Tensor]:
    """One plain SGD step (momentum buffers start at the gradient, so the first step is ``w - lr g``)."""
    loss_of(model).backward()
    return {k: (p - lr * p.grad).detach() for k, p in model.named_parameters()}


def test_own_step_is_one_sgd_step() -> None:
    model = net()
    expected = sgd_by_hand(copy.deepcopy(model), lr=0.5)
    trained = TrainedModel(model, name="teacher", lr=0.5, momentum=0.9)
    assert trained.own_step(loss_of(model))
    assert all(torch.allclose(p, expected[k]) for k, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_step_unscales_gradients_of_the_engines_scaled_loss() -> None:
    """PeerAiD's peer: the engine back-propagated ``scale * loss``; the step divides by the scale."""
    a, b = net(), net()
    ta, tb = TrainedModel(a, lr=0.5), TrainedModel(b, lr=0.5)
    loss_of(a).backward()
    (1024.0 * loss_of(b)).backward()
    assert ta.step() and tb.step(loss_scale=1024.0)
    assert all(torch.allclose(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_non_finite_gradients_skip_the_step() -> None:
    model = net()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trained = TrainedModel(model, lr=0.5)
    (loss_of(model) * float("inf")).backward()
    assert trained.step() is False
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert trained.own_step(loss_of(model) * float("nan")) is False
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())


def test_step_without_gradients_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="received no gradient"):
        TrainedModel(net(), lr=0.1).step()


def test_train_on_fine_tunes_a_frozen_eval_mode_teacher_and_restores_it() -> None:
    teacher = net().eval().requires_grad_(False)
    expected = sgd_by_hand(copy.deepcopy(teacher).train().requires_grad_(True), lr=0.5)
    seen_training = []

    def objective(m: nn.Module) -> torch.Tensor:
        seen_training.append(m.training)
        return loss_of(m)

    TrainedModel(teacher, lr=0.5).train_on(objective)
    assert seen_training == [True]  # BN in train mode for the fine-tuning forward
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.allclose(p, expected[k]) for k, p in teacher.named_parameters())


def test_state_round_trip_under_the_roles_name() -> None:
    a = TrainedModel(net(0), name="peer", lr=0.5)
    a.own_step(loss_of(a.model))
    state = a.state_dict()
    assert set(state) == {"peer", "optimizer"}  # no "scaler" without fp16 AMP
    b = TrainedModel(net(1), name="peer", lr=0.5)
    b.load_state_dict(state)
    assert all(torch.equal(v, state["peer"][k]) for k, v in b.model.state_dict().items())
    a.own_step(loss_of(a.model, 2))
    b.own_step(loss_of(b.model, 2))  # the momentum buffers were restored too
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_on_computes_the_objective_in_the_runs_precision(precision: str) -> None:
    autocast_on = []

    def objective(m: nn.Module) -> torch.Tensor:
        autocast_on.append(torch.is_autocast_enabled("cpu"))
        return loss_of(m)

    TrainedModel(net(), lr=0.5, precision=precision).train_on(objective)
    assert autocast_on == [precision == "bf16"]


def test_one_non_finite_gradient_among_many_skips_the_step() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2))
    trained = TrainedModel(model, lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[1].bias.grad[1] = float("inf")
    assert trained._grads_finite() is False
    model[1].bias.grad[1] = 1.0
    assert trained._grads_finite() is True
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())  # the check leaves them as they are
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
