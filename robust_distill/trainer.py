"""The one training engine. It knows hooks and registries, never a specific method.

Per step: ``updater.before_step`` -> ``x_adv = inner_attack(step)`` -> ``loss = outer_loss(step)`` ->
backward and SGD step -> ``updater.after_step``. Per epoch: evaluation on the validation split (clean and
PGD by default), a metrics row (``metrics.jsonl`` and ``metrics.csv``), the ``best.pt``/``last.pt``
checkpoints (written atomically; ``epoch_N.pt`` too for the epochs listed in ``save_epochs``) and the
``rd_epoch_end`` hook. A run resumes from ``last.pt``: every
epoch's randomness is a function of ``(seed, epoch)`` and every stateful part is checkpointed, so a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
import sys
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from .checkpoint import FORMAT, atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from .components import Method, Stateful
from .config import Config, config_to_dict, split_spec
from .data import Splits, augment, epoch_batches, make_splits, to_float
from .distributed import DistContext, clone_state, init_distributed, resolve_device
from .evaluation import EvalResult, evaluate, make_eval_attacks
from .plugin import PluginManager, Registries, get_plugin_manager, get_registries
from .step import Step

__all__ = ["Run", "train", "build_student", "load_teacher", "load_data", "model_spec"]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def load_data(cfg: Config, regs: Registries) -> Splits:
    dataset = regs.datasets.get(cfg.data.dataset)
    bundle = dataset.load(root=cfg.data.root, **cfg.data.options)
    return make_splits(bundle, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                       train_subset=cfg.data.train_subset)


def build_student(key: str, kwargs: Mapping[str, Any], info: Any, regs: Registries) -> nn.Module:
    source, name = split_spec(key)
    return regs.student_sources.get(source).build(name, input_shape=tuple(info.input_shape),
                                                  num_classes=info.num_classes, **kwargs)


def load_teacher(key: str, kwargs: Mapping[str, Any], info: Any, regs: Registries) -> nn.Module:
    """Resolve a teacher spec and freeze it (eval mode, no parameter requires grad)."""
    source, name = split_spec(key)
    teacher = regs.teacher_sources.get(source).load(name, dataset=info, **kwargs)
    return teacher.eval().requires_grad_(False)


def model_spec(key: str, kwargs: Mapping[str, Any], info: Any) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its network (see :mod:`robust_distill.checkpoint`)."""
    return {"key": key, "kwargs": dict(kwargs), "num_classes": info.num_classes,
            "input_shape": list(info.input_shape), "dataset": info.name}


class Run:
    """A training run: what the lifecycle hooks and teacher updaters receive.

    :ivar config: the resolved :class:`~robust_distill.config.Config`.
    :ivar student: the bare student module; ``student_ddp`` the module the outer loss calls.
    :ivar teachers: role -> teacher module (updaters may add or replace entries in ``setup``).
    :ivar output_dir: where config, metrics and checkpoints go.
    :ivar optimizer: the student's SGD; ``scaler`` its ``GradScaler`` (enabled with ``optim.amp`` on CUDA;
        updaters that step their own optimizer on the joint loss unscale with ``scaler.get_scale()``).
    :ivar dist: the :class:`~robust_distill.distributed.DistContext` (rank, world size, collectives).
    """

    def __init__(self, cfg: Config, regs: Registries, pm: PluginManager, dist_ctx: DistContext) -> None:
        self.config, self.regs, self.pm, self.dist = cfg, regs, pm, dist_ctx
        self.device = resolve_device(cfg.device, dist_ctx.local_rank)
        self.output_dir = Path(cfg.output_dir)
        self.method: Method = regs.methods.get(cfg.method)
        self.data = load_data(cfg, regs)
        info = self.data.info
        self.student = build_student(cfg.student.key, cfg.student.kwargs, info, regs).to(self.device)
        if cfg.sync_bn and dist_ctx.enabled:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.student = self.student.to(memory_format=self.memory_format)
        self.teachers: dict[str, nn.Module] = {
            role: load_teacher(t.key, t.kwargs, info, regs).to(self.device, memory_format=self.memory_format)
            for role, t in cfg.teachers.items()}
        self.inner_attack = regs.inner_attacks.build(cfg.inner_attack.key, cfg.inner_attack.kwargs)
        self.outer_loss = regs.outer_losses.build(cfg.outer_loss.key, cfg.outer_loss.kwargs,
                                                  num_classes=info.num_classes,
                                                  batch_size=cfg.data.batch_size // dist_ctx.world_size)
        self.teacher_updater = regs.teacher_updaters.build(cfg.teacher_updater.key, cfg.teacher_updater.kwargs)
        self.lr_schedule = regs.lr_schedules.build(cfg.optim.schedule.key, cfg.optim.schedule.kwargs,
                                                   epochs=cfg.optim.epochs)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=cfg.optim.lr,
                                         momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                                         nesterov=cfg.optim.nesterov)
        self.amp = cfg.optim.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.student_ddp: nn.Module = self.student
        self.epoch = 0
        self.best: dict[str, Any] = {"value": -math.inf, "epoch": -1}
        self.spec = model_spec(cfg.student.key, cfg.student.kwargs, info)
        self.eval_eps = cfg.eval.eps if cfg.eval.eps is not None else cfg.threat.eps
        self.eval_attacks = make_eval_attacks(cfg.eval.attacks, regs, eps=self.eval_eps,
                                              num_classes=info.num_classes)
        self.train_records: dict[str, Any] = {}

    # -- state ------------------------------------------------------------------------------------
    def parts(self) -> dict[str, Stateful]:
        return {"inner_attack": self.inner_attack, "outer_loss": self.outer_loss,
                "teacher_updater": self.teacher_updater}

    def checkpoint(self, *, full: bool) -> dict[str, Any]:
        ckpt: dict[str, Any] = {"format": FORMAT, "model": self.spec, "state_dict": self.student.state_dict(),
                                "epoch": self.epoch, "config": _plain(config_to_dict(self.config))}
        if full:
            ckpt.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                        best=dict(self.best), parts={k: p.state_dict() for k, p in self.parts().items()})
        return ckpt

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self.student.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.best = dict(ckpt["best"])
        self.epoch = int(ckpt["epoch"])
        for key, part in self.parts().items():
            part.load_state_dict(ckpt["parts"].get(key, {}))

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate_student(self, split: str, n: int | None, attacks: Mapping[str, Any], *,
                         desc: str = "eval") -> EvalResult:
        x, y = self.data.eval_split(split, n)
        return evaluate(self.student, x, y, attacks, batch_size=self.config.data.eval_batch_size,
                        device=self.device, seed=self.config.seed, progress=self.dist.is_main, desc=desc)


def _plain(obj: Any) -> Any:
    """Containers of str/int/float/bool/None only (safe for ``weights_only`` loading and YAML)."""
    if dataclasses.is_dataclass(obj):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


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


def _train_epoch(run: Run, epoch: int) -> dict[str, float]:
    cfg, data, device = run.config, run.data, run.device
    _seed_everything(cfg.seed * 1_000_003 + epoch)
    run.student.train()
    n = data.train_x.shape[0]
    iters = -(-(n + (-n) % run.dist.world_size) // cfg.data.batch_size)  # batches per epoch
    threat = cfg.threat
    autocast = torch.autocast("cuda", dtype=torch.float16) if run.amp else nullcontext()
    grad_teachers = frozenset(getattr(run.teacher_updater, "grad_teachers", frozenset()))
    sums: dict[str, float] = {}
    count = 0
    batches = epoch_batches(n, cfg.data.batch_size, seed=cfg.seed, epoch=epoch, rank=run.dist.rank,
                            world_size=run.dist.world_size)
    bar = tqdm(batches, total=iters, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False,
               disable=None if run.dist.is_main else True, dynamic_ncols=True)
    lr = cfg.optim.lr * run.lr_schedule(epoch)
    for i, idx in enumerate(bar):
        lr_factor = run.lr_schedule(epoch + i / iters)
        lr = cfg.optim.lr * lr_factor
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        x = to_float(data.train_x[idx], device)
        if cfg.data.augment:
            x = augment(x, data.crop_padding, data.flip)
        x = x.contiguous(memory_format=run.memory_format)
        y = data.train_y[idx].to(device)
        step = Step(x, y, student=run.student_ddp, student_module=run.student, teachers=run.teachers,
                    threat=threat.at((epoch + i / iters) / cfg.optim.epochs), epoch=epoch,
                    epochs=cfg.optim.epochs, iteration=i, iterations=iters, grad_teachers=grad_teachers,
                    lr_factor=lr_factor)
        run.teacher_updater.before_step(step)
        with autocast:
            step.add_input("adv", run.inner_attack(step))
            loss = run.outer_loss(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"The outer loss is {loss.item()} at epoch {epoch + 1}, step {i + 1} (lr {lr:g}). "
                "Lower optim.lr, check the method's options, or set optim.amp: false.")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.optim.clip_grad_norm is not None:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.student.parameters(), cfg.optim.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.teacher_updater.after_step(step)
        count += 1
        for k, v in {"loss": loss.item(), **step.logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if run.dist.is_main and i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3g}")
    out = {f"train_{k}": run.dist.all_reduce_mean(v / max(count, 1)) for k, v in sums.items()}
    out["lr"] = lr  # the lr of the epoch's last step
    return out


def _evaluate_epoch(run: Run, epoch: int) -> dict[str, Any]:
    cfg = run.config
    result = run.evaluate_student(cfg.eval.split, cfg.eval.n_examples, run.eval_attacks,
                                  desc=f"{cfg.eval.split} epoch {epoch + 1}")
    metrics: dict[str, Any] = {f"{cfg.eval.split}_{k}": v for k, v in result.accuracy.items()}
    if cfg.eval.train_records > 0:
        n = min(cfg.eval.train_records, run.data.train_x.shape[0])
        x, y = run.data.train_x[:n], run.data.train_y[:n]
        attack = {cfg.eval.select: run.eval_attacks[cfg.eval.select]}
        rec = evaluate(run.student, x, y, attack, batch_size=cfg.data.eval_batch_size, device=run.device,
                       seed=cfg.seed, desc="train records")
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
    try:
        return _train(cfg, regs, pm, dist_ctx, resume, stop_after_epochs)
    finally:
        dist_ctx.close()


def _train(cfg: Config, regs: Registries, pm: PluginManager, dist_ctx: DistContext, resume: bool,
           stop_after_epochs: int | None) -> dict[str, Any]:
    _seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    run = Run(cfg, regs, pm, dist_ctx)
    out = run.output_dir
    last_path, best_path = out / "last.pt", out / "best.pt"
    log = _MetricsLog(out)
    run.teacher_updater.setup(run)
    if resume and last_path.is_file():
        run.restore(load_checkpoint(last_path, map_location=run.device))
        records = out / "train_records.pt"
        if records.is_file():
            run.train_records = {k: v for k, v in load_checkpoint(records)["records"].items()
                                 if int(k) < run.epoch}
    if dist_ctx.enabled:
        run.student_ddp = nn.parallel.DistributedDataParallel(
            run.student, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if dist_ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(_plain(config_to_dict(cfg)), sort_keys=False), out / "config.yaml")
        log.load(before_epoch=run.epoch)
    pm.call_lifecycle("rd_run_start", run=run)

    epochs_done = 0
    while run.epoch < cfg.optim.epochs:
        epoch = run.epoch
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, **_train_epoch(run, epoch)}
        row["time_train_s"] = round(time.perf_counter() - t0, 3)
        is_eval = (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs
        if is_eval:
            if dist_ctx.is_main:
                t1 = time.perf_counter()
                row.update(_evaluate_epoch(run, epoch))
                row["time_eval_s"] = round(time.perf_counter() - t1, 3)
                value = row[f"{cfg.eval.split}_{cfg.eval.select}"]
                row["is_best"] = value > run.best["value"]
                if row["is_best"]:
                    run.best = {"value": value, "epoch": epoch}
            row = dist_ctx.broadcast(row)
            run.best = dist_ctx.broadcast(run.best)
        for extra in pm.call_lifecycle("rd_epoch_end", run=run, epoch=epoch, metrics=dict(row)):
            row.update(extra)
        run.teacher_updater.end_epoch(run, epoch, row)
        run.epoch = epoch + 1
        if dist_ctx.is_main:
            if row.get("is_best"):
                atomic_save(run.checkpoint(full=False), best_path)
            if run.epoch in cfg.save_epochs:
                atomic_save(run.checkpoint(full=False), out / f"epoch_{run.epoch}.pt")
            if run.train_records:
                atomic_save({"indices": run.data.train_index[:cfg.eval.train_records],
                             "labels": run.data.train_y[:cfg.eval.train_records],
                             "records": run.train_records}, out / "train_records.pt")
            atomic_save(run.checkpoint(full=True), last_path)
            log.append(row)
            _print_row(row, cfg.optim.epochs)
        dist_ctx.barrier()
        epochs_done += 1
        if stop_after_epochs is not None and epochs_done >= stop_after_epochs and run.epoch < cfg.optim.epochs:
            return {"interrupted": True, "epoch": run.epoch}

    summary = _finish(run, log)
    pm.call_lifecycle("rd_run_end", run=run, summary=summary)
    return summary


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
    if run.dist.is_main:
        last_row = log.rows[-1] if log.rows else {}
        best_row = next((r for r in log.rows if r["epoch"] == run.best["epoch"]), {})
        summary["last"] = {k: v for k, v in last_row.items() if k.startswith(cfg.eval.split)}
        summary["best"] = {k: v for k, v in best_row.items() if k.startswith(cfg.eval.split)}
        if cfg.eval.final_attacks:
            summary["final"] = final_evaluation(run)
        atomic_write_json(summary, out / "summary.json")
    return run.dist.broadcast(summary)


def final_evaluation(run: Run) -> dict[str, Any]:
    """``eval.final_attacks`` on the test split, for the best and the last checkpoint."""
    cfg = run.config
    attacks = make_eval_attacks(cfg.eval.final_attacks, run.regs, eps=run.eval_eps,
                                num_classes=run.data.info.num_classes)
    results: dict[str, Any] = {}
    last_state = clone_state(run.student)
    best_path = run.output_dir / "best.pt"
    best_state = load_checkpoint(best_path, map_location=run.device)["state_dict"] if best_path.is_file() else None
    # When the best checkpoint is the last epoch, its numbers are the last ones: evaluate once.
    last_is_best = best_state is not None and all(torch.equal(v, best_state[k]) for k, v in last_state.items())
    res = None
    for which, state in (("best", best_state), ("last", last_state)):
        if state is None:
            continue
        if not (which == "last" and last_is_best):
            run.student.load_state_dict(state)
            res = run.evaluate_student("test", cfg.eval.final_n_examples, attacks, desc=f"test {which}")
        results[which] = res.accuracy
        atomic_save({"correct": res.correct}, run.output_dir / f"test_correct_{which}.pt")
    return results
