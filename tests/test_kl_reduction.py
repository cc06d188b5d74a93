"""``kl_reduction`` (issue 21): the distillation losses whose official code averages its KLs over B*C take
``mean`` (the default: the official code) or ``batchmean`` (the papers' per-sample KL, averaged over the batch).

Values by hand on tiny fixed models (``handcalc``: B = 4 samples, C = 3 classes; a 10-class model where the
factor must be exactly 10), the factor C between the two reductions per method, the error that names the
valid choices, and which losses have the option at all.
"""

from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from robust_distill import Step, ThreatModel
from robust_distill.analysis.bench import expand_grid, load_grid, run_grid
from robust_distill.config import resolve_config
from robust_distill.core.losses import kl_div, kl_divisor
from robust_distill.errors import ConfigError
from robust_distill_plugins.ciard import magnitude_scale

from .handcalc import B, C, D, kl_by_hand, linear, softmax

# outer loss -> the methods that use it; their official codes average the KLs over B*C
KL_LOSSES = {"ard": ["ard"], "rslad": ["rslad"], "adaad": ["adaad"], "mtard": ["mtard", "bmtard"],
             "ciard": ["ciard", "ciard_no_push"], "peeraid": ["peeraid"]}
EPS = 1e-5  # RSLAD's kl_loss: log(p_T + 1e-5)
GRIDS = Path(__file__).resolve().parent.parent / "benchmarks" / "fashion_mnist"


def make_step(seed: int = 0, *, classes: int = C, y: Tensor | None = None, peer: bool = False) -> Step:
    """A step of a ``D -> classes`` linear student and teachers ``robust``, ``natural`` (or a trainable ``peer``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=g)
    drawn = torch.randint(0, classes, (B,), generator=g)  # drawn either way: x' is the same with a given y
    y = drawn if y is None else y
    nets = {name: linear(s, scale, classes) for name, s, scale in (("student", 1, 1.0), ("robust", 2, 3.0),
                                                                      ("natural", 3, 0.5))}
    teachers = {"peer": nets["robust"]} if peer else {"robust": nets["robust"], "natural": nets["natural"]}
    step = Step(x, y, student=nets["student"], teachers=teachers, threat=ThreatModel(),
                grad_teachers=frozenset({"peer"}) if peer else frozenset())
    step.add_input("adv", (x + 0.1 * torch.randn(B, D, generator=g)).clamp(0, 1))
    return step


def kl_sum(s: Tensor, t: Tensor, *, eps: float = 0.0, tau_s: float = 1.0, tau_t: float = 1.0) -> float:
    """``sum_i sum_c p_t (log(p_t + eps) - log p_s)`` over the rows, written out (``handcalc``)."""
    return kl_by_hand(s / tau_s, t / tau_t, eps=eps).sum().item()


def build(regs, key: str, **kwargs):
    return regs.outer_losses.build(key, kwargs, num_classes=C, registries=regs)


def both(regs, key: str, seed: int = 0, **kwargs) -> tuple[float, float]:
    """The loss with ``mean`` and with ``batchmean`` on two identical fresh steps."""
    return tuple(build(regs, key, kl_reduction=r, **kwargs)(make_step(seed, peer=key == "peeraid")).item()
                 for r in ("mean", "batchmean"))  # type: ignore[return-value]


# -- the one implementation ---------------------------------------------------------------------------


def test_the_factor_between_the_two_reductions_by_hand() -> None:
    s = torch.zeros(2, 3)  # p_S uniform (1/3 each)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, math.log(3.0), 0.0]])  # p_T (1/2,1/4,1/4), (1/5,3/5,1/5)
    row1 = 0.5 * math.log(0.5 * 3) + 2 * 0.25 * math.log(0.25 * 3)  # 0.058892
    row2 = 2 * 0.2 * math.log(0.2 * 3) + 0.6 * math.log(0.6 * 3)  # 0.148342
    assert kl_div(s, t, reduction="mean").item() == pytest.approx((row1 + row2) / 6, abs=1e-7)  # /(B*C)
    assert kl_div(s, t, reduction="batchmean").item() == pytest.approx((row1 + row2) / 2, abs=1e-7)  # /B
    assert kl_div(s, t, reduction="batchmean").item() == pytest.approx(0.1036166, abs=1e-6)
    ratio = kl_div(s, t, reduction="batchmean") / kl_div(s, t, reduction="mean")
    assert ratio.item() == pytest.approx(3.0, rel=1e-6)  # C
    with_eps = [kl_div(s, t, reduction=r, log_eps=EPS).item() for r in ("mean", "batchmean")]
    assert with_eps[1] == pytest.approx(3.0 * with_eps[0], rel=1e-6)  # RSLAD's kl_loss: the same factor


def test_divisor_of_each_reduction() -> None:
    assert [kl_divisor(r, 4, 3) for r in ("batchmean", "mean", "sum", "none")] == [4, 12, 1, 1]
    assert kl_divisor("mean", 0, 10) == 0  # an empty mask (CIARD's push term) stays an empty mean
    with pytest.raises(ValueError, match="batchmean, mean, sum or none, got 'avg'"):
        kl_divisor("avg", 4, 3)  # type: ignore[arg-type]


# -- which losses, and their defaults -----------------------------------------------------------------


def test_exactly_the_losses_of_mean_reduction_codes_have_the_option(regs) -> None:
    has = {k for k in regs.outer_losses.names()
           if "kl_reduction" in inspect.signature(regs.outer_losses.get(k)).parameters}
    assert has == set(KL_LOSSES)


@pytest.mark.parametrize("method", sorted(m for ms in KL_LOSSES.values() for m in ms))
def test_every_method_defaults_to_its_official_mean(regs, method: str) -> None:
    part = regs.methods.get(method).outer_loss
    kwargs = dict(part.kwargs)
    assert kwargs.get("kl_reduction", "mean") == "mean"
    assert build(regs, part.key, **kwargs).kl_reduction == "mean"


@pytest.mark.parametrize("key", sorted(KL_LOSSES))
def test_an_unknown_reduction_names_the_valid_choices(regs, key: str) -> None:
    with pytest.raises(ValueError, match=r"kl_reduction must be one of 'mean' \(sum / \(B\*C\).*'batchmean' "
                                         r"\(sum / B.*got 'sum'"):
        build(regs, key, kl_reduction="sum")


def test_the_config_check_names_the_valid_choices(tiny_raw, regs) -> None:
    raw = tiny_raw("rslad", teacher=True, outer_loss={"kwargs": {"kl_reduction": "batch_mean"}})
    with pytest.raises(ConfigError, match=r"outer_loss\.kwargs\.kl_reduction: must be one of 'mean', 'batchmean'; "
                                          r"got 'batch_mean'"):
        resolve_config(raw, regs)
    ok = resolve_config(tiny_raw("rslad", teacher=True), regs, overrides=["outer_loss.kwargs.kl_reduction=batchmean"])
    assert ok.outer_loss.kwargs["kl_reduction"] == "batchmean"


@pytest.mark.parametrize("method", ["ard", "adaad"])
def test_the_former_name_reduction_still_works_for_one_release(tiny_raw, regs, method: str) -> None:
    """ARD's and AdaAD's option was called ``reduction`` before it was shared: configs and result folders that
    use it resolve to the same loss, with a FutureWarning naming the new name."""
    raw = tiny_raw(method, teacher=True, outer_loss={"kwargs": {"reduction": "batchmean"}})
    with pytest.warns(FutureWarning, match="'reduction' is now called 'kl_reduction'"):
        cfg = resolve_config(raw, regs)
        loss = build(regs, cfg.outer_loss.key, **cfg.outer_loss.kwargs)
    assert loss.kl_reduction == "batchmean"


def test_a_run_stored_with_the_former_name_still_resumes() -> None:
    """A ``last.pt`` written before the rename (``reduction`` on ARD/AdaAD, also as IGDM's base) is the same
    config as today's ``kl_reduction``; another loss's own ``reduction`` option is not renamed."""
    from robust_distill.config import config_differences

    def cfg(key: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"method": key, "outer_loss": {"key": key, "kwargs": kwargs}}

    new = cfg("adaad", {"kl_reduction": "batchmean"})
    assert config_differences(cfg("adaad", {"reduction": "batchmean"}), new) == []
    old = cfg("igdm", {"base": "adaad", "base_kwargs": {"reduction": "batchmean"}})
    assert config_differences(old, cfg("igdm", {"base": "adaad", "base_kwargs": {"kl_reduction": "batchmean"}})) == []
    assert config_differences(cfg("oracle_ce", {"reduction": "mean"}), cfg("oracle_ce", {"kl_reduction": "mean"}))


# -- per method: batchmean by hand, and the factor C --------------------------------------------------


def test_ard(regs) -> None:
    step = make_step()
    loss = build(regs, "ard", alpha=0.7, temperature=30.0, kl_reduction="batchmean")(step)
    s = step.student
    with torch.no_grad():
        kd = kl_sum(s(step.x_adv), step.teachers["robust"](step.x), tau_s=30.0, tau_t=30.0) / B
        ce = -torch.log(softmax(s(step.x))[torch.arange(B), step.y]).mean().item()
    assert loss.item() == pytest.approx(0.7 * 900 * kd + 0.3 * ce, rel=1e-5)  # only the KD term x C
    mean, batchmean = both(regs, "ard")  # alpha = 1: the loss is the KD term
    assert batchmean == pytest.approx(C * mean, rel=1e-6)


def test_rslad(regs) -> None:
    step = make_step()
    loss = build(regs, "rslad", kl_reduction="batchmean")(step)
    with torch.no_grad():
        s, t = step.student, step.teachers["robust"](step.x)  # T(x) for both terms
        expected = (5 / 6 * kl_sum(s(step.x_adv), t, eps=EPS) + 1 / 6 * kl_sum(s(step.x), t, eps=EPS)) / B
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    mean, batchmean = both(regs, "rslad")
    assert batchmean == pytest.approx(C * mean, rel=1e-6)


def test_adaad(regs) -> None:
    mean, batchmean = both(regs, "adaad", alpha=0.8)
    assert batchmean == pytest.approx(C * mean, rel=1e-6)
    step = make_step()
    loss = build(regs, "adaad", alpha=0.8, kl_reduction="batchmean")(step)
    with torch.no_grad():
        s, t = step.student, step.teachers["robust"]
        expected = (0.8 * kl_sum(s(step.x_adv), t(step.x_adv)) + 0.2 * kl_sum(s(step.x), t(step.x))) / B
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["mtard", "bmtard"])
def test_mtard_and_bmtard_over_three_steps(regs, method: str) -> None:
    part = regs.methods.get(method).outer_loss
    kwargs = {**part.kwargs, "eta_tau": 0.3}  # large: the temperatures move
    mean, batchmean = (build(regs, part.key, **kwargs, kl_reduction=r) for r in ("mean", "batchmean"))
    for k in range(3):
        a, b = make_step(10 + k), make_step(10 + k)
        loss_m, loss_b = mean(a), batchmean(b)
        if k == 0:  # L_k0 = this step's values: every ratio is 1, the weights stay 1/2, tau = 1
            with torch.no_grad():
                s, tr, tn = b.student, b.teachers["robust"], b.teachers["natural"]
                expected = 0.5 * (kl_sum(s(b.x_adv), tr(b.x_adv), eps=EPS) + kl_sum(s(b.x), tn(b.x), eps=EPS)) / B
            assert loss_b.item() == pytest.approx(expected, rel=1e-5)
        # the weights (loss ratios) and temperatures (entropies) do not see the factor: the loss is x C
        assert loss_b.item() == pytest.approx(C * loss_m.item(), rel=1e-5)
        for name in ("w_adv", "w_nat", "tau_adv", "tau_nat"):
            assert b.logs[name] == pytest.approx(a.logs[name], rel=1e-9), name
    assert batchmean.w_nat != 0.5 and (method == "mtard" or batchmean.tau_adv > 1.0)  # they did move


def ciard_step(classes: int, wrong: list[int], seed: int = 5) -> Step:
    """A step whose labels differ from the clean teacher's prediction on x' exactly in the rows ``wrong``."""
    probe = make_step(seed, classes=classes)
    y = probe.teachers["natural"](probe.x_adv).argmax(1).detach()
    for i in wrong:
        y[i] = (y[i] + 1) % classes
    return make_step(seed, classes=classes, y=y)


@pytest.mark.parametrize("classes", [C, 10])
def test_ciard_push_term_by_hand(regs, classes: int) -> None:
    wrong = [0, 2]
    step = ciard_step(classes, wrong)
    loss = regs.outer_losses.build("ciard", {"kl_reduction": "batchmean"}, num_classes=classes)(step)
    with torch.no_grad():
        s, tr, tn = step.student, step.teachers["robust"], step.teachers["natural"]
        kl1 = kl_sum(s(step.x_adv), tr(step.x_adv), eps=EPS) / B
        kl2 = kl_sum(s(step.x), tn(step.x), eps=EPS) / B
        kl3 = kl_sum(s(step.x_adv)[wrong], tn(step.x_adv)[wrong], eps=EPS, tau_s=5.0) / len(wrong)  # / n_mask
    scale = 10.0 ** (min(math.floor(math.log10(kl1)), math.floor(math.log10(kl2))) - math.floor(math.log10(kl3)))
    assert loss.item() == pytest.approx(kl1 + kl2 - scale * kl3, rel=1e-5)
    assert step.logs["push"] == pytest.approx(kl3, rel=1e-5) and step.logs["push_scale"] == scale
    mean_step = ciard_step(classes, wrong)
    mean = regs.outer_losses.build("ciard", {}, num_classes=classes)(mean_step)
    assert step.logs["push"] == pytest.approx(classes * mean_step.logs["push"], rel=1e-5)  # KL3 x C
    if classes == 10:  # a power of 10: s is the same, every term and the whole loss x C
        assert step.logs["push_scale"] == mean_step.logs["push_scale"]
        assert loss.item() == pytest.approx(10 * mean.item(), rel=1e-5)
    else:  # 3 classes: the floors of log10 move by 0 or 1, and s moves (10 -> 1 on this batch)
        assert (mean_step.logs["push_scale"], scale) == (10.0, 1.0) == (10.0, magnitude_scale(kl1, kl2, kl3))


def test_ciard_no_push(regs) -> None:
    mean, batchmean = both(regs, "ciard", push=False)
    assert batchmean == pytest.approx(C * mean, rel=1e-5)


def test_peeraid(regs) -> None:
    kw = {"temperature": 4.0, "lambda1": 0.3, "lambda2": 1.5, "lambda3": 0.7, "gamma1": 0.9, "gamma2": 0.2,
          "re_temperature": 2.0}
    step = make_step(peer=True)
    loss = build(regs, "peeraid", kl_reduction="batchmean", **kw)(step)
    with torch.no_grad():
        s_adv, s_nat, p_adv = step.student(step.x_adv), step.student(step.x), step.teachers["peer"](step.x_adv)

    def ce(z: Tensor) -> float:
        return (-torch.log(softmax(z)[torch.arange(B), step.y])).mean().item()

    def kl_bm(a: Tensor, b: Tensor, tau: float) -> float:
        return kl_sum(a, b, tau_s=tau, tau_t=tau) / B

    peer = 0.9 * ce(p_adv) + 0.2 * 4.0 * kl_bm(p_adv, s_adv, 2.0)
    student = 0.3 * ce(s_adv) + 16.0 * (1.5 * kl_bm(s_adv, p_adv, 4.0) + 0.7 * kl_bm(s_adv, s_nat, 4.0))
    assert loss.item() == pytest.approx(peer + student, rel=1e-5)
    only_kl = {"lambda1": 0.0, "gamma1": 0.0}  # without the CE terms the loss is x C
    mean, batchmean = both(regs, "peeraid", **only_kl)
    assert batchmean == pytest.approx(C * mean, rel=1e-5)


def test_rslad_igdm_passes_it_to_its_base(regs) -> None:
    mean, batchmean = (build(regs, "igdm", base="rslad", base_kwargs={"kl_reduction": r}, alpha=0.0)(make_step())
                       for r in ("mean", "batchmean"))
    assert batchmean.item() == pytest.approx(C * mean.item(), rel=1e-6)


# -- the zoo rerun with batchmean (benchmarks/fashion_mnist/zoo_batchmean_grid.yaml) ------------------


def pruned(d: Any) -> Any:
    """``d`` without empty mappings (what remains of ``outer_loss.kwargs`` once ``kl_reduction`` is taken out)."""
    if not isinstance(d, dict):
        return d
    out = {k: pruned(v) for k, v in d.items()}
    return {k: v for k, v in out.items() if v != {}}


def test_the_batchmean_zoo_grid_is_the_zoo_with_the_papers_reduction(regs, monkeypatch) -> None:
    monkeypatch.chdir(GRIDS.parent.parent)  # the grids' teacher paths are relative to the repository
    grid = load_grid(GRIDS / "zoo_batchmean_grid.yaml")
    states = run_grid(grid, regs, dry_run=True, log=lambda msg: None)  # validates every run as train --check
    runs = expand_grid(grid)
    assert len(states) == len(runs) == 18 and {r.raw["seed"] for r in runs} == {0, 1}
    assert {r.raw["method"] for r in runs} == {m for ms in KL_LOSSES.values() for m in ms} | {"rslad_igdm"}
    zoo = {r.raw["method"]: r.raw for r in expand_grid(load_grid(GRIDS / "zoo_grid.yaml")) if r.raw["seed"] == 0}
    for run in runs:
        raw = copy.deepcopy(run.raw)
        kwargs = raw["outer_loss"]["kwargs"]
        assert (kwargs["base_kwargs"] if raw["method"] == "rslad_igdm" else kwargs).pop("kl_reduction") == "batchmean"
        same = copy.deepcopy(zoo[raw["method"]])
        for r in (raw, same):
            del r["seed"], r["output_dir"]
        assert pruned(raw) == pruned(same), run.name  # otherwise the zoo's run of the method, option for option
