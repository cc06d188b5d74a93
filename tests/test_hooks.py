"""One test per hook: a plugin implementing it is honoured (``test_docs`` checks none is missing)."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from robust_distill import (
    DataBundle,
    DatasetInfo,
    EvalAttack,
    InnerAttack,
    Method,
    OuterLoss,
    Part,
    StudentSource,
    TeacherSource,
    TeacherUpdater,
    hookimpl,
)
from robust_distill.config import resolve_config
from robust_distill.core.manager import PluginManager, PluginResultError
from robust_distill.engine.trainer import _plugin_metrics, train

from .conftest import TINY


def manager_with(**hooks: Any) -> PluginManager:
    """Built-in plugins plus one test plugin made of ``hooks``."""
    pm = PluginManager().load_plugins(autoload=False)
    plugin = types.ModuleType("test_plugin_module")
    for name, function in hooks.items():
        setattr(plugin, name, hookimpl(function))
    pm.add_plugin(plugin, "test_plugin")
    return pm


def test_hook_rd_addhooks() -> None:
    calls = []
    pm = manager_with(rd_addhooks=lambda pluginmanager: calls.append(pluginmanager))
    assert calls == [pm]  # fired by the manager itself when the plugin registered


def test_hook_rd_register_datasets() -> None:
    class Tiny:
        def info(self, **_: Any) -> DatasetInfo:
            return DatasetInfo("tiny", 2, (1, 4, 4))

        def load(self, root: str | None = None) -> DataBundle:
            x = torch.zeros(4, 1, 4, 4, dtype=torch.uint8)
            return DataBundle(self.info(), x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]))

    regs = manager_with(rd_register_datasets=lambda registry: registry.register(Tiny(), name="tiny")).build_registries()
    assert regs.datasets.get("tiny").load().info.num_classes == 2
    assert regs.datasets.entry("tiny").plugin == "test_plugin"


def test_hook_rd_register_teacher_sources() -> None:
    class Zeros(TeacherSource):
        def load(self, name: str, *, dataset: DatasetInfo, **options: Any) -> torch.nn.Module:
            return torch.nn.Linear(1, dataset.num_classes).eval()

    regs = manager_with(rd_register_teacher_sources=lambda registry: registry.register(Zeros(), name="zeros")
                        ).build_registries()
    assert isinstance(regs.teacher_sources.get("zeros").load("x", dataset=DatasetInfo("d", 3, (1, 1, 1))),
                      torch.nn.Linear)


def test_hook_rd_register_student_sources() -> None:
    class Lin(StudentSource):
        def build(self, name: str, *, input_shape: tuple[int, int, int], num_classes: int,
                  **o: Any) -> torch.nn.Module:
            features = input_shape[0] * input_shape[1] * input_shape[2]
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, num_classes))

    regs = manager_with(rd_register_student_sources=lambda registry: registry.register(Lin(), name="lin")
                        ).build_registries()
    model = regs.student_sources.get("lin").build("x", input_shape=(1, 2, 2), num_classes=3)
    assert model(torch.zeros(1, 1, 2, 2)).shape == (1, 3)


def test_hook_rd_register_inner_attacks(tiny_raw) -> None:
    class Shift(InnerAttack):
        def __init__(self, delta: float = 0.0) -> None:
            self.delta = delta

        def __call__(self, step: Any) -> torch.Tensor:
            return (step.x + self.delta).clamp(0, 1)

    regs = manager_with(rd_register_inner_attacks=lambda registry: registry.register(Shift, name="shift")
                        ).build_registries()
    assert regs.inner_attacks.entry("shift").plugin == "test_plugin"
    cfg = resolve_config(tiny_raw("pgd_at"), regs, overrides=["inner_attack={key: shift, kwargs: {delta: 0.25}}"])
    attack = regs.inner_attacks.build(cfg.inner_attack.key, cfg.inner_attack.kwargs)  # what the engine does
    x = torch.tensor([0.0, 0.5, 0.9])
    assert isinstance(attack, Shift)
    assert torch.equal(attack(types.SimpleNamespace(x=x)), torch.tensor([0.25, 0.75, 1.0]))


def test_hook_rd_register_outer_losses() -> None:
    class Zero(OuterLoss):
        def __call__(self, step: Any) -> torch.Tensor:
            return torch.zeros(())

    regs = manager_with(rd_register_outer_losses=lambda registry: registry.register(Zero, name="zero")
                        ).build_registries()
    assert regs.outer_losses.build("zero", {}, num_classes=10)(None) == 0


def test_hook_rd_register_teacher_updaters() -> None:
    class Noop(TeacherUpdater):
        pass

    regs = manager_with(rd_register_teacher_updaters=lambda registry: registry.register(Noop, name="noop")
                        ).build_registries()
    assert "noop" in regs.teacher_updaters and "frozen" in regs.teacher_updaters


def test_hook_rd_register_eval_attacks() -> None:
    class Identity(EvalAttack):
        def __init__(self, eps: float) -> None:
            self.eps = eps

        def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x

    regs = manager_with(rd_register_eval_attacks=lambda registry: registry.register(Identity, name="identity")
                        ).build_registries()
    assert regs.eval_attacks.build("identity", {}, eps=0.1, num_classes=10).eps == 0.1


def test_hook_rd_register_lr_schedules() -> None:
    regs = manager_with(rd_register_lr_schedules=lambda registry: registry.register(
        lambda epochs: (lambda e: 1.0 - e / epochs), name="linear")).build_registries()
    assert regs.lr_schedules.build("linear", {}, epochs=10)(5) == 0.5


def test_hook_rd_register_methods() -> None:
    m = Method("plain_ce", Part("pgd_ce"), Part("ce_adv"), teachers=(), summary="for the test")
    regs = manager_with(rd_register_methods=lambda registry: registry.register(m)).build_registries()
    assert regs.methods.get("plain_ce") is m and regs.methods.entry("plain_ce").help == "for the test"


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], Path]:
    """One 2-epoch run with a plugin recording the lifecycle hooks: ``(events, output folder)``."""
    events: list[Any] = []
    pm = manager_with(
        rd_run_start=lambda run: events.append(("start", run.epoch)),
        rd_epoch_end=lambda run, epoch, metrics: events.append(("epoch", epoch, "val_pgd20" in metrics)) or
        {"custom_metric": float(epoch) * 2},
        rd_run_end=lambda run, summary: events.append(("end", summary["best_epoch"] >= 0)))
    regs = pm.build_registries()
    raw = {**copy.deepcopy(TINY), "output_dir": str(tmp_path_factory.mktemp("lifecycle") / "run")}
    train(resolve_config(raw, regs), regs=regs, pm=pm)
    return events, Path(raw["output_dir"])


def test_hook_rd_run_start(lifecycle) -> None:
    events, _ = lifecycle
    assert events[0] == ("start", 0)


def test_hook_rd_epoch_end(lifecycle) -> None:
    events, out = lifecycle
    assert [e for e in events if e[0] == "epoch"] == [("epoch", 0, True), ("epoch", 1, True)]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["custom_metric"] for r in rows] == [0.0, 2.0]


def test_hook_rd_run_end(lifecycle) -> None:
    events, _ = lifecycle
    assert events[-1] == ("end", True) and len(events) == 4


def test_rd_epoch_end_cannot_overwrite_the_engines_metrics(tiny_raw) -> None:
    pm = manager_with(rd_epoch_end=lambda metrics: {"val_pgd20": 1.0})  # would make this epoch the best
    regs = pm.build_registries()
    cfg = resolve_config(tiny_raw("pgd_at"), regs, overrides=["optim.epochs=1"])
    with pytest.raises(PluginResultError) as e:
        train(cfg, regs=regs, pm=pm)
    assert (e.value.plugin, e.value.hook) == ("test_plugin", "rd_epoch_end")
    assert "returned from rd_epoch_end the metric 'val_pgd20', a name the engine owns" in str(e.value)
    assert "e.g. 'test_plugin_val_pgd20'" in str(e.value)
    assert not (Path(cfg.output_dir) / "best.pt").exists()


@pytest.mark.parametrize(("returned", "problem"), [
    ({"val_extra": 1.0}, "the metric 'val_extra', a name the engine owns"),  # not in this row, in others
    ({"is_best": True}, "the metric 'is_best', a name the engine owns"),
    ({"shared": 2.0}, "the metric 'shared', which plugin 'first' returned already"),
    ([1.0], "[1.0]: return a dict of metrics, or None"),
])
def test_rd_epoch_end_results_are_checked_per_plugin(pm: PluginManager, returned: Any, problem: str) -> None:
    first = types.ModuleType("first_module")
    first.rd_epoch_end = hookimpl(lambda epoch: {"shared": 1.0, "first_metric": float(epoch)})
    second = types.ModuleType("second_module")
    second.rd_epoch_end = hookimpl(lambda epoch: returned)
    pm.add_plugin(first, "first")
    row = {"epoch": 3, "train_loss": 0.5, "lr": 0.1}  # an epoch without evaluation
    assert _plugin_metrics(pm, row, pm.call_lifecycle("rd_epoch_end", run=None, epoch=3, metrics=row)) == {
        "shared": 1.0, "first_metric": 3.0}
    pm.add_plugin(second, "second")
    with pytest.raises(PluginResultError) as e:
        _plugin_metrics(pm, row, pm.call_lifecycle("rd_epoch_end", run=None, epoch=3, metrics=row))
    assert e.value.plugin == "second" and problem in str(e.value)


def test_lifecycle_hook_errors_name_the_plugin(tiny_raw) -> None:
    from robust_distill.core.manager import PluginHookError

    def boom(run: Any) -> None:
        raise RuntimeError("broken plugin")
    pm = manager_with(rd_run_start=boom)
    regs = pm.build_registries()
    with pytest.raises(PluginHookError, match="test_plugin.*rd_run_start.*broken plugin"):
        train(resolve_config(tiny_raw("pgd_at"), regs), regs=regs, pm=pm)


def test_hook_rd_register_loggers(tiny_raw) -> None:
    """A logger registered by a plugin sees the config, the interval means, every epoch and the final table."""
    from robust_distill import Logger

    calls: list[tuple[Any, ...]] = []

    class Recorder(Logger):
        def __init__(self, output_dir: Path, tag: str = "") -> None:
            calls.append(("init", Path(output_dir).name, tag))

        def start(self, run: Any, step: int) -> None:
            calls.append(("start", run.config.method, step))

        def log_interval(self, step: int, metrics: dict[str, float]) -> None:
            calls.append(("interval", step, dict(metrics)))

        def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
            calls.append(("epoch", epoch, step, dict(metrics)))

        def finish(self, summary: dict[str, Any], curves: Path | None) -> None:
            calls.append(("finish", summary["best_epoch"], curves.name if curves else None))

        def close(self, error: BaseException | None = None) -> None:
            calls.append(("close", error))

    pm = manager_with(rd_register_loggers=lambda registry: registry.register(Recorder, name="recorder"))
    regs = pm.build_registries()
    raw = tiny_raw("pgd_at", logging=[{"key": "recorder", "kwargs": {"tag": "x"}}])
    raw["optim"]["log_every"] = 2
    train(resolve_config(raw, regs), regs=regs, pm=pm)
    assert calls[0] == ("init", "run-pgd_at", "x") and calls[1] == ("start", "pgd_at", 0)
    intervals = [c for c in calls if c[0] == "interval"]
    epochs = [c for c in calls if c[0] == "epoch"]
    assert [c[1] for c in intervals] == [2, 4, 6, 8] and [(c[1], c[2]) for c in epochs] == [(0, 4), (1, 8)]
    rows = [json.loads(r) for r in (Path(raw["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    for e, row in enumerate(rows):  # two equal intervals per epoch: their means average to the epoch's mean
        means = [c[2]["train_step/loss"] for c in intervals[2 * e:2 * e + 2]]
        assert sum(means) / 2 == pytest.approx(row["train_loss"], rel=1e-12)
        assert epochs[e][3]["val/pgd20"] == row["val_pgd20"] and epochs[e][3]["epoch"] == e + 1
        assert epochs[e][3]["train/lr"] == row["lr"] == intervals[2 * e + 1][2]["train_step/lr"]
    assert calls[-2] == ("finish", json.loads((Path(raw["output_dir"]) / "summary.json").read_text())["best_epoch"],
                         "curves.png")
    assert calls[-1] == ("close", None)
