"""A training run's state, built from a resolved config: the data, the student and its teachers, the parts of
the method, the optimizer and precision. :class:`Run` is the engine's
:class:`~robust_distill.core.context.RunContext`: what teacher updaters and lifecycle hooks receive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_distill.config import Config, config_to_dict, plain_data
from robust_distill.core.components import Method, Part, Stateful, split_spec
from robust_distill.core.manager import PluginManager, Registries
from robust_distill.core.precision import InputGradScale, autocast, autocast_dtype, grad_scaler
from robust_distill.data.memory import DataSplits, place_data
from robust_distill.data.splits import make_splits
from robust_distill.data.streaming import default_workers
from robust_distill.engine.compilation import CUDAGRAPH_MODES, check_compile, compile_mode, compile_module, device_mode
from robust_distill.engine.distributed import (
    DistContext,
    resolve_device,
)
from robust_distill.engine.evaluation import EvalResult, evaluate_set, make_eval_attacks
from robust_distill.engine.fastpath import AttackWeights, constant_teachers, fold_enabled, teacher_fast_path
from robust_distill.engine.tracking import Loggers
from robust_distill.engine.trained import StudentSWA
from robust_distill.errors import CheckpointError
from robust_distill.files.checkpoint import FORMAT


def load_data(cfg: Config, regs: Registries, device: torch.device | None = None) -> DataSplits:
    """The dataset's splits: :class:`~robust_distill.data.memory.Splits` in memory, or
    :class:`~robust_distill.data.streaming.StreamedSplits` read by ``data.workers`` processes (pinned memory
    when training on ``device`` CUDA)."""
    dataset = regs.datasets.get(cfg.data.dataset)
    bundle = regs.call(dataset.load, root=cfg.data.root, **cfg.data.options)
    return make_splits(bundle, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                       train_subset=cfg.data.train_subset, label_noise=cfg.data.label_noise,
                       workers=default_workers() if cfg.data.workers is None else cfg.data.workers,
                       prefetch_factor=cfg.data.prefetch_factor,
                       pin_memory=device is not None and device.type == "cuda")


def build_student(key: str, kwargs: Mapping[str, Any], info: Any, regs: Registries) -> nn.Module:
    source, name = split_spec(key)
    return regs.student_sources.get(source).build(name, input_shape=tuple(info.input_shape),
                                                  num_classes=info.num_classes, **kwargs)


def load_teacher(key: str, kwargs: Mapping[str, Any], info: Any, regs: Registries) -> nn.Module:
    """Resolve a teacher spec and freeze it (eval mode, no parameter requires grad)."""
    source, name = split_spec(key)
    teacher = regs.call(regs.teacher_sources.get(source).load, name, dataset=info, **kwargs)
    return teacher.eval().requires_grad_(False)


def model_spec(key: str, kwargs: Mapping[str, Any], info: Any) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its network (see :mod:`robust_distill.files.checkpoint`)."""
    return {"key": key, "kwargs": dict(kwargs), "num_classes": info.num_classes,
            "input_shape": list(info.input_shape), "dataset": info.name}


class Run:
    """A training run: the engine's implementation of :class:`~robust_distill.core.context.RunContext`, which is
    what the lifecycle hooks and teacher updaters receive (see there for the attributes plugins may use).

    Engine-only attributes: ``student_ddp`` (the module the outer loss calls: DDP-wrapped under torchrun),
    ``loggers`` (the configured experiment trackers, :mod:`robust_distill.engine.tracking`),
    ``optimizer`` (the student's SGD, fused on CUDA), ``scaler`` (its ``GradScaler``, enabled with
    ``optim.precision: fp16``; updaters that step their own optimizer on the joint loss unscale with
    ``scaler.get_scale()``), ``input_grad_scale`` (the inner attack's objective scale under fp16), the parts;
    the fast paths (:mod:`robust_distill.engine.fastpath`): ``constant_teachers`` (roles the updater never changes),
    ``teacher_cast`` (their weights in the autocast dtype), ``fold_bn`` and ``folded_bn`` (BatchNorms folded per
    constant teacher), ``cudagraphs`` (a CUDA-graph compile mode is in use).
    """

    def __init__(self, cfg: Config, regs: Registries, pm: PluginManager, dist_ctx: DistContext) -> None:
        self.config, self.registries, self.pm, self.dist = cfg, regs, pm, dist_ctx
        self.device = resolve_device(cfg.device, dist_ctx.local_rank)
        self.output_dir = Path(cfg.output_dir)
        self.method: Method = regs.methods.get(cfg.method)
        self.data = place_data(load_data(cfg, regs, self.device), self.device, cfg.data.on_device)
        info = self.data.info
        self.student = build_student(cfg.student.key, cfg.student.kwargs, info, regs).to(self.device)
        if cfg.sync_bn and dist_ctx.enabled:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.student = self.student.to(memory_format=self.memory_format)
        self.teachers: dict[str, nn.Module] = {
            role: load_teacher(t.key, t.kwargs, info, regs).to(self.device, memory_format=self.memory_format)
            for role, t in cfg.teachers.items()}
        self.teacher_updater = regs.teacher_updaters.build(cfg.teacher_updater.key, cfg.teacher_updater.kwargs)
        self.precision = cfg.optim.precision
        self.fold_bn = fold_enabled(cfg.optim.fold_bn, self.device, self.precision)
        self.constant_teachers = constant_teachers(self.teacher_updater, self.teachers)
        example = torch.rand(2, *info.input_shape, generator=torch.Generator().manual_seed(0))  # global RNG untouched
        self.teacher_cast, self.folded_bn = teacher_fast_path(
            self.teachers, self.constant_teachers, dtype=autocast_dtype(self.precision), fold=self.fold_bn,
            example=example.to(self.device, memory_format=self.memory_format))
        self._attack_weights: AttackWeights | None = None
        mode = device_mode(compile_mode(cfg.optim.compile), self.device)
        self.cudagraphs = mode in CUDAGRAPH_MODES
        if mode is not None:
            check_compile(self.device, mode)
            for model in (self.student, *self.teachers.values()):
                compile_module(model, mode)
        self.inner_attack = regs.inner_attacks.build(cfg.inner_attack.key, cfg.inner_attack.kwargs)
        self.outer_loss = regs.outer_losses.build(cfg.outer_loss.key, cfg.outer_loss.kwargs,
                                                  num_classes=info.num_classes, registries=regs,
                                                  batch_size=cfg.data.batch_size // dist_ctx.world_size)
        entry = regs.outer_losses.entry(cfg.outer_loss.key)
        self.outer_loss_name = (f"outer loss {entry.name!r} (plugin {entry.plugin!r}, distribution "
                                f"{entry.distribution})")
        self.lr_schedule = regs.lr_schedules.build(cfg.optim.schedule.key, cfg.optim.schedule.kwargs,
                                                   epochs=cfg.optim.epochs)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=cfg.optim.lr,
                                         momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                                         nesterov=cfg.optim.nesterov, fused=self.device.type == "cuda")
        self.scaler = grad_scaler(self.device, self.precision)
        self.input_grad_scale = InputGradScale(self.device) if self.precision == "fp16" else None
        self.student_ddp: nn.Module = self.student
        self.epoch = 0
        self.best: dict[str, Any] = {"value": -math.inf, "epoch": -1}
        self.student_spec = model_spec(cfg.student.key, cfg.student.kwargs, info)
        self.eval_threat = cfg.eval_threat
        self.eval_attacks = make_eval_attacks(cfg.eval.attacks, regs, self.eval_threat, num_classes=info.num_classes)
        self.train_records: dict[str, Any] = {}
        self.swa = StudentSWA(cfg.swa.start, self.student, cfg.optim.epochs) if cfg.swa.start is not None else None
        self.loggers = Loggers()  # the configured experiment trackers (set by train(), main process only)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (every process takes the same number)."""
        n = self.data.n_train
        return -(-(n + (-n) % self.dist.world_size) // self.config.data.batch_size)

    # -- fast paths (robust_distill.engine.fastpath) -----------------------------------------------------
    @contextmanager
    def step_autocast(self) -> Iterator[None]:
        """The context of a training step's forwards: autocast, the constant teachers' weights in its dtype."""
        with autocast(self.device, self.precision), (
                self.teacher_cast.swapped(refresh=False) if self.teacher_cast is not None else nullcontext()):
            yield

    def attack_weights(self) -> AttackWeights | None:
        """The inner attack's frozen models (the student and the teachers that change) folded (``fold_bn``) and
        cast to the autocast dtype per attack; ``None`` when neither applies. Built once for a set of models
        (teacher updaters may add teachers in ``setup``)."""
        models = [self.student, *(m for r, m in self.teachers.items() if r not in self.constant_teachers)]
        dtype = autocast_dtype(self.precision)
        if dtype is None and not self.fold_bn:
            return None
        if self._attack_weights is None or self._attack_weights.models != models:
            self._attack_weights = AttackWeights(models, dtype, fold=self.fold_bn)
        return self._attack_weights

    # -- models from specs (RunContext) ------------------------------------------------------------
    def build_student(self, part: Part) -> nn.Module:
        model = build_student(part.key, part.kwargs, self.data.info, self.registries)
        return model.to(self.device, memory_format=self.memory_format)

    def load_teacher(self, part: Part) -> nn.Module:
        return load_teacher(part.key, part.kwargs, self.data.info, self.registries).to(
            self.device, memory_format=self.memory_format)

    # -- state ------------------------------------------------------------------------------------
    def parts(self) -> dict[str, Stateful]:
        parts = {"inner_attack": self.inner_attack, "outer_loss": self.outer_loss,
                 "teacher_updater": self.teacher_updater}
        return parts if self.swa is None else {**parts, "swa": self.swa}

    def checkpoint(self, *, full: bool) -> dict[str, Any]:
        ckpt: dict[str, Any] = {"format": FORMAT, "model": self.student_spec, "state_dict": self.student.state_dict(),
                                "epoch": self.epoch, "config": plain_data(config_to_dict(self.config))}
        if full:
            ckpt.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                        best=dict(self.best), parts={k: p.state_dict() for k, p in self.parts().items()})
            if self.input_grad_scale is not None:
                ckpt["input_grad_scale"] = self.input_grad_scale.state_dict()
        return ckpt

    def restore(self, ckpt: Mapping[str, Any], path: Path | None = None) -> None:
        try:
            self.student.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"Cannot resume from {str(path or 'the checkpoint')!r}: {exc}. Start over with "
                                  "--no-resume or use another output_dir.") from exc
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint from another device: this device's kernel
            group["fused"] = self.device.type == "cuda"
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.input_grad_scale is not None:
            self.input_grad_scale.load_state_dict(ckpt.get("input_grad_scale", {}))
        self.best = dict(ckpt["best"])
        self.epoch = int(ckpt["epoch"])
        for key, part in self.parts().items():
            part.load_state_dict(ckpt["parts"].get(key, {}))

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate_student(self, split: str, n: int | None, attacks: Mapping[str, Any], *,
                         desc: str = "eval") -> EvalResult:
        return evaluate_set(self.student, self.data.eval_set(split, n), attacks,
                            batch_size=self.config.data.eval_batch_size, device=self.device,
                            seed=self.config.seed, progress=self.dist.is_main, desc=desc,
                            precision=self.config.eval.precision, concurrency=self.config.eval.concurrency)
