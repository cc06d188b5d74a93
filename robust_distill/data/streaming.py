"""Streamed image data: files decoded by ``DataLoader`` workers, with the in-memory path's guarantees.

For datasets too big for memory (Tiny-ImageNet, ImageNet, a user's own image folders), a dataset plugin
returns a :class:`~robust_distill.core.components.StreamedBundle` (an :class:`ImageList` per split and an
:class:`ImageTransform`) instead of a :class:`~robust_distill.core.components.DataBundle`; the engine then
trains from :class:`StreamedSplits`. The guarantees are those of the in-memory path:

* every epoch's order comes from :func:`~robust_distill.data.memory.epoch_batches` and depends only on
  ``(seed, epoch)``; under ``torchrun`` each rank reads its share of every global batch (the same
  ``DistributedSampler``-like rule), so 2 processes see the global batches of 1;
* every sample's augmentation is drawn from its own generator, seeded by ``(seed, epoch, sample index)``
  (:func:`sample_rng`), so neither the number of workers nor the number of processes changes a single
  pixel, and a run resumed at an epoch boundary equals an uninterrupted one;
* the validation split is held out by the same fixed permutation as in memory.

Workers return uint8 tensors (4x less to pin and copy than float); the conversion to [0, 1] floats
happens on the training device. Augmentation runs per sample in the workers, where the image is
decoded anyway: a random-resized crop has to produce fixed-size tensors before they can be batched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from robust_distill.errors import UnreadableImageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

from robust_distill.core.components import DatasetInfo, StreamedBundle
from robust_distill.data.memory import epoch_batches, to_float

__all__ = ["IMG_EXTENSIONS", "ImageList", "read_image", "ImageTransform", "CropFlip", "RandomResizedCropFlip",
           "UnreadableImageError", "StreamedSplits", "StreamedEvalSet", "SampleRandom", "sample_rng",
           "scan_class_folders", "spread_subset", "default_workers", "decode_all"]

#: File endings read as images (case-insensitive), as torchvision's ``ImageFolder``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SEED_MASK = 2**63 - 1


def default_workers() -> int:
    """``data.workers: null``: 4 worker processes, or fewer on machines with fewer cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return max(0, min(4, cores))


# -------------------------------------------------------------------------------------------------
# Files
# -------------------------------------------------------------------------------------------------


class ImageList:
    """Image files (relative to ``root``) and their integer labels; ``load(i)`` decodes file ``i``.

    The paths are kept in one bytes object plus an offset array rather than a list of strings, so that
    forked ``DataLoader`` workers do not copy them page by page (reference counting touches every list
    item; ImageNet has 1.28M of them).

    :param mode: the PIL mode images are converted to: ``RGB`` (3 channels) or ``L`` (1 channel).
    """

    def __init__(self, root: str | os.PathLike[str], files: Sequence[str], labels: Sequence[int] | Tensor,
                 mode: str = "RGB") -> None:
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.root, self.mode = str(root), mode
        encoded = [f.encode() for f in files]
        self._blob = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self.labels = torch.as_tensor(labels, dtype=torch.int64).clone()

    def __len__(self) -> int:
        return self.labels.numel()

    def path(self, i: int) -> str:
        """The file of image ``i``."""
        return os.path.join(self.root, self._blob[self._offsets[i]:self._offsets[i + 1]].decode())

    def load(self, i: int) -> PILImage.Image:
        """Decode image ``i``, converted to :attr:`mode`; an unreadable file raises an error naming it."""
        return read_image(self.path(i), self.mode)


def read_image(path: str, mode: str | None = None) -> PILImage.Image:
    """Decode an image file (converted to ``mode`` unless ``None``); :class:`UnreadableImageError` names a
    file Pillow cannot read."""
    from PIL import Image  # Pillow and torchvision load when a file is decoded: ~0.4 s most runs never spend

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode) if mode else img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(
            f"Cannot read image {path} ({type(exc).__name__}: {exc}). Replace or delete the file "
            "(any image format Pillow reads works).") from None


def scan_class_folders(split_dir: str | os.PathLike[str], classes: Sequence[str] | None = None,
                       subfolder: str = "") -> tuple[list[str], list[int], list[str]]:
    """``split_dir/<class>/[subfolder/]*.<image>`` -> (files relative to ``split_dir``, labels, classes).

    Classes are the sorted folder names (torchvision's ``ImageFolder`` order) unless ``classes`` fixes
    them (the test split uses the training split's classes). Raises a ``ValueError`` naming the folder when
    a class folder holds no image or a test class is not a training class.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"Image folder {str(split_dir)!r} does not exist.")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise ValueError(f"{str(split_dir)!r} has no class folders: expected {split_dir}/<class>/<image>.png "
                         f"(images with endings {', '.join(IMG_EXTENSIONS)}).")
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in set(classes)]
        if unknown:
            raise ValueError(f"{str(split_dir)!r} has class folders that the training split lacks: "
                             f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}.")
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for name in found:
        folder = split_dir / name / subfolder if subfolder else split_dir / name
        images = sorted(e.name for e in os.scandir(folder) if e.is_file()
                        and e.name.lower().endswith(IMG_EXTENSIONS)) if folder.is_dir() else []
        if not images:
            raise ValueError(f"Class folder {str(folder)!r} holds no image (endings {', '.join(IMG_EXTENSIONS)}): "
                             "add images or remove the folder.")
        prefix = f"{name}/{subfolder}/" if subfolder else f"{name}/"
        files += [prefix + f for f in images]
        labels += [index[name]] * len(images)
    return files, labels, list(classes)


# -------------------------------------------------------------------------------------------------
# Per-sample transforms
# -------------------------------------------------------------------------------------------------


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class SampleRandom:
    """A counter-based generator (SplitMix64) keyed by ``(seed, epoch, sample index)``: the k-th number it
    draws is a fixed function of the key and k, whichever process draws it. A few microseconds to create,
    where ``numpy.random.default_rng`` takes about a hundred (it runs for every image of every epoch)."""

    def __init__(self, seed: int, epoch: int, index: int) -> None:
        key = _splitmix64((seed & _MASK64) ^ _GOLDEN)
        key = _splitmix64(key ^ ((epoch * _GOLDEN) & _MASK64))
        self._state = _splitmix64(key ^ ((index * 0xC2B2AE3D27D4EB4F) & _MASK64))

    def _next(self) -> int:
        self._state = (self._state + _GOLDEN) & _MASK64
        return _splitmix64(self._state)

    def random(self) -> float:
        """Uniform in [0, 1), 53 bits."""
        return (self._next() >> 11) * (1.0 / (1 << 53))

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def integers(self, low: int, high: int) -> int:
        """Uniform integer in [low, high) (multiply-shift: bias below 2^-50 for the ranges used here)."""
        return low + ((self._next() * (high - low)) >> 64)


def sample_rng(seed: int, epoch: int, index: int) -> SampleRandom:
    """The generator of one sample's augmentation: a function of ``(seed, epoch, sample index)`` only."""
    return SampleRandom(seed, epoch, index)


def _to_tensor(img: PILImage.Image | np.ndarray) -> Tensor:
    """PIL image or (H, W[, C]) uint8 array -> uint8 tensor (C, H, W), transposed by numpy (a single-threaded
    copy: 40x faster than a multi-threaded ``permute().contiguous()`` on a busy machine)."""
    a = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(np.array(a[None] if a.ndim == 2 else a.transpose(2, 0, 1), order="C"))


def _interpolation(name: str) -> Any:
    from torchvision.transforms import InterpolationMode  # torchvision: loaded when a transform is built

    try:
        return InterpolationMode(name)
    except ValueError:
        raise ValueError(f"interpolation must be 'bilinear', 'bicubic' or 'nearest', got {name!r}") from None


class ImageTransform:
    """Decoded image -> uint8 tensor ``(C, *size)``: ``train(img, rng)`` augments, ``eval(img)`` does not.

    Every random number of ``train`` comes from ``rng`` (see :func:`sample_rng`).
    """

    size: tuple[int, int] = (0, 0)  # (H, W) of the tensors produced

    def train(self, img: PILImage.Image, rng: SampleRandom) -> Tensor:
        """A training sample: the image augmented with ``rng`` (one per sample and epoch), as a uint8 CHW tensor."""
        raise NotImplementedError

    def eval(self, img: PILImage.Image) -> Tensor:
        """An evaluation sample: the image without augmentation, as a uint8 CHW tensor."""
        raise NotImplementedError


class CropFlip(ImageTransform):
    """Random crop of the zero-padded image plus a random horizontal flip (torchvision's
    ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``, as the CIFAR and Tiny-ImageNet ARD codes).

    Images of another size are first resized to cover ``size`` (keeping their aspect ratio), then centre
    cropped, in training and evaluation alike; Tiny-ImageNet's 64x64 images are used as they are.
    """

    def __init__(self, size: int | Sequence[int], padding: int = 4, flip: bool = True,
                 interpolation: str = "bilinear") -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.padding, self.flip, self.interpolation = int(padding), bool(flip), _interpolation(interpolation)

    def _fit(self, img: PILImage.Image) -> np.ndarray:
        import torchvision.transforms.functional as TF  # loaded when the first image is transformed

        h, w = self.size
        if (img.height, img.width) != (h, w):
            scale = max(h / img.height, w / img.width)
            cover = [max(h, round(img.height * scale)), max(w, round(img.width * scale))]
            img = TF.center_crop(TF.resize(img, cover, interpolation=self.interpolation, antialias=True), [h, w])
        return np.asarray(img, dtype=np.uint8)

    def eval(self, img: PILImage.Image) -> Tensor:
        """The image resized to cover ``size`` and centre-cropped to it, without augmentation."""
        return _to_tensor(self._fit(img))

    def train(self, img: PILImage.Image, rng: SampleRandom) -> Tensor:
        """The image fitted to ``size`` (as :meth:`eval`), padded, randomly cropped back and flipped (``rng``)."""
        a = self._fit(img)
        p = self.padding
        if p > 0:  # the (H, W) window at offset (oy, ox) of the zero-padded image, without padding it
            h, w = self.size
            oy, ox = rng.integers(0, 2 * p + 1) - p, rng.integers(0, 2 * p + 1) - p
            out = np.zeros_like(a)
            out[max(0, -oy):h - max(0, oy), max(0, -ox):w - max(0, ox)] = \
                a[max(0, oy):h - max(0, -oy), max(0, ox):w - max(0, -ox)]
            a = out
        if self.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        return _to_tensor(a)


class RandomResizedCropFlip(ImageTransform):
    """ImageNet training augmentation: torchvision's ``RandomResizedCrop(size, scale, ratio)`` +
    ``RandomHorizontalFlip()``, its crop parameters drawn from ``rng`` by the same algorithm.

    Evaluation: resize (the shorter side to ``eval_resize``; an ``[h, w]`` pair resizes to exactly that;
    ``None`` skips it), then a centre crop of ``size``: RobustBench's ``Res256Crop224`` is
    ``size=224, eval_resize=256``.
    """

    def __init__(self, size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                 eval_resize: int | Sequence[int] | None = 256, interpolation: str = "bilinear") -> None:
        self.size = (size, size)
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.flip, self.interpolation = bool(flip), _interpolation(interpolation)
        self.eval_resize = eval_resize if eval_resize is None or isinstance(eval_resize, int) else list(eval_resize)

    def crop_params(self, height: int, width: int, rng: SampleRandom) -> tuple[int, int, int, int]:
        """``(top, left, h, w)``: ``torchvision.transforms.RandomResizedCrop.get_params`` with ``rng``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
        in_ratio = width / height  # fallback: the central crop of the closest allowed aspect ratio
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def train(self, img: PILImage.Image, rng: SampleRandom) -> Tensor:
        """A random-resized crop (scale and ratio drawn from ``rng``) resized to ``size``, flipped at random."""
        import torchvision.transforms.functional as TF  # loaded when the first image is transformed

        top, left, h, w = self.crop_params(img.height, img.width, rng)
        a = np.asarray(TF.resized_crop(img, top, left, h, w, list(self.size), interpolation=self.interpolation,
                                       antialias=True), dtype=np.uint8)
        if self.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        return _to_tensor(a)

    def eval(self, img: PILImage.Image) -> Tensor:
        """The preprocessing of evaluation: resize, then a central crop to ``size``."""
        import torchvision.transforms.functional as TF  # loaded when the first image is transformed

        if self.eval_resize is not None:
            img = TF.resize(img, self.eval_resize, interpolation=self.interpolation, antialias=True)
        return _to_tensor(TF.center_crop(img, list(self.size)))


# -------------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------------


class _Decoded(Dataset):
    """What a worker does per sample: decode, then augment with the sample's own generator (or not)."""

    def __init__(self, images: ImageList, transform: ImageTransform, *, augment: bool, seed: int = 0,
                 epoch: int = 0) -> None:
        self.images, self.transform, self.augment, self.seed, self.epoch = images, transform, augment, seed, epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images.load(i)
        x = (self.transform.train(img, sample_rng(self.seed, self.epoch, i)) if self.augment
             else self.transform.eval(img))
        return x, int(self.images.labels[i])


def _stack(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)


def _loader(dataset: _Decoded, batches: list[list[int]], *, workers: int, prefetch_factor: int,
            pin_memory: bool) -> DataLoader:
    """A loader over explicit batches of dataset indices (order fixed by the caller, never by the loader)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_stack,
                      pin_memory=pin_memory, prefetch_factor=prefetch_factor if workers > 0 else None,
                      generator=torch.Generator().manual_seed(0))  # the global RNG stays untouched


def _chunks(indices: Tensor, size: int) -> list[list[int]]:
    flat = indices.tolist()
    return [flat[s:s + size] for s in range(0, len(flat), size)]


def spread_subset(pool: Tensor, n: int | None, seed: int = 0) -> Tensor:
    """``n`` of the indices in ``pool``, spread over it (a fixed random choice), in ``pool``'s order.

    Image folders list their files class by class, so "the first n" would be a few classes only.
    """
    if n is None or n >= pool.numel():
        return pool
    keep = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return pool[keep]


class StreamedEvalSet:
    """Images read for evaluation (no augmentation), in the order of ``indices``.

    ``batches(size, chunks)`` yields ``(uint8 x, y)`` CPU batches; a request above :attr:`chunk` images (an
    attack that wants the whole set at once) gets batches of :attr:`chunk` images instead.
    """

    chunk = 1024

    def __init__(self, images: ImageList, transform: ImageTransform, indices: Tensor, *, workers: int = 0,
                 prefetch_factor: int = 2, pin_memory: bool = False) -> None:
        self.images, self.transform, self.indices = images, transform, indices
        self.workers, self.prefetch_factor, self.pin_memory = workers, prefetch_factor, pin_memory

    @property
    def n(self) -> int:
        return self.indices.numel()

    @property
    def labels(self) -> Tensor:
        return self.images.labels[self.indices]

    def batches(self, size: int, chunks: Sequence[int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        dataset = _Decoded(self.images, self.transform, augment=False)
        every = _chunks(self.indices, max(1, min(size, self.chunk)))
        yield from _loader(dataset, every if chunks is None else [every[k] for k in chunks],
                           workers=self.workers, prefetch_factor=self.prefetch_factor, pin_memory=self.pin_memory)

    def tensors(self, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """Every image of the set in memory: ``(uint8 x, y)``."""
        parts = list(self.batches(batch_size))
        if not parts:
            return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def decode_all(images: ImageList, transform: ImageTransform, workers: int | None = None) -> tuple[Tensor, Tensor]:
    """A whole split decoded into memory (uint8 NCHW, int64 labels), with ``workers`` processes."""
    workers = default_workers() if workers is None else workers
    return StreamedEvalSet(images, transform, torch.arange(len(images)), workers=workers).tensors()


class StreamedSplits:
    """Train / validation / test splits read from files: what the engine trains from for a
    :class:`~robust_distill.core.components.StreamedBundle` (the in-memory counterpart is
    :class:`robust_distill.data.memory.Splits`; both offer ``train_batches`` and ``eval_set``).

    :param train_index: positions (in the dataset's training split) of the training images.
    :param val_index: positions of the held-out validation images.
    :param workers: ``DataLoader`` worker processes (``0``: decode in the training process).
    :param train_noisy: which training labels ``bundle.train`` carries changed by label noise (a boolean mask
        over ``train_index``), for the record.
    """

    def __init__(self, bundle: StreamedBundle, train_index: Tensor, val_index: Tensor, *, workers: int = 0,
                 prefetch_factor: int = 2, pin_memory: bool = False, eval_seed: int = 0,
                 train_noisy: Tensor | None = None) -> None:
        self.bundle = bundle
        self.info: DatasetInfo = bundle.info
        self.train_index, self.val_index = train_index, val_index
        self.workers, self.prefetch_factor, self.pin_memory = workers, prefetch_factor, pin_memory
        self.eval_seed = eval_seed
        self.train_noisy = train_noisy  # the training labels data.label_noise changed (boolean mask), if any

    @property
    def n_train(self) -> int:
        return self.train_index.numel()

    @property
    def train_labels(self) -> Tensor:
        return self.bundle.train.labels[self.train_index]

    def train_batches(self, epoch: int, *, batch_size: int, seed: int, device: torch.device | str,
                      augment: bool = True, rank: int = 0, world_size: int = 1,
                      shuffle: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's share of every batch of one epoch: ``(x in [0, 1] float on device, y on device)``.

        The order is :func:`~robust_distill.data.memory.epoch_batches`' (``shuffle=False``: the training images
        in order, every one of them on every rank); the augmentation of image ``i`` is drawn from
        ``sample_rng(seed, epoch, i)``.
        """
        n = self.n_train
        if shuffle:
            positions = list(epoch_batches(n, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world_size))
        else:
            positions = list(torch.arange(n).split(batch_size))
        batches = [self.train_index[p].tolist() for p in positions]
        dataset = _Decoded(self.bundle.train, self.bundle.transform, augment=augment, seed=seed, epoch=epoch)
        for xb, yb in _loader(dataset, batches, workers=self.workers, prefetch_factor=self.prefetch_factor,
                              pin_memory=self.pin_memory):
            yield to_float(xb, device), yb.to(device, non_blocking=True)

    def eval_set(self, split: str, n: int | None) -> StreamedEvalSet:
        """``n`` images of ``train`` / ``val`` / ``test`` (all of them for ``None``), without augmentation.

        A fixed random subset spread over the split (:func:`spread_subset`), listed in dataset order.
        """
        if split == "test":
            images, pool = self.bundle.test, torch.arange(len(self.bundle.test))
        elif split in ("val", "train"):
            images, pool = self.bundle.train, self.val_index if split == "val" else self.train_index.sort().values
        else:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return StreamedEvalSet(images, self.bundle.transform, spread_subset(pool, n, self.eval_seed),
                               workers=self.workers, prefetch_factor=self.prefetch_factor,
                               pin_memory=self.pin_memory)
