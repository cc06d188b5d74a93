"""A dataset plugin's bundle split for training: the held-out validation set, and a split's images in memory.

The one place that knows both kinds of bundle: a :class:`~robust_distill.core.components.DataBundle` gives
in-memory :class:`~robust_distill.data.memory.Splits`, a :class:`~robust_distill.core.components.StreamedBundle`
gives :class:`~robust_distill.data.streaming.StreamedSplits`.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor

from robust_distill.core.components import DataBundle, StreamedBundle
from robust_distill.data.memory import DataSplits, Splits
from robust_distill.data.streaming import StreamedEvalSet, StreamedSplits, spread_subset

__all__ = ["flip_labels", "make_splits", "split_images"]


def make_splits(bundle: DataBundle | StreamedBundle, *, val_size: int, split_seed: int = 0,
                train_subset: int | None = None, label_noise: float = 0.0, workers: int = 0,
                prefetch_factor: int = 2, pin_memory: bool = False) -> DataSplits:
    """Hold out ``val_size`` training images (a fixed permutation by ``split_seed``) for validation.

    A :class:`DataBundle` gives :class:`Splits` (``train_subset``: the first N training images); a
    :class:`StreamedBundle` gives :class:`~robust_distill.data.streaming.StreamedSplits` read by ``workers``
    ``DataLoader`` processes (``train_subset``: N images spread over the training split, since image
    folders list their files class by class).

    ``label_noise``: the fraction of the training images (after the subset) whose label is replaced by another
    class (:func:`flip_labels`, fixed by ``split_seed`` like the validation split, so every run seed trains on the
    same labels); validation and test labels stay clean. The changed positions are ``splits.train_noisy``.
    """
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"data.label_noise must be in [0, 1) (the fraction of training labels changed), "
                         f"got {label_noise!r}.")
    streamed = isinstance(bundle, StreamedBundle)
    n = len(bundle.train) if streamed else bundle.train_x.shape[0]
    if val_size >= n:
        raise ValueError(f"data.val_size={val_size} leaves no training data (the training split has {n}).")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    if streamed:
        train_idx = spread_subset(train_idx, train_subset, split_seed)
        noisy = None
        if label_noise > 0:
            labels = bundle.train.labels.clone()
            labels[train_idx], noisy = flip_labels(labels[train_idx], label_noise, bundle.info.num_classes,
                                                   seed=split_seed)
            relabelled = copy.copy(bundle.train)
            relabelled.labels = labels
            bundle = dataclasses.replace(bundle, train=relabelled)
        return StreamedSplits(bundle, train_idx, val_idx, workers=workers, prefetch_factor=prefetch_factor,
                              pin_memory=pin_memory, eval_seed=split_seed, train_noisy=noisy)
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    train_y, noisy = bundle.train_y[train_idx], None
    if label_noise > 0:
        train_y, noisy = flip_labels(train_y, label_noise, bundle.info.num_classes, seed=split_seed)
    return Splits(bundle.info, bundle.train_x[train_idx], train_y, bundle.train_x[val_idx],
                  bundle.train_y[val_idx], bundle.test_x, bundle.test_y, train_idx, bundle.crop_padding,
                  bundle.flip, val_idx, noisy)


def flip_labels(labels: Tensor, rate: float, num_classes: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Symmetric label noise: exactly ``round(rate * n)`` of the ``n`` labels, chosen at random, each replaced by
    a class drawn uniformly from the ``num_classes - 1`` others (Dong et al. 2022, "Label noise in adversarial
    training", Sec. 4: noisy labels make robust overfitting appear and grow). ``seed`` fixes the choice.

    Returns ``(noisy labels, changed)``, ``changed`` a boolean mask of the labels replaced.
    """
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={num_classes}.")
    n = labels.numel()
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(n, generator=g)[:round(rate * n)]
    shift = torch.randint(1, num_classes, (chosen.numel(),), generator=g)  # (y + shift) mod C: never y itself
    noisy, changed = labels.clone(), torch.zeros(n, dtype=torch.bool)
    noisy[chosen] = (labels[chosen] + shift.to(labels.dtype)) % num_classes
    changed[chosen] = True
    return noisy, changed


def split_images(bundle: DataBundle | StreamedBundle, split: str, indices: Tensor | None = None,
                 n: int | None = None, workers: int = 0) -> tuple[Tensor, Tensor]:
    """Images of a bundle's ``train`` or ``test`` split in memory (no augmentation): those at ``indices``,
    else the first ``n`` (for a streamed bundle: ``n`` spread over the split, in dataset order)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(bundle, StreamedBundle):
        images = bundle.train if split == "train" else bundle.test
        idx = indices if indices is not None else spread_subset(torch.arange(len(images)), n)
        return StreamedEvalSet(images, bundle.transform, idx, workers=workers).tensors()
    x, y = (bundle.train_x, bundle.train_y) if split == "train" else (bundle.test_x, bundle.test_y)
    return (x[indices], y[indices]) if indices is not None else (x[:n], y[:n])
