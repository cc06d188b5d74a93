"""``torchrun`` support: process group set-up from the environment, and the few collectives we need."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from robust_distill.engine.processes import die_with_parent

__all__ = ["DistContext", "init_distributed", "resolve_device", "all_reduce_sum", "all_reduce_mean", "global_mean",
           "sync_gradients", "broadcast_buffers", "average_buffers", "clone_state", "rank_and_world",
           "all_reduce_tensor"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over the ``torchrun`` processes (the values themselves outside torchrun)."""
    if not _active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return tuple(t.tolist())


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside ``torchrun``."""
    if not _active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ``torchrun`` processes (a new tensor on ``t``'s device; ``t`` outside torchrun)."""
    if not _active():
        return t
    buf = t.to(_collective_device())
    dist.all_reduce(buf)
    return buf.to(t.device)


def all_reduce_mean(*values: float) -> tuple[float, ...]:
    """Each value averaged over the ``torchrun`` processes."""
    if not _active():
        return values
    return tuple(v / dist.get_world_size() for v in all_reduce_sum(*values))


def global_mean(local_sum: torch.Tensor, local_count: float) -> tuple[torch.Tensor, float, float]:
    """A mean over rows selected on every process (a masked mean), with the single-process gradient.

    ``local_sum`` is this process's differentiable sum over its selected rows, ``local_count`` their
    number. Returns ``(share, mean, count)``: ``mean`` and ``count`` over all processes (plain numbers), and
    this process's ``share`` of the mean, scaled so that DDP's average of the processes' gradients equals
    the gradient of the global mean (``share == mean`` outside torchrun). ``count == 0`` gives ``mean`` nan.
    """
    count, total = all_reduce_sum(float(local_count), local_sum.item())
    world = dist.get_world_size() if _active() else 1
    if count == 0:
        return local_sum * 0.0, math.nan, 0.0
    return local_sum * (world / count), total / count, count


def sync_gradients(module: Any) -> None:
    """Average ``module``'s gradients over the processes (DDP only does it for the student)."""
    if not _active():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())


def broadcast_buffers(module: Any) -> None:
    """Rank 0's buffers (BN running statistics) on every process, as DDP's ``broadcast_buffers`` does."""
    if not _active():
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)


def average_buffers(module: Any) -> None:
    """Make ``module``'s buffers identical on every process: floating-point ones (BatchNorm running mean and
    variance) averaged, the others (``num_batches_tracked``) rank 0's.

    Under DDP each process updates its BatchNorm statistics with its own share of the batch (DDP's
    ``broadcast_buffers`` copies rank 0's at each forward, but the attacks run the bare module, and the last
    update of an epoch stays rank-local). Called at every epoch end, before evaluation and checkpoints, so the
    saved statistics are the ones every rank continues with: this is what makes a resumed run equal an
    uninterrupted one. timm's train.py does the same (``distribute_bn``, ``--dist-bn reduce``, its default).
    """
    if not _active():
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(dist.get_world_size())
        else:
            dist.broadcast(b, src=0)


def clone_state(module: Any) -> dict[str, torch.Tensor]:
    """A detached copy of ``module.state_dict()`` (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` if CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # more processes than GPUs (tests on one GPU, RD_DIST_BACKEND=gloo) share them
        name = f"cuda:{local_rank % max(torch.cuda.device_count(), 1)}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was requested but CUDA is not available; use device: cpu.")
    return torch.device(name)


@dataclass
class DistContext:
    """Rank information; ``world_size == 1`` outside ``torchrun``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_mean(self, value: float) -> float:
        return all_reduce_mean(value)[0]

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> DistContext:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ...).

    ``nccl`` on CUDA, ``gloo`` on CPU; ``RD_DIST_BACKEND`` overrides it (``gloo`` runs several processes on
    one GPU, which NCCL refuses: the CUDA tests of sharded evaluation do that).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(rank, world, local_rank, owns_group=False)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: stop if the launcher dies (see _proc)
        die_with_parent()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = os.environ.get("RD_DIST_BACKEND") or ("nccl" if use_cuda else "gloo")  # gloo: several ranks per GPU
    dist.init_process_group(backend=backend)
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return DistContext(rank, world, local_rank, owns_group=True)
