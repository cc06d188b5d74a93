"""Progress lines where the output is not a terminal (issue 12, item 2): one implementation, three users."""

from __future__ import annotations

import io
import math

import pytest
import torch

from robust_distill import ThreatModel
from robust_distill.engine import progress as progress_mod
from robust_distill.engine.evaluation import evaluate, make_eval_attacks
from robust_distill.engine.progress import Progress, format_duration, progress_mode
from robust_distill.engine.trainer import train


class Clock:
    """A fake ``time.monotonic`` that advances only when told."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", c)
    return c


def lines_of(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_a_line_every_n_percent_with_step_stats_rate_and_eta(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(10, "epoch 1/3", mode="lines", stream=out, every_s=1e9, every_pct=20, delay_s=0)
    for i in range(10):
        clock.t += 2.0  # 2 s per step of 32 images: 16 img/s
        bar.update(1, items=32, stats={"loss": 1.0 / (i + 1)})
    bar.close()
    lines = lines_of(out)
    assert len(lines) == 5 and lines == bar.lines  # at steps 2, 4, 6, 8, 10; close() adds nothing new
    assert lines[0] == "epoch 1/3   20% step 2/10  loss=0.5  16 img/s  elapsed 0:04  ETA 0:16"
    assert lines[-1] == "epoch 1/3  100% step 10/10  loss=0.1  16 img/s  elapsed 0:20"


def test_a_line_every_n_seconds_and_the_eta_from_the_rate_so_far(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(1000, "grid g", unit="run", mode="lines", stream=out, every_s=30, every_pct=0, delay_s=0)
    for _ in range(10):
        clock.t += 10.0
        bar.update(1)
    assert len(lines_of(out)) == 3  # at 30, 60 and 90 s
    assert lines_of(out)[0] == f"grid g    0% run 3/1000  elapsed 0:30  ETA {format_duration(30 * 997 / 3)}"
    assert format_duration(30 * 997 / 3) == "2:46:10"
    bar.close()
    assert len(lines_of(out)) == 4 and "run 10/1000" in lines_of(out)[-1]  # the state at the end


def test_short_loops_print_nothing(clock: Clock) -> None:
    out = io.StringIO()
    bar = Progress(3, "val clean", mode="lines", stream=out, every_s=0, every_pct=0, delay_s=5)
    for _ in range(3):
        clock.t += 1.0
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""


def test_stats_given_as_a_callable_are_computed_only_for_a_line(clock: Clock) -> None:
    calls = []
    out = io.StringIO()
    bar = Progress(100, "epoch 1/1", mode="lines", stream=out, every_s=1e9, every_pct=50, delay_s=0)
    for _ in range(100):
        bar.update(1, stats=lambda: calls.append(1) or {"loss": 0.25})
    assert len(calls) == 2 and all("loss=0.25" in line for line in lines_of(out))


def test_the_mode_follows_the_terminal_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("RD_PROGRESS", raising=False)
    assert progress_mode(Tty()) == "bar" and progress_mode(io.StringIO()) == "lines"
    assert progress_mode(Tty(), enabled=False) == "off"
    monkeypatch.setenv("RD_PROGRESS", "lines")
    assert progress_mode(Tty()) == "lines"
    monkeypatch.setenv("RD_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="RD_PROGRESS='sometimes': expected one of auto, bar, lines, off"):
        progress_mode(io.StringIO())
    assert format_duration(math.inf) == "?" and format_duration(3725) == "1:02:05"


@pytest.fixture
def every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress as lines, one per update (what a CI log gets, minus the throttling)."""
    for name, value in (("RD_PROGRESS", "lines"), ("RD_PROGRESS_SECONDS", "0"), ("RD_PROGRESS_DELAY", "0")):
        monkeypatch.setenv(name, value)


def test_training_prints_step_loss_images_per_second_and_eta(tiny_config, every_step,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=1"])
    train(cfg)
    err = capsys.readouterr().err
    steps = [line for line in err.splitlines() if line.startswith("epoch 1/1 ") and "% step" in line]
    assert [line.split("step ")[1].split()[0] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]  # 64 images / 16
    assert all("loss=" in s and "lr=0.05" in s and "img/s" in s for s in steps)
    assert "ETA" in steps[1] and "ETA" not in steps[-1]


@pytest.mark.slow
def test_autoattack_reports_its_stages(regs, every_step, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = regs.student_sources.get("timm").build("convnet_xs", input_shape=(1, 8, 8), num_classes=4)
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 4, (12,))
    attacks = make_eval_attacks(["autoattack_apgd"], regs, ThreatModel(eps=0.1), num_classes=4)
    accuracy = evaluate(model, x, y, attacks, batch_size=16, progress=True, desc="test").accuracy["autoattack_apgd"]
    err = capsys.readouterr().err.splitlines()
    ce = [line for line in err if line.startswith("test autoattack_apgd apgd-ce ")]
    t = [line for line in err if line.startswith("test autoattack_apgd apgd-t ")]
    assert ce and ce[-1].split("run ")[1].split()[0] == "1/1"  # one restart on the one batch
    if t:  # one run per target class (num_classes - 1 = 3 of them) on the points APGD-CE left
        assert t[0].split("run ")[1].split()[0].endswith("/3")
    assert f"robust={100 * accuracy:.2f}%" in (t or ce)[-1]  # the stage that ran last states the result



def test_between_reads_progress_shows_the_last_read_loss_marked_with_its_step(
        tiny_config, every_step, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On CUDA the step diagnostics are read every ``optim.log_every`` steps: the lines in between show the
    last read loss labelled with its step, and no loss at all before the first read - never ``loss=nan``."""
    from robust_distill.engine import trainer

    monkeypatch.setattr(trainer, "read_interval", lambda device, log_every: log_every)  # CUDA's schedule on CPU
    cfg = tiny_config("pgd_at", overrides=["optim.epochs=2", "optim.log_every=3", "data.options.n_train=128"])
    summary = train(cfg)
    err = capsys.readouterr().err
    steps = {int(line.split("% step ")[1].split("/")[0]) + 100 * (line.startswith("epoch 2/2")): line
             for line in err.splitlines() if line.startswith(("epoch 1/2 ", "epoch 2/2 ")) and "% step" in line}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6, 101, 102, 103, 104, 105, 106]  # 96 images / 16 per epoch
    assert not any("nan" in line for line in steps.values())

    def loss_field(line: str) -> str | None:
        return next((f.split("=")[0] for f in line.replace("  ", " ").split(" ") if f.startswith("loss")), None)

    # reads: global steps 3 and 6 in epoch 1 (3, 6), 9 and 12 in epoch 2 (its steps 3 and 6); epoch 2 starts
    # with no value of its own
    assert [loss_field(steps[s]) for s in (1, 2, 3, 4, 5, 6)] == [None, None, "loss", "loss(step", "loss(step",
                                                                  "loss"]
    assert "loss(step 3)=" in steps[4] and "loss(step 3)=" in steps[5]
    assert [loss_field(steps[s]) for s in (101, 102, 103, 104)] == [None, None, "loss", "loss(step"]
    assert "loss(step 3)=" in steps[104] and math.isfinite(summary["best_value"])


def test_train_monitor_never_shows_an_unread_value(clock: Clock) -> None:
    from robust_distill.engine.tracking import Loggers, TrainMonitor

    monitor = TrainMonitor(Loggers(), total=5, desc="epoch 1/1", enabled=True, every=2, step=0)
    monitor.progress = Progress(5, "epoch 1/1", mode="lines", stream=io.StringIO(), every_s=0, every_pct=0,
                                delay_s=0)
    reads = {2: {"loss": 0.75}, 4: {"loss": 0.5}}
    for i in range(1, 6):
        clock.t += 1
        monitor.step(16, 0.1, means=reads.get(i), count=i)
    shown = [line.split("  ")[2] for line in monitor.progress.lines]
    assert shown == ["lr=0.1", "loss=0.75 lr=0.1", "loss(step 2)=0.75 lr=0.1", "loss=0.5 lr=0.1",
                     "loss(step 4)=0.5 lr=0.1"]
