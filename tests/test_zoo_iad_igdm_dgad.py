"""IAD-I, IAD-II, AKD2, AdaIAD, IGDM (over AdaAD/RSLAD/any loss) and DGAD against formulas written out by hand.

Softmax, log-softmax, KL, CE and MSE are computed here from their definitions (never through
``robust_distill.core.losses``) on tiny ``nn.Linear`` models, so a wrong reduction, temperature, epoch
convention or detach in a plugin shows up as a number mismatch.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from robust_distill import OuterLoss, Step, ThreatModel
from robust_distill.config import resolve_config
from robust_distill.core.registry import Registry, UnknownNameError
from robust_distill.engine.trainer import train

from .handcalc import B, C, D, softmax
from .handcalc import linear as _linear


def make_step(*, epoch: int = 0, epochs: int = 200, natural: bool = False, teacher_grad: bool = False,
              dtype: torch.dtype = torch.float32) -> Step:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, D, generator=g).to(dtype)
    y = torch.tensor([0, 1, 2, 1])
    teachers = {"robust": _linear(2).to(dtype).requires_grad_(teacher_grad)}
    if natural:
        teachers["natural"] = _linear(3).to(dtype).requires_grad_(teacher_grad)
    step = Step(x, y, student=_linear(1).to(dtype), teachers=teachers, threat=ThreatModel(), epoch=epoch,
                epochs=epochs)
    step.add_input("adv", (x + 0.05 * torch.randn(B, D, generator=g).to(dtype)).clamp(0, 1))
    return step


# -- formulas by hand -------------------------------------------------------------------------------

def kl_rows(s: Tensor, t: Tensor) -> Tensor:
    """Per-sample ``sum_c p_t (log p_t - log p_s)``."""
    p_s, p_t = softmax(s), softmax(t)
    return (p_t * (torch.log(p_t) - torch.log(p_s))).sum(dim=1)


def ce(s: Tensor, y: Tensor) -> Tensor:
    return -torch.log(softmax(s)[torch.arange(s.shape[0]), y]).mean()


def outputs(step: Step) -> SimpleNamespace:
    """Fresh forwards of every model on clean and adversarial inputs (no cache, graph kept)."""
    S, T = step.student, step.teachers["robust"]
    out = SimpleNamespace(s_nat=S(step.x), s_adv=S(step.x_adv), t_nat=T(step.x), t_adv=T(step.x_adv))
    if "natural" in step.teachers:
        out.n_adv = step.teachers["natural"](step.x_adv)
    out.alpha = softmax(out.t_adv)[torch.arange(B), step.y] ** 0.1
    return out


def build(regs, key: str, **kwargs) -> OuterLoss:
    return regs.outer_losses.build(key, kwargs, num_classes=C, registries=regs)


# -- IAD-I ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch", [59, 60, 61])
def test_iad1_loss_before_and_after_begin(regs, epoch: int) -> None:
    step = make_step(epoch=epoch)
    loss = build(regs, "iad1")(step)
    o = outputs(step)
    expected = kl_rows(o.s_adv, o.t_nat).sum() / B  # teacher on the CLEAN input, batchmean, tau = 1
    if epoch >= 60:  # 0-based epoch, the official `epoch >= args.begin`
        expected = expected + ((1 - o.alpha) * kl_rows(o.s_adv, o.s_nat)).sum() / B
        assert step.logs["iad_alpha"] == pytest.approx(o.alpha.mean().item(), rel=1e-6)
    else:
        assert ("student", "clean") not in step._cache  # S(x) is not even computed
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("weight_teacher", [False, True])
def test_iad1_loss_with_temperature_ce_and_paper_weighting(regs, weight_teacher: bool) -> None:
    step = make_step(epoch=100)
    loss = build(regs, "iad1", alpha=0.7, temperature=4.0, weight_teacher=weight_teacher)(step)
    o = outputs(step)
    kd_rows = kl_rows(o.s_adv / 4, o.t_nat / 4)
    kd = ((o.alpha if weight_teacher else 1.0) * kd_rows).sum() / B
    intro = ((1 - o.alpha) * kl_rows(o.s_adv, o.s_nat)).sum() / B  # at tau 1, weighted by a not tau^2
    expected = 0.7 * 16 * kd + 0.7 * intro + 0.3 * ce(o.s_nat, step.y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# -- AdaIAD -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch", [59, 60])
def test_adaiad_loss(regs, epoch: int) -> None:
    method = regs.methods.get("adaiad")
    # float64: at tau 30 the KL is a small difference of log-probabilities, and float32 cancellation alone
    # moves 900 * KL by ~2e-5 relative depending on the CPU's kernels; the formula is what is checked here.
    step = make_step(epoch=epoch, dtype=torch.float64)
    loss = build(regs, method.outer_loss.key, **method.outer_loss.kwargs)(step)
    o = outputs(step)
    expected = 900 * kl_rows(o.s_adv / 30, o.t_adv / 30).sum() / B  # teacher on x', tau 30, batchmean
    if epoch >= 60:
        expected = expected + ((1 - o.alpha) * kl_rows(o.s_adv, o.s_nat)).sum() / B
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.inner_attack.kwargs["target"] == "teacher_adv"


# -- AKD2 / IAD-II ----------------------------------------------------------------------------------
def test_akd2_loss(regs) -> None:
    step = make_step(natural=True, epoch=150)
    loss = build(regs, "akd2")(step)
    o = outputs(step)
    expected = (0.25 * ce(o.s_adv, step.y) + 0.5 * kl_rows(o.s_adv, o.t_adv).sum() / B
                + 0.25 * kl_rows(o.s_adv, o.n_adv).sum() / B)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "iad_alpha" not in step.logs


@pytest.mark.parametrize("epoch,tau", [(39, 1.0), (40, 1.0), (40, 2.0)])
def test_iad2_loss(regs, epoch: int, tau: float) -> None:
    step = make_step(natural=True, epoch=epoch)
    loss = build(regs, "iad2", temperature=tau)(step)
    o = outputs(step)
    at_rows, st_rows = kl_rows(o.s_adv / tau, o.t_adv / tau), kl_rows(o.s_adv / tau, o.n_adv / tau)
    if epoch >= 40:
        robust = (o.alpha * at_rows).sum() / B + ((1 - o.alpha) * kl_rows(o.s_adv, o.s_nat)).sum() / B
    else:
        robust = at_rows.sum() / B
    expected = 0.25 * ce(o.s_adv, step.y) + 0.5 * tau**2 * robust + 0.25 * tau**2 * st_rows.sum() / B
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    if epoch < 40:  # before begin IAD-II is AKD2
        assert loss.item() == pytest.approx(build(regs, "akd2", temperature=tau)(make_step(natural=True)).item(),
                                            rel=1e-6)


def test_iad_methods_use_ards_attack_and_schedule(regs) -> None:
    for name, roles in [("iad1", ("robust",)), ("iad2", ("robust", "natural")), ("akd2", ("robust", "natural"))]:
        m = regs.methods.get(name)
        assert m.teachers == roles
        assert m.inner_attack.key == "pgd_ce"
        assert dict(m.inner_attack.kwargs) == {"start": "uniform", "clamp_start": False, "bn_mode": "train"}
        assert m.defaults["optim"]["weight_decay"] == 2e-4 and m.defaults["optim"]["epochs"] == 200
        assert m.defaults["optim"]["schedule"]["kwargs"]["milestones"] == [100, 150]
    assert regs.methods.get("iad1").outer_loss.kwargs["begin"] == 60
    assert regs.methods.get("iad2").outer_loss.kwargs["begin"] == 40


# -- IGDM -------------------------------------------------------------------------------------------
def igdm_term(step: Step, beta: float = 1.0, gamma: float = 1.0) -> Tensor:
    """``KL_bm(softmax(S(x+b d) - S(x-g d)) || softmax(T(x+b d) - T(x-g d)))`` written out."""
    S, T = step.student, step.teachers["robust"]
    delta = step.x_adv - step.x
    plus, minus = step.x + beta * delta, step.x - gamma * delta
    return kl_rows(S(plus) - S(minus), T(plus) - T(minus)).sum() / B


@pytest.mark.parametrize("epoch", [0, 4, 9])
def test_igdm_over_adaad_and_its_epoch_ramp(regs, epoch: int) -> None:
    method = regs.methods.get("adaad_igdm")
    step = make_step(epoch=epoch, epochs=10)
    loss = build(regs, method.outer_loss.key, **method.outer_loss.kwargs)(step)
    o = outputs(step)
    base = kl_rows(o.s_adv, o.t_adv).sum() / B  # AdaAD term, batchmean as IGDM's scripts
    weight = 20 * (epoch + 1) / 10  # the official 1-based epoch / E: alpha/E at first, alpha at the last epoch
    assert step.logs["igdm_weight"] == pytest.approx(weight)
    assert loss.item() == pytest.approx((base + weight * igdm_term(step)).item(), rel=1e-5)


def test_igdm_other_steps_and_fixed_ramp(regs) -> None:
    step = make_step(epoch=49, epochs=100)
    loss = build(regs, "igdm", base="adaad", base_kwargs={"kl_reduction": "mean"}, alpha=5.0, beta=0.5,
                 gamma=2.0, ramp_epochs=200)(step)
    o = outputs(step)
    base = kl_rows(o.s_adv, o.t_adv).sum() / (B * C)
    expected = base + 5.0 * 50 / 200 * igdm_term(step, beta=0.5, gamma=2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rslad_igdm_loss_and_defaults(regs) -> None:
    method = regs.methods.get("rslad_igdm")
    step = make_step(epoch=299, epochs=300)
    loss = build(regs, method.outer_loss.key, **method.outer_loss.kwargs)(step)
    o = outputs(step)
    p_t = softmax(o.t_nat)

    def rslad_kl(s: Tensor) -> Tensor:  # RSLAD's kl_loss, averaged over B*C
        return (p_t * (torch.log(p_t + 1e-5) - torch.log(softmax(s)))).sum() / (B * C)

    expected = 5 / 6 * rslad_kl(o.s_adv) + 1 / 6 * rslad_kl(o.s_nat) + 20 * igdm_term(step)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.inner_attack.kwargs["target"] == "teacher_clean"
    assert method.defaults["optim"]["epochs"] == 300
    assert method.defaults["optim"]["schedule"]["kwargs"]["milestones"] == [210, 258, 285]


class _Scaled(OuterLoss):
    """A 'third-party' loss: ``scale * CE(S(x'), y)``, with state and a declared ``num_classes``."""

    def __init__(self, scale: float = 1.0, num_classes: int | None = None) -> None:
        self.scale, self.num_classes, self.calls = scale, num_classes, 0

    def __call__(self, step: Step) -> Tensor:
        self.calls += 1
        return self.scale * nn.functional.cross_entropy(step.student_logits("adv"), step.y)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state) -> None:
        self.calls = state["calls"]


def test_igdm_wraps_any_registered_loss(regs) -> None:
    losses = Registry("outer loss")
    losses.register(_Scaled, name="scaled")
    run_registries = SimpleNamespace(outer_losses=losses)  # the run's registries, as the engine passes them
    igdm = partial(regs.outer_losses.get("igdm"), registries=run_registries)
    wrapper = igdm(base="scaled", base_kwargs={"scale": 3.0}, num_classes=C)
    assert isinstance(wrapper.base_loss, _Scaled) and wrapper.base_loss.num_classes == C
    step = make_step(epoch=199)
    loss = wrapper(step)
    o = outputs(step)
    assert loss.item() == pytest.approx((3 * ce(o.s_adv, step.y) + 20 * igdm_term(step)).item(), rel=1e-5)
    assert wrapper.state_dict() == {"base": {"calls": 1}}
    wrapper.load_state_dict({"base": {"calls": 7}})
    assert wrapper.base_loss.calls == 7
    with pytest.raises(UnknownNameError, match="scaled"):
        igdm(base="nope", registries=run_registries)
    with pytest.raises(TypeError, match="base_kwargs"):
        igdm(base="scaled", base_kwargs={"bogus": 1})
    with pytest.raises(TypeError, match="passes the run's registries"):
        regs.outer_losses.get("igdm")(base="scaled")


# -- DGAD -------------------------------------------------------------------------------------------
def dgad_step(y: list[int] | None = None) -> Step:
    """A batch whose teacher is right on x0, x1, wrong on x2, x3 (clean), and wrong on x'1 (adv).

    The teacher reads its logits off the first three coordinates (times 5), so its predictions are set
    by construction.
    """
    teacher = nn.Linear(D, C)
    with torch.no_grad():
        teacher.weight.copy_(5 * torch.eye(C, D) + 0.1 * torch.arange(C * D, dtype=torch.float).view(C, D) / 15)
        teacher.bias.zero_()
    x = torch.tensor([[0.9, 0.1, 0.2, 0.5, 0.5], [0.1, 0.8, 0.3, 0.4, 0.6],
                      [0.2, 0.3, 0.9, 0.1, 0.2], [0.6, 0.5, 0.1, 0.3, 0.3]])
    x_adv = torch.tensor([[0.8, 0.2, 0.25, 0.5, 0.5], [0.1, 0.3, 0.7, 0.4, 0.6],
                          [0.3, 0.3, 0.8, 0.1, 0.2], [0.6, 0.55, 0.1, 0.3, 0.3]])
    labels = torch.tensor(y if y is not None else [0, 1, 0, 1])
    step = Step(x, labels, student=_linear(1), teachers={"robust": teacher}, threat=ThreatModel())
    step.add_input("adv", x_adv)
    return step


def swapped(t: Tensor, i: int, a: int, b: int) -> Tensor:
    t = t.clone()
    t[i, a], t[i, b] = t[i, b].item(), t[i, a].item()
    return t


def dgad_by_hand(step: Step, bs: int, kl_scale: float = 1.0, bug: bool = False) -> Tensor:
    S, T = step.student, step.teachers["robust"]
    s_nat, s_adv = S(step.x), S(step.x_adv)
    t_nat, t_adv = T(step.x).detach(), T(step.x_adv).detach()
    assert t_nat.argmax(1).tolist() == [0, 1, 2, 0] and t_adv.argmax(1).tolist() == [0, 2, 2, 0]
    # MAP: teacher wrong on clean x2 (says 2, y 0) and x3 (says 0, y 1); ELS swaps y and the prediction
    t_nat = swapped(swapped(t_nat, 2, 0, 2), 3, 1, 0)
    # ELS on x': the margin is negative for x'1 (y 1, top other 2), x'2 (y 0, 2) and x'3 (y 1, 0)
    t_adv = swapped(swapped(swapped(t_adv, 1, 1, 2), 2, 0, 2), 3, 1, 0)
    lam = torch.tensor([0.0, 0.0, 1.0, 1.0])
    n = 2.0
    clean = (lam * kl_rows(s_nat, t_nat)).sum() / n
    adv = ((1 - lam) * kl_rows(s_adv, t_adv)).sum() / (B - n)
    kl = (n / bs * clean + (bs - n) / bs) * adv if bug else n / bs * clean + (bs - n) / bs * adv
    pcr = ((softmax(s_adv) - softmax(s_nat)) ** 2).mean()
    return kl_scale * kl + pcr


@pytest.mark.parametrize("kwargs,bs", [({}, B), ({"batch_size": 8}, 8), ({"kl_scale": 0.5}, B),
                                       ({"batch_size": 8, "kl_scale": 0.5, "reproduce_parenthesis_bug": True}, 8)])
def test_dgad_loss(regs, kwargs: dict, bs: int) -> None:
    step = dgad_step()
    loss = build(regs, "dgad", **kwargs)(step)
    expected = dgad_by_hand(step, bs, kwargs.get("kl_scale", 1.0), kwargs.get("reproduce_parenthesis_bug", False))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert step.logs["dgad_teacher_wrong"] == 0.5 and step.logs["dgad_adv_swapped"] == 0.75


def test_dgad_without_pcr_and_when_the_teacher_is_always_wrong(regs) -> None:
    step = dgad_step()
    with_pcr = build(regs, "dgad")(step)
    without = build(regs, "dgad", alp=False)(step)
    S = step.student
    pcr = ((softmax(S(step.x_adv)) - softmax(S(step.x))) ** 2).mean()
    assert (with_pcr - without).item() == pytest.approx(pcr.item(), abs=1e-6)  # a difference: absolute
    wrong = dgad_step(y=[1, 0, 0, 1])  # the teacher is wrong on every clean input: the code divides by zero
    loss = build(regs, "dgad")(wrong)
    assert math.isfinite(loss.item()) and wrong.logs["dgad_adv"] == 0.0


def test_dgad_gets_the_configured_per_process_batch_size_from_the_engine(regs, tiny_config) -> None:
    from robust_distill.core.manager import get_plugin_manager
    from robust_distill.engine.distributed import DistContext
    from robust_distill.engine.run import Run

    cfg = tiny_config("dgad", True)
    assert Run(cfg, regs, get_plugin_manager(), DistContext()).outer_loss.batch_size == 16
    assert Run(cfg, regs, get_plugin_manager(), DistContext(world_size=2)).outer_loss.batch_size == 8
    wrapped = regs.outer_losses.build("igdm", {"base": "dgad"}, num_classes=4, batch_size=64, registries=regs)
    assert wrapped.base_loss.batch_size == 64
    fixed = regs.outer_losses.build("dgad", {"batch_size": 32}, num_classes=4, batch_size=128)
    assert fixed.batch_size == 32  # the config wins


# -- gradients --------------------------------------------------------------------------------------
METHODS = ["iad1", "adaiad", "akd2", "iad2", "adaad_igdm", "rslad_igdm", "dgad"]


@pytest.mark.parametrize("method", METHODS)
def test_teachers_never_receive_gradients(regs, method: str) -> None:
    m = regs.methods.get(method)
    step = dgad_step() if method == "dgad" else make_step(epoch=199, natural=True, teacher_grad=True)
    for t in step.teachers.values():
        t.requires_grad_(True)
    loss = build(regs, m.outer_loss.key, **m.outer_loss.kwargs)(step)
    loss.backward()
    assert all(p.grad is None for t in step.teachers.values() for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in step.student.parameters())


@pytest.mark.parametrize("method", ["iad1", "adaiad", "iad2"])
def test_introspection_target_is_not_detached(regs, method: str) -> None:
    m = regs.methods.get(method)
    step = make_step(epoch=199, natural=True)
    loss = build(regs, m.outer_loss.key, **m.outer_loss.kwargs)(step)
    clean = step.student_logits("clean")  # only the introspection term uses S(x) (a = 1, no CE on S(x))
    (g,) = torch.autograd.grad(loss, clean)
    assert g.abs().sum() > 0
    # the introspection weights carry no gradient: T(x') is a target
    from robust_distill_plugins.iad import introspection_weights
    assert not introspection_weights(make_step(teacher_grad=True), 0.1).requires_grad


def test_igdm_and_dgad_gradients_reach_both_student_branches(regs) -> None:
    step = make_step(epoch=10, epochs=20)
    loss = build(regs, "igdm", base="adaad", beta=0.5, gamma=1.0)(step)
    plus, minus = step.student_logits("igdm_plus_0.5"), step.student_logits("igdm_minus_1")
    g_plus, g_minus = torch.autograd.grad(loss, [plus, minus])
    assert g_plus.abs().sum() > 0 and g_minus.abs().sum() > 0
    step = dgad_step()
    loss = build(regs, "dgad")(step)
    g_nat, g_adv = torch.autograd.grad(loss, [step.student_logits("clean"), step.student_logits("adv")])
    assert g_nat.abs().sum() > 0 and g_adv.abs().sum() > 0


# -- training smoke tests ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_one_tiny_epoch(tiny_raw, regs, method: str) -> None:
    raw = tiny_raw(method, teacher=True)
    if "natural" in regs.methods.get(method).teachers:
        raw["teachers"]["natural"] = {"key": "timm:convnet_xs"}
    overrides = ["optim.epochs=1", "threat.steps=1", "eval.attacks=[clean]", "eval.select=clean"]
    if method in ("iad1", "adaiad", "iad2"):
        overrides.append("outer_loss.kwargs.begin=0")  # exercise the introspection term
    cfg = resolve_config(raw, regs, overrides=overrides)
    summary = train(cfg, regs=regs)
    row = (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()[0]
    assert summary["best_epoch"] == 0 and '"train_loss"' in row
    if method in ("iad1", "adaiad", "iad2"):
        assert '"train_iad_alpha"' in row
    if method.endswith("_igdm"):
        assert '"train_igdm_weight": 20.0' in row  # one epoch: e/E = 1
