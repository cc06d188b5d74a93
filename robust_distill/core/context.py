"""What a plugin sees of a training run: the :class:`RunContext` protocol.

Teacher updaters (``setup``, ``end_epoch``), outer losses (``end_epoch``) and the lifecycle hooks
(``rd_run_start``, ``rd_epoch_end``, ``rd_run_end``) receive an object with these attributes; the engine's
``trainer.Run`` is the one implementation. Plugins depend on this protocol, never on the engine module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from robust_distill.config import Config
    from robust_distill.core.components import LRSchedule, Part
    from robust_distill.core.manager import Registries
    from robust_distill.data.memory import DataSplits
    from robust_distill.engine.distributed import DistContext

__all__ = ["RunContext"]


@runtime_checkable
class RunContext(Protocol):
    """A training run, as plugins see it.

    :ivar config: the resolved :class:`~robust_distill.config.Config` (read-only).
    :ivar registries: the run's :class:`~robust_distill.core.manager.Registries` (build parts from these, never from
        the process-global ones).
    :ivar student: the bare student module (not DDP-wrapped), on ``device``.
    :ivar student_spec: what a checkpoint stores to rebuild the student (``{"key", "kwargs", "num_classes",
        "input_shape", "dataset"}``); save it as ``"model"`` next to a ``state_dict`` to make a file that
        ``checkpoint:`` teachers and ``robust-distill eval`` load.
    :ivar teachers: role -> teacher module; a teacher updater's ``setup`` may add or replace entries.
    :ivar device: where the models live; ``memory_format`` the layout of their inputs.
    :ivar dist: rank, world size and the collectives (:class:`~robust_distill.engine.distributed.DistContext`).
    :ivar output_dir: the run's folder (config, metrics, checkpoints); write into it on ``dist.is_main`` only,
        with the atomic writers.
    :ivar data: the :class:`~robust_distill.data.memory.DataSplits` (``info``, ``train_batches``, ``eval_set``;
        in memory or streamed from files).
    :ivar lr_schedule: the student's schedule, ``epoch (fractional) -> lr multiplier``.
    :ivar scaler: the student's ``torch.amp.GradScaler`` (enabled under fp16 mixed precision); a network
        trained by an updater takes it to scale its own loss the same way (see
        :class:`~robust_distill.engine.trained.TrainedModel`).
    :ivar epoch: the number of finished epochs.
    """

    config: Config
    registries: Registries
    student: nn.Module
    student_spec: Mapping[str, Any]
    teachers: dict[str, nn.Module]
    device: torch.device
    memory_format: torch.memory_format
    dist: DistContext
    output_dir: Path
    data: DataSplits
    lr_schedule: LRSchedule
    scaler: torch.amp.GradScaler
    epoch: int

    def build_student(self, part: Part) -> nn.Module:
        """A freshly initialised network from a student spec (``Part("timm:resnet18_cifar")``), for this run's
        dataset, on ``device`` in ``memory_format`` (a peer, an EMA copy of another architecture, ...)."""
        ...

    def load_teacher(self, part: Part) -> nn.Module:
        """A frozen teacher (eval mode, no gradients) from a teacher spec, on ``device``."""
        ...
