"""In-memory data: the validation split, deterministic (and DDP-shardable) batches, batch augmentation."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .components import DataBundle, DatasetInfo

__all__ = ["Splits", "make_splits", "to_device", "to_float", "augment", "epoch_batches", "iterate_eval",
           "place_data"]


@dataclass
class Splits:
    """Train / validation / test tensors (uint8 or float NCHW images, int64 labels)."""

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

    def eval_split(self, split: str, n: int | None) -> tuple[Tensor, Tensor]:
        x, y = (self.val_x, self.val_y) if split == "val" else (self.test_x, self.test_y)
        return (x, y) if n is None else (x[:n], y[:n])


def make_splits(bundle: DataBundle, *, val_size: int, split_seed: int = 0,
                train_subset: int | None = None) -> Splits:
    """Hold out ``val_size`` training images (a fixed permutation by ``split_seed``) for validation."""
    n = bundle.train_x.shape[0]
    if val_size >= n:
        raise ValueError(f"data.val_size={val_size} leaves no training data (the training split has {n}).")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return Splits(bundle.info, bundle.train_x[train_idx], bundle.train_y[train_idx], bundle.train_x[val_idx],
                  bundle.train_y[val_idx], bundle.test_x, bundle.test_y, train_idx, bundle.crop_padding,
                  bundle.flip)


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


def place_data(splits: Splits, device: torch.device, on_device: bool | str = "auto",
               max_fraction: float = 0.25) -> Splits:
    """Keep the whole in-memory dataset on the GPU (``on_device: true``, or ``auto`` when it takes at most
    ``max_fraction`` of the GPU's free memory): batches are then gathered on the GPU, with no host copy.

    On CPU, or when the data stays on the host, ``splits`` is returned unchanged (batches are copied through
    pinned memory, :func:`to_device`).
    """
    if device.type != "cuda" or on_device is False:
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
    for start in range(0, x.shape[0], batch_size):
        yield start, x[start:start + batch_size], y[start:start + batch_size]
