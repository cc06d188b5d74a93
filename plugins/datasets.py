"""Datasets: CIFAR-10/100 (torchvision), Fashion-MNIST (the Debian package's files) and a synthetic set."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import torch

from robust_distill import DataBundle, DatasetInfo, hookimpl

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DEFAULT_ROOT = "./data"


def _default_root() -> str:
    return os.environ.get("RD_DATA_ROOT", DEFAULT_ROOT)


class TorchvisionCIFAR:
    """CIFAR-10 or CIFAR-100 through torchvision (``RandomCrop(32, 4)`` + flip, as every ARD paper)."""

    downloads = True  # data.root is created by the download

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.name = f"cifar{num_classes}"

    def info(self, **_: Any) -> DatasetInfo:
        classes = CIFAR10_CLASSES if self.num_classes == 10 else ()
        return DatasetInfo(self.name, self.num_classes, (3, 32, 32), classes, train_size=50_000)

    def load(self, root: str | None = None, download: bool = True) -> DataBundle:
        import torchvision  # loaded when CIFAR is read (~0.4 s)

        cls = torchvision.datasets.CIFAR10 if self.num_classes == 10 else torchvision.datasets.CIFAR100
        root = root or _default_root()
        try:
            train, test = (cls(root, train=t, download=download) for t in (True, False))
        except Exception as exc:
            archive = "cifar-10-python.tar.gz" if self.num_classes == 10 else "cifar-100-python.tar.gz"
            raise RuntimeError(
                f"Could not load {self.name} from {root!r} ({type(exc).__name__}: {exc}). Without network "
                f"access, download {archive} elsewhere and place it (or its extracted folder) in {root!r}, "
                "or set data.root to the folder holding it.") from exc

        def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(ds.targets, dtype=torch.int64))

        (train_x, train_y), (test_x, test_y) = tensors(train), tensors(test)
        return DataBundle(self.info(), train_x, train_y, test_x, test_y, crop_padding=4, flip=True)


def _read_idx(path: Path) -> torch.Tensor:
    """Read an (optionally gzipped) IDX file (the MNIST format) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


class FashionMNIST:
    """Fashion-MNIST read from IDX files: Debian's ``dataset-fashion-mnist`` package by default.

    ``root`` may hold the four ``*-idx?-ubyte(.gz)`` files directly or in torchvision's
    ``FashionMNIST/raw`` layout. Augmentation: random crop with 2 pixels of padding, no flip.
    """

    name = "fashion_mnist"
    FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}

    def info(self, **_: Any) -> DatasetInfo:
        return DatasetInfo(self.name, 10, (1, 28, 28), FASHION_MNIST_CLASSES, train_size=60_000)

    def _find(self, root: Path, stem: str) -> Path:
        for folder in (root, root / "FashionMNIST" / "raw"):
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(
            f"Fashion-MNIST file {stem}(.gz) not found under {str(root)!r}. Install it with "
            f"`apt-get install -y dataset-fashion-mnist` (files go to {DEBIAN_FASHION_MNIST}) or set "
            "data.root to a folder holding the four IDX files.")

    def load(self, root: str | None = None) -> DataBundle:
        base = Path(root or os.environ.get("RD_FASHION_MNIST", DEBIAN_FASHION_MNIST)).expanduser()
        t = {k: _read_idx(self._find(base, stem)) for k, stem in self.FILES.items()}
        return DataBundle(self.info(), t["train_x"][:, None], t["train_y"].long(), t["test_x"][:, None],
                          t["test_y"].long(), crop_padding=2, flip=False)


class Synthetic:
    """A deterministic, learnable toy dataset for tests: one random pattern per class plus noise."""

    name = "synthetic"

    def info(self, num_classes: int = 10, channels: int = 3, size: int = 16, n_train: int = 256,
             n_test: int = 128, noise: float = 0.15, seed: int = 0) -> DatasetInfo:
        return DatasetInfo(self.name, num_classes, (channels, size, size),
                           tuple(f"class{i}" for i in range(num_classes)), train_size=n_train)

    def load(self, root: str | None = None, num_classes: int = 10, channels: int = 3, size: int = 16,
             n_train: int = 256, n_test: int = 128, noise: float = 0.15, seed: int = 0) -> DataBundle:
        g = torch.Generator().manual_seed(seed)
        protos = torch.rand(num_classes, channels, size, size, generator=g)

        def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(n) % num_classes
            x = protos[y] + noise * torch.randn(n, channels, size, size, generator=g)
            return (x.clamp(0, 1) * 255).round().to(torch.uint8), y

        (train_x, train_y), (test_x, test_y) = sample(n_train), sample(n_test)
        info = self.info(num_classes, channels, size, n_train, n_test, noise, seed)
        return DataBundle(info, train_x, train_y, test_x, test_y, crop_padding=1, flip=False)


@hookimpl
def rd_register_datasets(registry):
    registry.register(TorchvisionCIFAR(10), name="cifar10", help="CIFAR-10 via torchvision (data.root)")
    registry.register(TorchvisionCIFAR(100), name="cifar100", help="CIFAR-100 via torchvision (data.root)")
    registry.register(FashionMNIST(), name="fashion_mnist",
                      help="Fashion-MNIST from Debian's dataset-fashion-mnist (or data.root)")
    registry.register(Synthetic(), name="synthetic", help="deterministic toy data for tests")
