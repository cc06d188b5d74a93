"""The one training engine. It knows hooks and registries, never a specific method.

Per step (:func:`step_loss`): ``updater.before_step`` -> ``outer_loss.before_attack(step)`` ->
``x_adv = inner_attack(step)`` -> ``loss = outer_loss(step)``; then backward and SGD step ->
``updater.after_step``. Per epoch: BatchNorm statistics averaged over the torchrun
processes, evaluation on the validation split (clean and PGD by default), the ``rd_epoch_end`` hook,
``updater.end_epoch`` and ``outer_loss.end_epoch`` (both given the epoch's metrics row), then the files,
atomically and in this order: ``best.pt``, ``train_records.pt``, the metrics row (``metrics.jsonl``,
``metrics.csv``) and last ``last.pt``, which commits the epoch (``epoch_N.pt`` too for the epochs listed in
``save_epochs``, before it). A run holds its folder's lock for its whole
length and resumes from ``last.pt`` only if it was written by the same config (up to
:data:`~robust_distill.config.RESUME_MAY_DIFFER`): every epoch's randomness is a function of
``(seed, epoch)`` and every stateful part is checkpointed, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from robust_distill import _moved
from robust_distill.config import Config, config_to_dict, plain_data
from robust_distill.core.components import InnerAttack, OuterLoss, TeacherUpdater
from robust_distill.core.manager import PluginManager, Registries, get_plugin_manager, get_registries
from robust_distill.core.step import Step
from robust_distill.engine.distributed import (
    DistContext,
    all_reduce_sum,
    average_buffers,
    clone_state,
    init_distributed,
)
from robust_distill.engine.evaluation import evaluate_set, make_eval_attacks
from robust_distill.engine.monitor import StepMonitor, check_outer_loss, describe_nonfinite, nonfinite_tensors
from robust_distill.engine.output import _own_output_dir, check_resumable
from robust_distill.engine.run import Run
from robust_distill.engine.tracking import Loggers, TrainMonitor, error_in_flight
from robust_distill.errors import DivergenceError
from robust_distill.files.atomic import atomic_save, atomic_write_json, atomic_write_text
from robust_distill.files.checkpoint import load_checkpoint

__all__ = ["train", "step_loss", "final_evaluation"]
__getattr__ = _moved.old_names(__name__)  # the names of 0.1 that moved, for one release


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class _MetricsLog:
    """``metrics.jsonl`` (one row per epoch) and ``metrics.csv``, rewritten atomically."""

    def __init__(self, output_dir: Path) -> None:
        self.jsonl, self.csv = output_dir / "metrics.jsonl", output_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []

    def load(self, before_epoch: int) -> None:
        if self.jsonl.is_file():
            rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["epoch"] < before_epoch]

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        atomic_write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows), self.jsonl)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(buf.getvalue(), self.csv)


def step_loss(step: Step, *, inner_attack: InnerAttack, outer_loss: OuterLoss, teacher_updater: TeacherUpdater,
              autocast: AbstractContextManager[Any] | None = None) -> torch.Tensor:
    """One training step up to its loss, in the engine's order.

    ``teacher_updater.before_step(step)``; then, under ``autocast``, ``outer_loss.before_attack(step)`` (work
    an official code does before its inner maximisation), ``x_adv = inner_attack(step)`` (added to the step
    as input ``adv``) and ``outer_loss(step)``, which is returned. The student is in train mode on entry.
    """
    teacher_updater.before_step(step)
    with autocast or nullcontext():
        outer_loss.before_attack(step)
        step.add_input("adv", inner_attack(step))
        return outer_loss(step)


def read_interval(device: torch.device, log_every: int) -> int:
    """Steps between two reads of the step diagnostics: every step on CPU (a host sync costs nothing there),
    every ``optim.log_every`` steps on an accelerator (each read stops the GPU until it has caught up)."""
    return 1 if device.type == "cpu" else log_every


def _train_epoch(run: Run, epoch: int) -> dict[str, float]:
    cfg, data, device = run.config, run.data, run.device
    _seed_everything(cfg.seed * 1_000_003 + epoch)
    run.student.train()
    iters = run.steps_per_epoch
    threat = cfg.threat
    grad_teachers = frozenset(getattr(run.teacher_updater, "grad_teachers", frozenset()))
    attack_weights = run.attack_weights()
    monitor = StepMonitor(device)
    every = cfg.optim.log_every
    read_every = read_interval(device, every)
    batches = data.train_batches(epoch, batch_size=cfg.data.batch_size, seed=cfg.seed, device=device,
                                 augment=cfg.data.augment, rank=run.dist.rank, world_size=run.dist.world_size)
    tracker = TrainMonitor(run.loggers, total=iters, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                           enabled=run.dist.is_main, every=every, step=epoch * iters)
    lr = cfg.optim.lr * run.lr_schedule(epoch)
    means: dict[str, float] = {}
    set_lr = None
    for i, (x, y) in enumerate(batches):
        lr_factor = run.lr_schedule(epoch + i / iters)
        lr = cfg.optim.lr * lr_factor
        if lr != set_lr:  # (a step schedule changes it a few times a run)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            set_lr = lr
        x = x.contiguous(memory_format=run.memory_format)
        if run.cudagraphs:  # a new iteration of the CUDA graphs (robust_distill.engine.compilation)
            torch.compiler.cudagraph_mark_step_begin()
        step = Step(x, y, student=run.student_ddp, student_module=run.student, teachers=run.teachers,
                    threat=threat.at((epoch + i / iters) / cfg.optim.epochs), epoch=epoch,
                    epochs=cfg.optim.epochs, iteration=i, iterations=iters, grad_teachers=grad_teachers,
                    lr_factor=lr_factor, input_grad_scale=run.input_grad_scale, attack_weights=attack_weights)
        loss = step_loss(step, inner_attack=run.inner_attack, outer_loss=run.outer_loss,
                         teacher_updater=run.teacher_updater, autocast=run.step_autocast())
        check_outer_loss(loss, run.outer_loss_name, f"at epoch {epoch + 1}, step {i + 1}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.optim.clip_grad_norm is not None:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.student.parameters(), cfg.optim.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.teacher_updater.after_step(step)
        monitor.add(loss, step.logs, i)
        read = None
        if (epoch * iters + i + 1) % read_every == 0 or i + 1 == iters:  # one host sync per interval
            means, _, bad = monitor.read()
            if all_reduce_sum(float(bad is not None))[0]:
                raise _nonfinite_loss(run, epoch, bad, lr)
            read = means
        tracker.step(x.shape[0] * run.dist.world_size, lr, means=read, count=monitor.count)
    tracker.close()
    out = {f"train_{k}": run.dist.all_reduce_mean(v) for k, v in means.items()}
    out["lr"] = lr  # the lr of the epoch's last step
    return out


def _advice(run: Run) -> str:
    fix = "lower optim.lr, check the method's options"
    if run.precision == "fp16":
        fix += ", or train with optim.precision: bf16 (or fp32)"
    return fix


def _last_good(run: Run, epoch: int) -> str:
    """What is on disk while epoch ``epoch`` (0-based) fails: the checkpoint of the epochs before it."""
    last = run.output_dir / "last.pt"
    if epoch > 0 and last.is_file():
        return f"the last good checkpoint, {last} (after epoch {epoch}), is left as it was"
    return "no checkpoint was written"


def _nonfinite_loss(run: Run, epoch: int, step: int | None, lr: float) -> DivergenceError:
    where = f"step {step + 1}" if step is not None else "a step of another process"
    weights = nonfinite_tensors({"student": run.student.state_dict()})
    cause = (f" The student's weights are no longer finite ({describe_nonfinite(weights)}): an earlier update "
             "overflowed." if weights else "")
    return DivergenceError(
        f"Training stopped: the {run.outer_loss_name} is not finite (NaN or inf) at epoch {epoch + 1}, {where} "
        f"(lr {lr:g}).{cause} Nothing was saved for this epoch and {_last_good(run, epoch)}. If the loss was finite "
        f"before, training diverged: {_advice(run)}. If it is not finite from the first step, the loss itself "
        "produces it (a log of 0, a division by 0): check that plugin.")


def _ensure_finite(run: Run, ckpt: Mapping[str, Any], epoch: int, when: str) -> None:
    """Stop (on every process) before saving or evaluating anything non-finite."""
    found = nonfinite_tensors({("student" if k == "state_dict" else k): v for k, v in ckpt.items()})
    if not all_reduce_sum(float(bool(found)))[0]:
        return
    what = describe_nonfinite(found) if found else "tensors of another process"
    raise DivergenceError(
        f"Training stopped at epoch {epoch + 1} ({when}): non-finite values in {what}. The loss of every "
        f"step was finite, so an update overflowed the weights or a statistic (BatchNorm's running_var is the "
        f"usual one). Nothing was saved for this epoch and {_last_good(run, epoch)}. To fix it: {_advice(run)} "
        f"(optim.lr is {run.config.optim.lr:g}).")


def _evaluate_epoch(run: Run, epoch: int) -> dict[str, Any]:
    cfg = run.config
    result = run.evaluate_student(cfg.eval.split, cfg.eval.n_examples, run.eval_attacks,
                                  desc=f"{cfg.eval.split} epoch {epoch + 1}")
    metrics: dict[str, Any] = {f"{cfg.eval.split}_{k}": v for k, v in result.accuracy.items()}
    if cfg.eval.train_records > 0:
        attack = {cfg.eval.select: run.eval_attacks[cfg.eval.select]}
        rec = evaluate_set(run.student, run.data.eval_set("train", cfg.eval.train_records), attack,
                           batch_size=cfg.data.eval_batch_size, device=run.device, seed=cfg.seed,
                           desc="train records", precision=cfg.eval.precision)
        run.train_records[str(epoch)] = rec.correct[cfg.eval.select]
        metrics[f"trainrec_{cfg.eval.select}"] = rec.accuracy[cfg.eval.select]
    return metrics


def train(cfg: Config, *, regs: Registries | None = None, pm: PluginManager | None = None,
          resume: bool = True, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by ``cfg``; returns the summary written to ``summary.json``.

    ``stop_after_epochs`` ends the process's work after that many epochs of this call, as an
    interruption would (tests use it to check that resuming gives the uninterrupted result).
    """
    regs = regs or get_registries()
    pm = pm or get_plugin_manager()
    dist_ctx = init_distributed(cfg.device)
    flags = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    try:
        with _own_output_dir(Path(cfg.output_dir), dist_ctx, resume):
            loggers = Loggers.build(cfg.logging, regs.loggers, Path(cfg.output_dir), enabled=dist_ctx.is_main)
            try:
                return _train(cfg, regs, pm, dist_ctx, loggers, resume, stop_after_epochs)
            finally:
                loggers.close(error_in_flight())
    finally:
        torch.backends.cudnn.benchmark = flags[0]
        torch.use_deterministic_algorithms(flags[1])
        dist_ctx.close()


def _train(cfg: Config, regs: Registries, pm: PluginManager, dist_ctx: DistContext, loggers: Loggers,
           resume: bool, stop_after_epochs: int | None) -> dict[str, Any]:
    _seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic  # autotuned convolutions: every batch has one shape
    last_path = Path(cfg.output_dir) / "last.pt"
    if resume:
        check_resumable(cfg)  # before any work
    run = Run(cfg, regs, pm, dist_ctx)
    run.loggers = loggers
    out = run.output_dir
    best_path = out / "best.pt"
    log = _MetricsLog(out)
    run.teacher_updater.setup(run)
    if resume and last_path.is_file():
        run.restore(load_checkpoint(last_path, map_location=run.device), last_path)
        records = out / "train_records.pt"
        if records.is_file():
            run.train_records = {k: v for k, v in load_checkpoint(records)["records"].items()
                                 if int(k) < run.epoch}
    if dist_ctx.enabled:
        run.student_ddp = nn.parallel.DistributedDataParallel(
            run.student, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if dist_ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(plain_data(config_to_dict(cfg)), sort_keys=False), out / "config.yaml")
        log.load(before_epoch=run.epoch)
    pm.call_lifecycle("rd_run_start", run=run)
    loggers.start(run, run.epoch * run.steps_per_epoch)

    epochs_done = 0
    while run.epoch < cfg.optim.epochs:
        epoch = run.epoch
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, **_train_epoch(run, epoch)}
        average_buffers(run.student)  # torchrun: every rank evaluates, saves and continues with the same BN stats
        row["time_train_s"] = round(time.perf_counter() - t0, 3)
        _ensure_finite(run, run.checkpoint(full=True), epoch, "end of epoch, before evaluation and saving")
        is_eval = (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs
        if is_eval:  # every process evaluates its share of the examples (robust_distill.engine.evaluation)
            t1 = time.perf_counter()
            row.update(_evaluate_epoch(run, epoch))
            row["time_eval_s"] = round(time.perf_counter() - t1, 3)
            value = row[f"{cfg.eval.split}_{cfg.eval.select}"]
            row["is_best"] = value > run.best["value"]
            if row["is_best"]:
                run.best = {"value": value, "epoch": epoch}
            row = dist_ctx.broadcast(row)
            run.best = dist_ctx.broadcast(run.best)
        row.update(_plugin_metrics(pm, row, pm.call_lifecycle("rd_epoch_end", run=run, epoch=epoch,
                                                             metrics=dict(row))))
        run.teacher_updater.end_epoch(run, epoch, row)
        run.outer_loss.end_epoch(run, epoch, row)
        if run.swa is not None:
            run.swa.end_epoch(run, epoch)
        run.epoch = epoch + 1
        last = run.checkpoint(full=True)
        _ensure_finite(run, last, epoch, "before saving")  # no checkpoint with a NaN or an inf, ever
        if dist_ctx.is_main:
            if row.get("is_best"):
                atomic_save(run.checkpoint(full=False), best_path)
            if run.epoch in cfg.save_epochs:
                atomic_save(run.checkpoint(full=False), out / f"epoch_{run.epoch}.pt")
            if run.train_records:
                records = run.data.eval_set("train", cfg.eval.train_records)
                saved = {"indices": records.indices, "labels": records.labels.cpu(), "records": run.train_records}
                if run.data.train_noisy is not None:  # data.label_noise: which of these labels are wrong
                    saved["noisy"] = torch.isin(records.indices, run.data.train_index[run.data.train_noisy.cpu()])
                atomic_save(saved, out / "train_records.pt")
            log.append(row)
            # last.pt is written last: it commits the epoch. A kill before its rename redoes the epoch (every
            # file above it is rewritten the same way, rows and records of that epoch are dropped on resume);
            # a kill after it has lost nothing.
            atomic_save(last, last_path)
            _print_row(row, cfg.optim.epochs)
            loggers.log_epoch(epoch, run.epoch * run.steps_per_epoch, row)
        dist_ctx.barrier()
        epochs_done += 1
        if stop_after_epochs is not None and epochs_done >= stop_after_epochs and run.epoch < cfg.optim.epochs:
            return {"interrupted": True, "epoch": run.epoch}

    summary = _finish(run, log)
    pm.call_lifecycle("rd_run_end", run=run, summary=summary)
    loggers.finish(summary)
    return summary


#: metric names the engine owns, in this epoch's row or another's: ``rd_epoch_end`` cannot return them
ENGINE_METRICS = ("epoch", "lr", "is_best")
ENGINE_METRIC_PREFIXES = ("train_", "trainrec_", "time_", "val_", "test_")


def _plugin_metrics(pm: PluginManager, row: Mapping[str, Any], results: list[tuple[str, Any]]) -> dict[str, Any]:
    """The metrics ``rd_epoch_end`` implementations returned, checked: none may replace an engine metric (they
    select the best checkpoint and fill reports) or another plugin's."""
    extra: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for plugin, metrics in results:
        if not isinstance(metrics, Mapping):
            raise pm.result_error(plugin, "rd_epoch_end", f"{metrics!r}: return a dict of metrics, or None.")
        for key in metrics:
            if key in row or key in ENGINE_METRICS or str(key).startswith(ENGINE_METRIC_PREFIXES):
                raise pm.result_error(plugin, "rd_epoch_end", (
                    f"the metric {key!r}, a name the engine owns (epoch, lr, is_best and every name starting with "
                    f"{', '.join(ENGINE_METRIC_PREFIXES)}): its values select the best checkpoint and fill the "
                    f"reports, so a plugin cannot set them. Return it under a name of your own, e.g. "
                    f"'{plugin}_{key}'."))
            if key in owner:
                raise pm.result_error(plugin, "rd_epoch_end", (
                    f"the metric {key!r}, which plugin {owner[key]!r} returned already. Rename it in one of the "
                    "two plugins."))
            owner[key] = plugin
        extra.update(metrics)
    return extra


def _print_row(row: Mapping[str, Any], epochs: int) -> None:
    """One line per epoch on stderr (progress bars only show on terminals)."""
    parts = [f"epoch {row['epoch'] + 1}/{epochs}"]
    for k, v in row.items():
        if k != "epoch" and isinstance(v, float):
            parts.append(f"{k}={100 * v:.2f}" if k.startswith(("val_", "test_", "trainrec_")) else f"{k}={v:.4g}")
    if row.get("is_best"):
        parts.append("(best)")
    print(" ".join(parts), file=sys.stderr, flush=True)


def _finish(run: Run, log: _MetricsLog) -> dict[str, Any]:
    cfg, out = run.config, run.output_dir
    summary: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "epochs": cfg.optim.epochs,
                               "best_epoch": run.best["epoch"], "select": f"{cfg.eval.split}_{cfg.eval.select}",
                               "best_value": run.best["value"], "checkpoints": {"best": str(out / "best.pt"),
                                                                                "last": str(out / "last.pt")}}
    if cfg.eval.final_attacks:  # every process evaluates its share of the test examples
        summary["final"] = final_evaluation(run)
    if run.dist.is_main:
        last_row = log.rows[-1] if log.rows else {}
        best_row = next((r for r in log.rows if r["epoch"] == run.best["epoch"]), {})
        summary["last"] = {k: v for k, v in last_row.items() if k.startswith(cfg.eval.split)}
        summary["best"] = {k: v for k, v in best_row.items() if k.startswith(cfg.eval.split)}
        atomic_write_json(summary, out / "summary.json")
    return run.dist.broadcast(summary)


def final_evaluation(run: Run) -> dict[str, Any]:
    """``eval.final_attacks`` on the test split, for the best and the last checkpoint.

    Called on every process under ``torchrun`` (the examples are shared out); rank 0 writes the files.
    """
    cfg = run.config
    attacks = make_eval_attacks(cfg.eval.final_attacks, run.registries, run.eval_threat,
                                num_classes=run.data.info.num_classes)
    results: dict[str, Any] = {}
    last_state = clone_state(run.student)
    best_path = run.output_dir / "best.pt"
    best_state = load_checkpoint(best_path, map_location=run.device)["state_dict"] if best_path.is_file() else None
    # When the best checkpoint is the last epoch, its numbers are the last ones: evaluate once.
    last_is_best = best_state is not None and all(torch.equal(v, best_state[k]) for k, v in last_state.items())
    res = None
    test_indices = run.data.eval_set("test", cfg.eval.final_n_examples).indices  # positions in the test split
    for which, state in (("best", best_state), ("last", last_state)):
        if state is None:
            continue
        if not (which == "last" and last_is_best):
            run.student.load_state_dict(state)
            res = run.evaluate_student("test", cfg.eval.final_n_examples, attacks, desc=f"test {which}")
        results[which] = res.accuracy
        if run.dist.is_main:
            atomic_save({"correct": res.correct, "indices": test_indices},
                        run.output_dir / f"test_correct_{which}.pt")
    return results
