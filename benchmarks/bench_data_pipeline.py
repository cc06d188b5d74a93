"""Augmented-batch throughput: robust-distill's in-memory batch augmentation against the research codes'
``DataLoader`` + torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` on PIL
images (RSLAD, AdaAD, MTARD, CIARD, ...), on CIFAR-shaped data, as a ratio measured in the same run.

Usage: python benchmarks/bench_data_pipeline.py [--images 10000] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from robust_distill.data.memory import augment, epoch_batches, to_float


class PILDataset(Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: uint8 HWC array -> PIL -> transforms."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, transform: T.Compose) -> None:
        self.data, self.labels, self.transform = data, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.data[i])), int(self.labels[i])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    x_nchw = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)

    def ours() -> None:
        for idx in epoch_batches(args.images, 128, seed=0, epoch=0):
            augment(to_float(x_nchw[idx], "cpu"), padding=4, flip=True), y[idx]

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    results = {"robust-distill (in-memory, batch-wise)": ours}
    for w in args.workers:
        loader = DataLoader(PILDataset(data, labels, transform), batch_size=128, shuffle=True, num_workers=w)
        results[f"DataLoader + torchvision PIL transforms, {w} workers"] = lambda loader=loader: [b for b in loader]
    times = {}
    for name, fn in results.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t0
    base = times["robust-distill (in-memory, batch-wise)"]
    print(f"One epoch of {args.images} augmented 32x32 images, batch 128, {torch.get_num_threads()} threads")
    print("| pipeline | s / epoch | images / s | time ratio to robust-distill |\n|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {args.images / t:,.0f} | {t / base:.1f} |")


if __name__ == "__main__":
    main()
