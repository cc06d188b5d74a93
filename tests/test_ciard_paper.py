"""CIARD as its paper describes it (plugins/ciard.py ``ciard_paper``, plugins/ciard_itt.py ``period``): the CE
term and the push/KL2 weights by hand, the validation-adaptive push weight's sequence by hand (directly and
through the engine's ``OuterLoss.end_epoch``), the periodic ITT (the teacher changes only in its retraining
epochs), and the official defaults left as they were."""

from __future__ import annotations

import copy
import json
import math
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from robust_distill import Step, ThreatModel
from robust_distill.analysis.bench import expand_grid, load_grid, run_grid
from robust_distill.engine.distributed import DistContext
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import load_checkpoint
from robust_distill_plugins.ciard import adaptive_push_weight

from .handcalc import C, softmax
from .test_zoo_multi_teacher import kl_loss_mean, make_step, models, outputs, two_teacher_config


class Fixed(nn.Module):
    """A model whose logits are ``z`` whatever the input (one row per sample)."""

    def __init__(self, z: list[list[float]]) -> None:
        super().__init__()
        self.z = nn.Parameter(torch.tensor(z))

    def forward(self, x: Tensor) -> Tensor:
        return self.z * 1.0


def fixed_step() -> Step:
    """Two samples, two classes: S = [log 3, 0], [0, log 3] on x and x'; y = 1, 0 (p_S(y) = 1/4 on both rows)."""
    log3 = math.log(3.0)
    teachers = {"robust": Fixed([[log3, 0.0], [0.0, 0.0]]).requires_grad_(False),
                "natural": Fixed([[0.0, 1.0], [0.0, 1.0]]).requires_grad_(False)}  # wrong on row 2: push
    step = Step(torch.zeros(2, 1), torch.tensor([1, 0]), student=Fixed([[log3, 0.0], [0.0, log3]]),
                teachers=teachers, threat=ThreatModel())
    step.add_input("adv", torch.ones(2, 1))
    return step


# -- the loss ----------------------------------------------------------------------------------------


def test_the_ce_term_on_two_samples_by_hand(regs) -> None:
    with_ce = regs.outer_losses.build("ciard", {"ce_weight": 0.5})(step := fixed_step())
    without = regs.outer_losses.build("ciard", {})(fixed_step())
    # CE(S(x'), y) = mean(-log 1/4, -log 1/4) = log 4; every other term is the same in both losses
    assert step.logs["ce"].item() == pytest.approx(math.log(4.0), abs=1e-6)
    assert (with_ce - without).item() == pytest.approx(0.5 * math.log(4.0), abs=1e-6)
    # its gradient w.r.t. the logits: 0.5 (p_S - onehot(y)) / B
    g_ce = torch.autograd.grad(with_ce, step.student.z)[0] - torch.autograd.grad(
        regs.outer_losses.build("ciard", {})(plain := fixed_step()), plain.student.z)[0]
    expected = 0.5 * torch.tensor([[3 / 4, -3 / 4], [-3 / 4, 3 / 4]]) / 2
    assert torch.allclose(g_ce, expected, atol=1e-6)


def parts_by_hand(o: dict[str, Tensor], y: Tensor) -> tuple[float, float, float, float, float]:
    """KL1, KL2, KL3, s and CE(S(x'), y) of CIARD at temperatures 1, written out."""
    kl1, kl2 = kl_loss_mean(o["s_adv"], o["t_adv"]), kl_loss_mean(o["s_nat"], o["t_nat"])
    mask = o["tn_adv"].argmax(1) != y
    kl3 = kl_loss_mean(o["s_adv"][mask], o["tn_adv"][mask], tau_s=5.0)
    s = 10.0 ** (min(math.floor(math.log10(kl1)), math.floor(math.log10(kl2))) - math.floor(math.log10(kl3)))
    ce = -torch.log(softmax(o["s_adv"])[torch.arange(len(y)), y]).mean().item()
    return kl1, kl2, kl3, s, ce


def wrong_labels(teachers: dict[str, nn.Module], seed: int) -> Tensor:
    """Labels on which the clean teacher is wrong on rows 0 and 2 of the step (a non-empty push mask)."""
    y = teachers["natural"](make_step(*models(), seed=seed).x_adv).argmax(1).detach()
    y[[0, 2]] = (y[[0, 2]] + 1) % C
    return y


def test_the_papers_loss_with_every_weight_by_hand(regs) -> None:
    student, teachers = models()
    y = wrong_labels(teachers, seed=11)
    loss_fn = regs.outer_losses.build("ciard", {"ce_weight": 0.7, "natural_weight": 0.0, "push_weight": 0.3})
    step = make_step(student, teachers, seed=11, y=y)
    loss = loss_fn(step)
    kl1, kl2, kl3, s, ce = parts_by_hand(outputs(step), y)
    # KL2 still sets s (the logged, unweighted value); natural_weight 0 drops it from the sum
    assert loss.item() == pytest.approx(kl1 + 0.0 * kl2 - 0.3 * s * kl3 + 0.7 * ce, rel=1e-5)
    assert step.logs["push_weight"] == 0.3 and step.logs["kl_nat"] == pytest.approx(kl2, rel=1e-5)
    official = make_step(student, teachers, seed=11, y=y)
    assert regs.outer_losses.build("ciard", {})(official).item() == pytest.approx(kl1 + kl2 - s * kl3, rel=1e-5)
    assert not {"ce", "push_weight"} & official.logs.keys()  # the official loss logs what it logged before


# -- the adaptive push weight ------------------------------------------------------------------------

#: validation accuracies after each evaluation and the push weight lambda after it, by hand (init 1, x/÷ 1.5
#: within [0.25, 4]): first evaluation keeps 1; up x1.5; down /1.5; equal counts as not improved
ACCURACIES = [0.30, 0.35, 0.33, 0.33, 0.40, 0.45, 0.50, 0.55, 0.60, 0.20, 0.10, 0.05, 0.01, 0.0]
LAMBDAS = [1.0, 1.5, 1.0, 2 / 3, 1.0, 1.5, 2.25, 3.375, 4.0, 8 / 3, 16 / 9, 32 / 27, 0.790123, 0.526749]


def eval_run(split: str = "val", select: str = "pgd20") -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(eval=SimpleNamespace(split=split, select=select)))


def test_the_adaptive_push_weight_for_a_sequence_of_validation_accuracies(regs) -> None:
    weight, previous, seen = 1.0, None, []
    for acc in ACCURACIES:
        weight, previous = adaptive_push_weight(weight, previous, acc, 1.5, 0.25, 4.0), acc
        seen.append(weight)
    assert seen == pytest.approx(LAMBDAS, abs=1e-6)
    assert adaptive_push_weight(0.3, 0.5, 0.4, 1.5, 0.25, 4.0) == 0.25  # the lower bound
    # the loss follows the same sequence from the epochs' metrics rows; epochs without evaluation change nothing
    loss = regs.outer_losses.build("ciard", {"push_weight": "adaptive"})
    run = eval_run()
    for epoch, acc in enumerate(ACCURACIES):
        loss.end_epoch(run, 2 * epoch, {"epoch": 2 * epoch, "is_best": False, "val_clean": 0.9, "val_pgd20": acc})
        before = loss.push_lambda
        loss.end_epoch(run, 2 * epoch + 1, {"epoch": 2 * epoch + 1, "train_loss": 0.1})  # eval.every: 2
        assert loss.push_lambda == before == pytest.approx(LAMBDAS[epoch], abs=1e-6)
    assert loss.state_dict()["push_lambda"] == pytest.approx(LAMBDAS[-1], abs=1e-6)
    assert loss.state_dict()["push_previous"] == 0.0
    other = regs.outer_losses.build("ciard", {"push_weight": "adaptive", "push_metric": "val_clean"})
    other.load_state_dict(loss.state_dict())
    assert other.push_lambda == loss.push_lambda and other.push_previous == 0.0
    # push_metric picks another metric; one missing from an evaluated epoch is an error naming the others
    other.end_epoch(run, 99, {"is_best": True, "val_clean": 0.5})
    assert other.push_lambda == pytest.approx(LAMBDAS[-1] * 1.5) and other.push_previous == 0.5
    with pytest.raises(ValueError, match=r"push_metric 'test_pgd20' is not among the metrics of epoch 3 "
                                         r"\(is_best, val_clean, val_pgd20\)"):
        loss.end_epoch(eval_run("test"), 2, {"is_best": True, "val_clean": 0.5, "val_pgd20": 0.3})


def test_the_adaptive_weight_multiplies_the_push_term(regs) -> None:
    student, teachers = models()
    y = wrong_labels(teachers, seed=12)
    loss_fn = regs.outer_losses.build("ciard", {"push_weight": "adaptive", "push_weight_init": 2.0})
    for acc in (0.3, 0.4):  # 2 -> 2 -> 3
        loss_fn.end_epoch(eval_run(), 0, {"is_best": True, "val_pgd20": acc})
    step = make_step(student, teachers, seed=12, y=y)
    loss = loss_fn(step)
    kl1, kl2, kl3, s, _ = parts_by_hand(outputs(step), y)
    assert loss.item() == pytest.approx(kl1 + kl2 - 3.0 * s * kl3, rel=1e-5) and step.logs["push_weight"] == 3.0


def test_igdm_forwards_the_end_of_epoch_to_its_base(regs) -> None:
    igdm = regs.outer_losses.build("igdm", {"base": "ciard", "base_kwargs": {"push_weight": "adaptive"}},
                                   num_classes=C, registries=regs)
    for acc in (0.3, 0.2):
        igdm.end_epoch(eval_run(), 0, {"is_best": True, "val_pgd20": acc})
    assert igdm.base_loss.push_lambda == pytest.approx(1 / 1.5)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"push_weight": "auto"}, "push_weight must be a number or 'adaptive', got 'auto'"),
    ({"push_weight": "adaptive", "push_weight_min": 2.0}, "push_weight_min <= push_weight_init"),
    ({"push_weight": "adaptive", "push_weight_factor": 0.5}, "push_weight_factor >= 1"),
])
def test_bad_push_weights_are_refused(regs, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        regs.outer_losses.build("ciard", kwargs)


# -- the periodic ITT --------------------------------------------------------------------------------


def test_the_periodic_itt_trains_in_its_retraining_epochs_only(regs) -> None:
    student, teachers = models()
    itt = regs.teacher_updaters.build("ciard_itt", {"start_epoch": 2, "period": 3, "retrain_steps": 2,
                                                    "lr": 0.1})
    itt.setup(SimpleNamespace(teachers=teachers, config=SimpleNamespace(optim=SimpleNamespace(epochs=10)),
                              dist=DistContext()))
    assert [e for e in range(10) if itt.retraining(e)] == [2, 5, 8]  # the first ITT epoch, then every 3rd
    robust = teachers["robust"]
    for epoch in range(10):
        for it in range(3):
            step = make_step(student, teachers, seed=epoch * 3 + it, epoch=epoch, epochs=10, iteration=it,
                             iterations=3)
            before = copy.deepcopy(robust.state_dict())
            itt.before_step(step)
            itt.after_step(step)
            changed = any(not torch.equal(before[k], v) for k, v in robust.state_dict().items())
            assert changed == (epoch in (2, 5, 8) and it < 2), (epoch, it)  # retrain_steps: 2 per retraining
            assert ("itt_ce" in step.logs) == changed
    with pytest.raises(ValueError, match="period must be a whole number of epochs >= 1"):
        regs.teacher_updaters.build("ciard_itt", {"period": 0})
    with pytest.raises(ValueError, match="retrain_steps must be a number of steps >= 1, or null"):
        regs.teacher_updaters.build("ciard_itt", {"retrain_steps": 0})


# -- through the engine ------------------------------------------------------------------------------

PAPER_RUN = ["optim.epochs=4", "eval.attacks=[clean]", "eval.select=clean", "teacher_updater.kwargs.start_epoch=1",
             "teacher_updater.kwargs.period=2", "teacher_updater.kwargs.end_epoch=100",
             "teacher_updater.kwargs.lr=0.05", "outer_loss.kwargs.push_weight_factor=2.0"]


def test_ciard_paper_in_a_four_epoch_run(tiny_raw, regs, tmp_path: Path) -> None:
    """Teacher changed in epochs 1 and 3 only (start 1, period 2); lambda follows val_clean by the rule; a run
    resumed after every epoch ends as the uninterrupted one (lambda and the last accuracy are checkpointed)."""
    cfg = two_teacher_config(tiny_raw, regs, "ciard_paper", PAPER_RUN + [f"output_dir={tmp_path / 'steps'}"])
    teachers, losses = [], []
    for _ in range(4):  # one epoch per call: the checkpoint of every epoch
        train(cfg, stop_after_epochs=1)
        ckpt = load_checkpoint(tmp_path / "steps" / "last.pt")
        teachers.append(ckpt["parts"]["teacher_updater"]["teacher"])
        losses.append(ckpt["parts"]["outer_loss"])
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in pairwise(teachers)]
    assert same == [False, True, False]  # epoch 1 changed it, epoch 2 did not (weights and BN), epoch 3 did
    rows = [json.loads(r) for r in (tmp_path / "steps" / "metrics.jsonl").read_text().splitlines()]
    assert ["train_itt_ce" in r for r in rows] == [False, True, False, True]
    assert [r["train_ce"] > 0 for r in rows] == [True] * 4
    lam, previous, expected = 1.0, None, []
    for r in rows:  # the weight in effect during an epoch, then the update from its validation accuracy
        expected.append(lam)
        lam, previous = adaptive_push_weight(lam, previous, r["val_clean"], 2.0, 0.25, 4.0), r["val_clean"]
    assert [r["train_push_weight"] for r in rows] == expected
    assert [s["push_lambda"] for s in losses] == expected[1:] + [lam]
    assert losses[-1]["push_previous"] == rows[-1]["val_clean"]
    full = two_teacher_config(tiny_raw, regs, "ciard_paper", PAPER_RUN + [f"output_dir={tmp_path / 'full'}"])
    train(full)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    assert a["parts"]["outer_loss"] == losses[-1]
    assert all(torch.equal(a["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
    assert all(torch.equal(a["parts"]["teacher_updater"]["teacher"][k], v) for k, v in teachers[-1].items())


def test_ciard_paper_is_ciard_with_the_papers_options(regs) -> None:
    ciard, paper = regs.methods.get("ciard"), regs.methods.get("ciard_paper")
    assert paper.outer_loss.kwargs == {**ciard.outer_loss.kwargs, "ce_weight": 1.0, "push_weight": "adaptive"}
    assert paper.teacher_updater.kwargs == {**ciard.teacher_updater.kwargs, "period": 10}
    assert (paper.inner_attack, paper.teachers, paper.defaults) == (ciard.inner_attack, ciard.teachers,
                                                                      ciard.defaults)
    # the official parts keep their defaults and their checkpoint state
    official = regs.outer_losses.build("ciard", dict(ciard.outer_loss.kwargs))
    assert (official.ce_weight, official.natural_weight, official.push_lambda, official.adaptive) == (0, 1, 1, False)
    assert set(official.state_dict()) == {"w_adv", "w_nat", "tau_adv", "tau_nat", "l0_adv", "l0_nat"}
    itt = regs.teacher_updaters.build("ciard_itt", dict(ciard.teacher_updater.kwargs))
    assert (itt.period, itt.retrain_steps) == (1, None)


def test_the_grid_compares_the_zoos_ciard_with_ciard_paper(regs, monkeypatch) -> None:
    grids = Path(__file__).resolve().parent.parent / "benchmarks" / "fashion_mnist"
    monkeypatch.chdir(grids.parent.parent)  # the grids' teacher paths are relative to the repository
    grid = load_grid(grids / "ciard_paper_grid.yaml")
    runs = expand_grid(grid)
    assert len(run_grid(grid, regs, dry_run=True, log=lambda msg: None)) == 4  # each run checked as train --check
    assert {(r.raw["method"], r.raw["seed"]) for r in runs} == {(m, s) for m in ("ciard", "ciard_paper")
                                                                 for s in (0, 1)}
    zoo = {r.raw["seed"]: r.raw for r in expand_grid(load_grid(grids / "zoo_grid.yaml")) if r.raw["method"] == "ciard"}
    for run in runs:
        raw, same = copy.deepcopy(run.raw), copy.deepcopy(zoo[run.raw["seed"]])
        for r in (raw, same):
            del r["output_dir"], r["method"]
        assert raw == same, run.name  # the zoo's ciard run, option for option (ciard_paper: its method's defaults)
