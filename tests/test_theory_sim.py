"""The patch-model simulation of benchmarks/theory: the data, teachers, losses and attack are the defined ones."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from .scripts import load_script

pm = load_script("benchmarks/theory/patch_model.py")

SMALL = pm.Setting(d=60, patches=3, n_train=24, n_unlearnable=4, m=3, sigma_0=0.3, sigma_n=60 ** -0.5, n_test=8)


def _data(seed: int = 0) -> tuple[torch.Tensor, pm.Data]:
    gen = torch.Generator().manual_seed(seed)
    return pm.init_student(SMALL, gen), pm.make_data(SMALL, SMALL.n_train, SMALL.n_unlearnable, gen)


def test_data_follow_the_patch_model() -> None:
    w, data = _data()
    s = SMALL
    assert int(data.unlearnable.sum()) == s.n_unlearnable and set(data.y.tolist()) <= {-1.0, 1.0}
    signal = data.x[:, 0]
    assert torch.equal(signal[~data.unlearnable, 0], s.alpha * data.y[~data.unlearnable])  # alpha y u on S_L
    assert torch.equal(signal[data.unlearnable, s.d - 1], s.alpha * data.y[data.unlearnable])  # alpha y v on S_U
    assert (signal.abs() > 0).sum(1).eq(1).all()  # nothing else in the signal patch
    assert torch.equal(data.x[:, 1:], data.noise)
    assert data.noise[..., 0].abs().max() == 0 and data.noise[..., s.d - 1].abs().max() == 0  # noise _|_ u, v
    assert w[..., s.d - 1].abs().max() == 0  # the student cannot see v


def test_network_and_teachers_by_hand() -> None:
    s = SMALL
    w, data = _data()
    x = data.x[:2]
    by_hand = []
    for n in range(2):
        heads = [sum(F.relu(w[j, r] @ x[n, p]) ** 3 for r in range(s.m) for p in range(s.patches)) / s.m
                 for j in range(2)]
        by_hand.append(heads[0] - heads[1])
    assert torch.allclose(pm.network(w, x), torch.stack(by_hand), rtol=1e-5)
    assert torch.allclose(pm.patch_margins(pm.preactivations(w, x)[0], data.y[:2], s.m).sum(1),
                          data.y[:2] * pm.network(w, x), rtol=1e-5)
    for kind, on_su in (("good", 0.0), ("bad", s.gamma)):
        margin = data.y * pm.network(pm.make_teacher(s, kind), data.x)
        assert torch.allclose(margin[~data.unlearnable], torch.full_like(margin[~data.unlearnable], s.gamma), rtol=1e-5)
        assert torch.allclose(margin[data.unlearnable], torch.full_like(margin[data.unlearnable], on_su), atol=1e-5)


def test_ad_loss_pulls_the_student_margin_towards_the_teachers() -> None:
    """d L_AD / d(y f) = s(y f) - s(y f_T): zero where the student matches the teacher's soft label."""
    margin = torch.tensor([-2.0, 0.0, 0.5, 3.0], requires_grad=True)
    target = torch.sigmoid(torch.tensor([5.0, 0.0, 0.0, 5.0]))
    (grad,) = torch.autograd.grad(pm.outer_loss(margin, target) * 4, margin)
    assert torch.allclose(grad, torch.sigmoid(margin) - target)
    (grad,) = torch.autograd.grad(pm.outer_loss(margin, None) * 4, margin)
    assert torch.allclose(grad, -torch.sigmoid(-margin))  # AT: l(y f) = log(1 + exp(-y f))


def _input_space_pgd(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """The reference: PGD on l(y f(X + delta)) in R^{P x d}, per-patch normalised steps and l2 projection."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(F.softplus(-y * pm.network(w, x + delta)).sum(), delta)
        with torch.no_grad():
            delta = delta + 2.5 * eps / steps * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            delta = delta * (eps / delta.norm(dim=-1, keepdim=True).clamp_min(eps))
    return x + delta


def test_span_attack_equals_pgd_in_input_space_and_stays_in_the_ball() -> None:
    s = dataclasses.replace(SMALL)
    w, data = _data(1)
    w = w.double() * 5  # a trained-like scale: many units active
    x, y = data.x.double(), data.y.double()
    z, gram = pm.preactivations(w, x)
    beta = pm.attack(z, gram, y, s.m, 0.3, 7)
    delta = beta @ w.reshape(-1, s.d)  # delta_p = beta_p W
    assert delta.norm(dim=-1).max() <= 0.3 + 1e-9
    reference = _input_space_pgd(w, x, y, 0.3, 7)
    assert torch.allclose(x + delta, reference, atol=1e-8)
    assert torch.allclose(pm.adversarial_margin(z, gram, y, s.m, beta), y * pm.network(w, x + delta), atol=1e-8)
    # restarts keep each patch's best, so they never do worse than the single run from delta = 0
    more = pm.attack(z, gram, y, s.m, 0.3, 7, restarts=4, gen=torch.Generator().manual_seed(0))
    assert ((more @ w.reshape(-1, s.d)).norm(dim=-1) <= 0.3 + 1e-9).all()
    assert (pm.patch_margins(z + more @ gram, y, s.m) <= pm.patch_margins(z + beta @ gram, y, s.m) + 1e-12).all()


@pytest.mark.parametrize("method", ["at", "ad_good", "ad_bad"])
def test_training_logs_every_measure_with_the_eps_warmup(method: str) -> None:
    s = dataclasses.replace(SMALL, steps=6, log_every=3, eps_warmup=2, eval_radii=(1.0,), eval_restarts=2, eta=1.0)
    rows = pm.train(s, method, seed=0)
    assert [r["step"] for r in rows] == [0, 3, 6] and [r["eps"] for r in rows] == [0.0, s.eps, s.eps]
    for key in ("noise_su", "noise_sl", "signal", "clean_err_sl", "robust1_err_sl", "radius_sl"):
        assert all(r[key] == r[key] for r in rows), key  # finite, not NaN
    assert all(0 <= r["radius_sl"] <= s.alpha for r in rows)


def test_tables_have_a_robust_error_column_per_radius():
    cols = pm.columns(dataclasses.replace(SMALL, eval_radii=(1.0, 1.95, 2.0)))
    keys = [k for k, _, _ in cols]
    assert keys[4:7] == ["robust1_err_sl", "robust1.95_err_sl", "robust2_err_sl"]
    assert [h for k, h, _ in cols if k.startswith("robust")] == [
        "robust test error at eps, S_L-type (%)", "robust test error at 1.95 eps, S_L-type (%)",
        "robust test error at 2 eps, S_L-type (%)", "robust test error, S_U-type (%)"]
