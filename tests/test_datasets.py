"""Datasets: torchvision CIFAR from a local folder, Fashion-MNIST from IDX files, synthetic data, splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from robust_distill.data.memory import augment, epoch_batches
from robust_distill.data.splits import make_splits

from .conftest import write_tiny_cifar


def write_idx(path: Path, array: torch.Tensor) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def test_cifar10_through_torchvision(regs, tiny_cifar: Path) -> None:
    bundle = regs.datasets.get("cifar10").load(root=str(tiny_cifar), download=False)
    assert bundle.train_x.shape == (40, 3, 32, 32) and bundle.train_x.dtype == torch.uint8
    assert bundle.test_x.shape == (8, 3, 32, 32) and bundle.info.num_classes == 10
    assert bundle.crop_padding == 4 and bundle.flip


def test_cifar100_through_torchvision(regs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    root = write_tiny_cifar(tmp_path, num_classes=100)
    bundle = regs.datasets.get("cifar100").load(root=str(root), download=False)
    assert bundle.info.num_classes == 100 and bundle.train_y.max() < 100


def test_missing_cifar_says_where_to_put_it(regs, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="place it .* in"):
        regs.datasets.get("cifar10").load(root=str(tmp_path), download=False)


def test_fashion_mnist_reads_idx_files(regs, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=g,
                                                                           dtype=torch.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", torch.arange(n, dtype=torch.uint8) % 10)
    bundle = regs.datasets.get("fashion_mnist").load(root=str(tmp_path))
    assert bundle.train_x.shape == (12, 1, 28, 28) and bundle.test_y.tolist() == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        regs.datasets.get("fashion_mnist").load(root=str(tmp_path / "empty"))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian package not installed")
def test_real_fashion_mnist_from_the_debian_package(regs) -> None:
    bundle = regs.datasets.get("fashion_mnist").load()
    assert bundle.train_x.shape == (60000, 1, 28, 28) and bundle.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(bundle.train_y).tolist() == [6000] * 10


def test_synthetic_is_deterministic(regs) -> None:
    a, b = (regs.datasets.get("synthetic").load(seed=3) for _ in range(2))
    assert torch.equal(a.train_x, b.train_x) and a.info.input_shape == (3, 16, 16)


def test_validation_split_is_fixed_and_disjoint(regs) -> None:
    bundle = regs.datasets.get("synthetic").load(n_train=100)
    s1, s2 = make_splits(bundle, val_size=20, split_seed=0), make_splits(bundle, val_size=20, split_seed=0)
    assert torch.equal(s1.val_x, s2.val_x) and s1.train_x.shape[0] == 80
    assert len(set(s1.train_index.tolist())) == 80  # the other 20 dataset positions are the validation set
    sub = make_splits(bundle, val_size=20, train_subset=10)
    assert sub.train_x.shape[0] == 10 and torch.equal(sub.val_x, s1.val_x)
    with pytest.raises(ValueError, match="leaves no training data"):
        make_splits(bundle, val_size=100)


def test_batches_cover_the_epoch_and_shard_like_distributed_sampler() -> None:
    single = list(epoch_batches(10, 4, seed=0, epoch=1))
    assert sorted(torch.cat(single).tolist()) == list(range(10))
    ranks = [list(epoch_batches(10, 4, seed=0, epoch=1, rank=r, world_size=2)) for r in range(2)]
    for b, (r0, r1) in enumerate(zip(*ranks, strict=False)):
        assert sorted(torch.cat([r0, r1]).tolist()) == sorted(single[b].tolist())
    assert not torch.equal(torch.cat(single), torch.cat(list(epoch_batches(10, 4, seed=0, epoch=2))))


def test_augment_is_a_crop_of_the_padded_image_and_a_flip() -> None:
    x = torch.rand(64, 1, 6, 6)
    torch.manual_seed(0)
    out = augment(x, padding=2, flip=True)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # each output is a window of the padded image, possibly mirrored
        found = any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2))
                    for dy in range(5) for dx in range(5) for w in [padded[i, :, dy:dy + 6, dx:dx + 6]])
        assert found
