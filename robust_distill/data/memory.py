"""Data the engine trains from: the validation split, deterministic (and DDP-shardable) batches,
batch augmentation, evaluation sets.

Two kinds of splits offer one interface (``n_train``, ``train_index``, ``train_labels``,
``train_batches(epoch, ...)``, ``eval_set(split, n)``), so the engine never asks which kind it has:

* :class:`Splits`: a :class:`~robust_distill.core.components.DataBundle` held in memory (CIFAR, Fashion-MNIST),
  augmented batch-wise on the training device (3-40x faster than ``DataLoader`` + PIL at that size,
  ``benchmarks/bench_data_pipeline.py``);
* :class:`~robust_distill.data.streaming.StreamedSplits`: a :class:`~robust_distill.core.components.StreamedBundle`
  read from image files by ``DataLoader`` workers (Tiny-ImageNet, ImageNet, image folders).

:func:`robust_distill.data.splits.make_splits` picks the one that fits the bundle a dataset plugin returns.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from robust_distill.core.components import DatasetInfo

__all__ = ["DataSplits", "Splits", "EvalSet", "TensorEvalSet", "dataset_info", "to_device", "to_float", "augment",
           "epoch_batches", "iterate_eval", "place_data"]


class EvalSet(Protocol):
    """Images to evaluate on, in a fixed order: ``n`` of them, their ``labels`` and dataset ``indices``;
    ``batches(size, chunks)`` yields ``(x, y)`` CPU batches (uint8 or float images): the consecutive chunks of
    ``size`` images in that order, or only the chunks numbered in ``chunks`` (each process of a sharded
    evaluation reads its own)."""

    @property
    def n(self) -> int: ...

    @property
    def labels(self) -> Tensor: ...

    indices: Tensor

    def batches(self, size: int, chunks: Sequence[int] | None = None) -> Iterator[tuple[Tensor, Tensor]]: ...


class DataSplits(Protocol):
    """What the engine trains and evaluates from, in memory (:class:`Splits`) or streamed from files
    (:class:`~robust_distill.data.streaming.StreamedSplits`)."""

    info: DatasetInfo
    train_index: Tensor  # position of each training image in the dataset's training split
    train_noisy: Tensor | None  # training labels changed by data.label_noise (boolean mask), or None

    @property
    def n_train(self) -> int: ...

    @property
    def train_labels(self) -> Tensor: ...

    def train_batches(self, epoch: int, *, batch_size: int, seed: int, device: torch.device | str,
                      augment: bool = True, rank: int = 0, world_size: int = 1,
                      shuffle: bool = True) -> Iterator[tuple[Tensor, Tensor]]: ...

    def eval_set(self, split: str, n: int | None) -> EvalSet: ...


@dataclass
class TensorEvalSet:
    """An :class:`EvalSet` of tensors in memory (``indices``: positions in the dataset's split)."""

    x: Tensor
    y: Tensor
    indices: Tensor

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def labels(self) -> Tensor:
        return self.y

    def batches(self, size: int, chunks: Sequence[int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        size = max(1, size)
        for k in range(-(-self.n // size)) if chunks is None else chunks:
            yield self.x[k * size:(k + 1) * size], self.y[k * size:(k + 1) * size]


@dataclass
class Splits:
    """Train / validation / test tensors held in memory (uint8 or float NCHW images, int64 labels)."""

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_index: Tensor  # position of each training image in the dataset's own training split
    crop_padding: int
    flip: bool
    val_index: Tensor | None = None  # position of each validation image in the training split
    train_noisy: Tensor | None = None  # training labels changed by data.label_noise (boolean mask), if any

    @property
    def n_train(self) -> int:
        return self.train_x.shape[0]

    @property
    def train_labels(self) -> Tensor:
        return self.train_y

    def train_batches(self, epoch: int, *, batch_size: int, seed: int, device: torch.device | str,
                      augment: bool = True, rank: int = 0, world_size: int = 1,
                      shuffle: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of every batch of one epoch: ``(x in [0, 1] float on device, y on device)``.

        The order is :func:`epoch_batches`' (``shuffle=False``: the training images in order, all of them);
        the crop and flip (:func:`augment`) are drawn from the global CPU generator, which the engine seeds
        with ``(seed, epoch)`` at the start of every epoch.
        """
        n = self.n_train
        batches = (epoch_batches(n, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
                   if shuffle else torch.arange(n).split(batch_size))
        for idx in batches:
            idx = to_device(idx, self.train_x.device)  # the data may live on the GPU (place_data)
            x = to_float(self.train_x[idx], device)
            if augment:
                x = _batch_augment(x, self.crop_padding, self.flip)
            yield x, to_device(self.train_y[idx], device)

    def eval_set(self, split: str, n: int | None) -> TensorEvalSet:
        """The first ``n`` images of ``train`` / ``val`` / ``test`` (all of them for ``None``)."""
        if split == "train":
            x, y, idx = self.train_x, self.train_y, self.train_index
        elif split == "val":
            idx = self.val_index if self.val_index is not None else torch.arange(self.val_x.shape[0])
            x, y = self.val_x, self.val_y
        elif split == "test":
            x, y, idx = self.test_x, self.test_y, torch.arange(self.test_x.shape[0])
        else:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return TensorEvalSet(x[:n], y[:n], idx[:n])


def dataset_info(dataset: Any, root: str | None, options: dict[str, Any], registries: Any = None) -> DatasetInfo:
    """``dataset.info(...)``, with ``root`` for loaders whose info depends on the files (image folders), called
    through ``registries.call`` (the run's registries for a dataset that names them) when given."""
    params = inspect.signature(dataset.info).parameters.values()
    kwargs = dict(options)
    if any(p.name == "root" or p.kind is p.VAR_KEYWORD for p in params):
        kwargs["root"] = root
    return registries.call(dataset.info, **kwargs) if registries is not None else dataset.info(**kwargs)


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``; a host -> GPU copy goes through pinned memory with ``non_blocking=True``.

    A plain ``.to("cuda")`` of pageable host memory synchronises the host with the GPU; the pinned,
    non-blocking copy is queued on the stream and lets the host run ahead.
    """
    device = torch.device(device)
    if t.device == device or (device.type == t.device.type and device.index is None):
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_float(x: Tensor, device: torch.device | str) -> Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float32 in [0, 1] on ``device``."""
    x = to_device(x, device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def place_data(splits: DataSplits, device: torch.device, on_device: bool | str = "auto",
               max_fraction: float = 0.25) -> DataSplits:
    """Keep the whole in-memory dataset on the GPU (``on_device: true``, or ``auto`` when it takes at most
    ``max_fraction`` of the GPU's free memory): batches are then gathered on the GPU, with no host copy.

    On CPU, or when the data stays on the host, ``splits`` is returned unchanged (batches are copied through
    pinned memory, :func:`to_device`).
    """
    if device.type != "cuda" or on_device is False or not isinstance(splits, Splits):  # streamed: stays on disk
        return splits
    tensors = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
    if on_device == "auto":
        size = sum(getattr(splits, n).nelement() * getattr(splits, n).element_size() for n in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if size > max_fraction * free:
            return splits
    return dataclasses.replace(splits, **{n: getattr(splits, n).to(device) for n in tensors})


def augment(x: Tensor, padding: int, flip: bool) -> Tensor:
    """Random crop (zero padding ``padding``) and random horizontal flip, per sample, batch-wise.

    Same distribution as torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``;
    random numbers come from the global CPU generator, so runs are reproducible on any device.
    """
    b, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = to_device(torch.randint(0, 2 * padding + 1, (b,)), x.device)
        ox = to_device(torch.randint(0, 2 * padding + 1, (b,)), x.device)
        windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W), a view
        x = windows[torch.arange(b, device=x.device), :, oy, ox]  # copies only the chosen windows
    if flip:
        mask = to_device(torch.rand(b) < 0.5, x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x.contiguous()


_batch_augment = augment  # for methods whose ``augment`` flag shadows the function


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> Iterator[Tensor]:
    """Indices of this rank's share of each global batch of one epoch.

    The permutation depends only on ``(seed, epoch)``; each global batch of ``batch_size`` consecutive
    indices is split ``chunk[rank::world_size]`` across ranks (as ``DistributedSampler`` does), so a
    2-process run sees exactly the global batches of a 1-process run. The last batch may be smaller.
    """
    if batch_size % world_size:
        raise ValueError(f"data.batch_size={batch_size} must be divisible by the {world_size} processes.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if world_size > 1 and n % world_size:  # pad like DistributedSampler so every rank steps together
        perm = torch.cat([perm, perm[: world_size - n % world_size]])
    for start in range(0, perm.numel(), batch_size):
        yield perm[start:start + batch_size][rank::world_size]


def iterate_eval(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(start, x, y)`` batches of ``batch_size`` in order (the last may be smaller): an evaluation pass."""
    for start in range(0, x.shape[0], batch_size):
        yield start, x[start:start + batch_size], y[start:start + batch_size]
