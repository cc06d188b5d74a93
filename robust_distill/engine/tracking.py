"""Experiment tracking: the :class:`Logger` interface, a run's configured loggers, and the training monitor.

Loggers are registered by plugins (``rd_register_loggers``; the built-in ``tensorboard`` and ``wandb``) and
chosen by the config (``logging: [tensorboard, wandb]``, or ``{key: wandb, kwargs: {project: x}}``). The
engine builds them once per run, on the main process only, and calls them at the run's lifecycle points:

1. :meth:`Logger.start`: the resolved config, before the first epoch;
2. :meth:`Logger.log_interval`: every ``log_every`` optimizer steps, the means of the step diagnostics
   (loss and what the outer loss logs) over those steps, and the learning rate;
3. :meth:`Logger.log_epoch`: each epoch's metrics row (training means, validation accuracy, times);
4. :meth:`Logger.finish`: the summary (the final test table of the best and last checkpoints) and the
   accuracy curves (``curves.png``, the report's plot of this run);
5. :meth:`Logger.close`: always, also when the run fails (``error`` says why).

The training loop reports each step to a plain :class:`TrainMonitor` (progress line or bar, interval means):
no hook is called inside the loop.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robust_distill import _moved
from robust_distill.core.manager import PluginHookError
from robust_distill.engine.progress import Progress
from robust_distill.results.plots import plot_curves
from robust_distill.results.runs import group_runs, load_runs

if TYPE_CHECKING:
    from robust_distill.core.components import Part
    from robust_distill.core.context import RunContext
    from robust_distill.core.registry import Registry

__all__ = ["Logger", "Loggers", "TrainMonitor", "metric_name", "plot_run_curves"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release


class Logger:
    """An experiment tracker. Subclass it and override what you need; every method does nothing by default.

    A logger class is constructed with its config ``kwargs``, plus ``output_dir`` (the run's folder) when its
    constructor names it. Metrics are plain floats; ``step`` is the number of optimizer steps done, the one
    x-axis of every call (``log_epoch`` also gets the 0-based epoch).
    """

    @classmethod
    def check(cls, **options: Any) -> None:
        """Raise :class:`~robust_distill._compat.MissingDependencyError` (naming the extra to install) when
        the library this logger needs is missing; called when the config is validated."""

    def start(self, run: RunContext, step: int) -> None:
        """The run starts (``step`` > 0: resumed there); ``run.config`` is the resolved config."""

    def log_interval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Means over the last ``log_every`` steps: ``train_step/loss``, ``train_step/<diagnostic>``, and
        ``train_step/lr`` (the learning rate of the interval's last step)."""

    def log_epoch(self, epoch: int, step: int, metrics: Mapping[str, float]) -> None:
        """An epoch's metrics row, names from :func:`metric_name` (``train/loss``, ``val/pgd20``, ...)."""

    def finish(self, summary: Mapping[str, Any], curves: Path | None) -> None:
        """The run finished: its ``summary.json`` (see :func:`final_table`) and its curves PNG (or None)."""

    def close(self, error: BaseException | None = None) -> None:
        """Release files and processes; ``error`` is set when the run failed."""


def metric_name(key: str) -> str:
    """A metrics-row key as a tracker tag: ``train_loss`` -> ``train/loss``, ``val_pgd20`` -> ``val/pgd20``,
    ``time_eval_s`` -> ``time/eval_s``, ``lr`` (the epoch's last) -> ``train/lr``; ``epoch`` stays."""
    if key == "lr":
        return "train/lr"
    return key.replace("_", "/", 1) if "_" in key else key


def plot_run_curves(output_dir: Path) -> Path | None:
    """``curves.png`` of one finished run (the report's per-epoch accuracy plot); None if it has no epochs."""
    runs = [r for r in load_runs(output_dir) if r.folder == output_dir and r.rows]
    if not runs:
        return None
    return plot_curves(group_runs(runs)[1], output_dir / "curves.png")


class Loggers:
    """The loggers of one run, called in config order; an exception names the logger and its plugin."""

    def __init__(self, loggers: Sequence[tuple[str, str, str, Logger]] = ()) -> None:
        self._loggers = list(loggers)  # (name, plugin, distribution, logger)
        self.output_dir: Path | None = None

    @classmethod
    def build(cls, parts: Sequence[Part], registry: Registry[Any], output_dir: Path, *,
              enabled: bool = True) -> Loggers:
        """Construct the configured loggers (none when ``enabled`` is False: non-main processes)."""
        out = cls()
        out.output_dir = output_dir
        if enabled:
            for part in parts:
                entry = registry.entry(part.key)
                logger = registry.build(part.key, part.kwargs, output_dir=output_dir)
                out._loggers.append((part.key, entry.plugin, entry.distribution, logger))
        return out

    def __bool__(self) -> bool:
        return bool(self._loggers)

    def __len__(self) -> int:
        return len(self._loggers)

    @staticmethod
    def _invoke(entry: tuple[str, str, str, Logger], method: str, *args: Any) -> None:
        name, plugin, distribution, logger = entry
        try:
            getattr(logger, method)(*args)
        except Exception as exc:
            raise PluginHookError(plugin, type(logger).__module__, distribution, f"logger {name!r} {method}",
                                  exc) from exc

    def _call(self, method: str, *args: Any) -> None:
        for entry in self._loggers:
            self._invoke(entry, method, *args)

    def start(self, run: RunContext, step: int) -> None:
        self._call("start", run, step)

    def log_interval(self, step: int, metrics: Mapping[str, float]) -> None:
        self._call("log_interval", step, metrics)

    def log_epoch(self, epoch: int, step: int, row: Mapping[str, Any]) -> None:
        metrics = {metric_name(k): float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        self._call("log_epoch", epoch, step, {**metrics, "epoch": float(epoch + 1)})

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self._loggers:
            curves = plot_run_curves(self.output_dir) if self.output_dir is not None else None
            self._call("finish", summary, curves)

    def close(self, error: BaseException | None = None) -> None:
        """Close every logger, even if one fails (the first failure is raised after all are closed)."""
        failure = None
        for entry in self._loggers:
            try:
                self._invoke(entry, "close", error)
            except Exception as exc:
                failure = failure or exc
        self._loggers = []
        if failure is not None and error is None:
            raise failure


class TrainMonitor:
    """What the training loop reports each step to: the progress bar or line (:mod:`robust_distill.engine.progress`)
    and, every ``every`` optimizer steps, the loggers (means of the step values over the interval).

    The step values stay on the device (:class:`~robust_distill.engine.monitor.StepMonitor`); the engine reads their
    running means of the epoch once per read interval (every step on CPU, every ``optim.log_every`` steps on
    CUDA) and passes them to :meth:`step`: interval means are differences of those running sums, so no
    value is read twice and no step adds a host synchronisation.

    :param loggers: the run's loggers (interval means are computed only when there are some).
    :param total: steps in this epoch; ``desc`` labels the progress (``epoch 2/10``).
    :param enabled: False on non-main processes (no progress, no logging).
    :param every: steps between interval logs (``optim.log_every``).
    :param step: optimizer steps done before this epoch.
    """

    def __init__(self, loggers: Loggers, *, total: int, desc: str, enabled: bool, every: int, step: int) -> None:
        self.loggers = loggers if enabled else Loggers()
        self.every, self.step_count = max(1, every), step
        self.progress = Progress(total, desc, enabled=enabled)
        self._lr = math.nan
        self._loss: float | None = None  # the epoch's running mean loss at its last read, None before the first
        self._loss_step = 0  # the step of this epoch (1-based) at which it was read
        self._sums: dict[str, float] = {}  # the epoch's running sums at the last interval log
        self._count = 0

    def _stats(self) -> dict[str, float]:
        """What the progress shows: the loss only once read, marked with its step when older than this one."""
        if self._loss is None:
            return {"lr": self._lr}
        key = "loss" if self._loss_step == self.progress.n else f"loss(step {self._loss_step})"
        return {key: self._loss, "lr": self._lr}

    def step(self, images: int, lr: float, *, means: Mapping[str, float] | None = None, count: int = 0) -> None:
        """One optimizer step on ``images`` images (all processes); ``means``: the running means of the epoch's
        step values over its first ``count`` steps, when the engine has just read them.

        Between reads (every ``optim.log_every`` steps on CUDA) the progress shows the last read loss labelled
        with the step it was read at (``loss(step 16)=0.52``), and no loss before the first read: never a value
        that was not read."""
        self.step_count += 1
        self._lr = lr
        if means is not None and "loss" in means:
            self._loss, self._loss_step = means["loss"], self.progress.n + 1
        if means is not None and self.loggers and self.step_count % self.every == 0 and count > self._count:
            sums = {k: v * count for k, v in means.items()}
            n = count - self._count
            self.loggers.log_interval(self.step_count, {
                **{f"train_step/{k}": (v - self._sums.get(k, 0.0)) / n for k, v in sums.items()},
                "train_step/lr": lr})
            self._sums, self._count = sums, count
        self.progress.update(1, items=images, stats=self._stats)

    def close(self) -> None:
        self.progress.close()


def error_in_flight() -> BaseException | None:
    """The exception being handled, if any (for ``finally`` blocks that close loggers)."""
    return sys.exc_info()[1]
