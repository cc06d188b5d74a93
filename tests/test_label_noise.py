"""``data.label_noise``: symmetric label noise on the training images only (issue 21's robust-overfitting regime,
Dong et al. 2022), the same for in-memory and streamed datasets, and recorded in ``train_records.pt``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robust_distill.data.splits import flip_labels, make_splits
from robust_distill.engine.trainer import train
from robust_distill.files.checkpoint import load_checkpoint

from .conftest import write_image_folder
from .test_streaming import ids


def test_flip_labels_changes_exactly_the_chosen_fraction_to_other_classes() -> None:
    y = torch.arange(12) % 3
    noisy, changed = flip_labels(y, 0.25, 3, seed=0)
    assert changed.sum().item() == 3  # round(0.25 * 12)
    assert torch.equal(noisy != y, changed)  # every chosen label moves to another class, no other label moves
    assert noisy.dtype == y.dtype and noisy.min() >= 0 and noisy.max() <= 2
    again, _ = flip_labels(y, 0.25, 3, seed=0)
    assert torch.equal(noisy, again)
    assert not torch.equal(changed, flip_labels(y, 0.25, 3, seed=1)[1])
    assert torch.equal(flip_labels(y, 0.0, 3)[0], y) and not flip_labels(y, 0.0, 3)[1].any()
    assert flip_labels(y, 0.5, 3)[1].sum().item() == 6 and flip_labels(y, 0.3, 3)[1].sum().item() == 4  # 3.6 -> 4
    with pytest.raises(ValueError, match="at least 2 classes"):
        flip_labels(torch.zeros(4, dtype=torch.long), 0.5, 1)


def test_flip_labels_draws_the_new_class_uniformly_among_the_others() -> None:
    y = torch.arange(9000) % 10
    noisy, changed = flip_labels(y, 0.9, 10, seed=3)
    offset = (noisy[changed] - y[changed]) % 10  # 1..9, each with probability 1/9
    counts = torch.bincount(offset, minlength=10).tolist()
    assert counts[0] == 0 and sum(counts) == 8100
    assert all(abs(c - 900) < 120 for c in counts[1:]), counts  # 4 standard deviations (28.3 each)


def test_in_memory_splits_relabel_the_training_images_only(regs) -> None:
    bundle = regs.datasets.get("synthetic").load(n_train=100, num_classes=4)
    clean = make_splits(bundle, val_size=20, train_subset=40)
    noisy = make_splits(bundle, val_size=20, train_subset=40, label_noise=0.25)
    assert clean.train_noisy is None and noisy.train_noisy.sum().item() == 10
    assert torch.equal(noisy.train_index, clean.train_index) and torch.equal(noisy.train_x, clean.train_x)
    assert torch.equal(noisy.train_y != clean.train_y, noisy.train_noisy)
    assert torch.equal(noisy.val_y, clean.val_y) and torch.equal(noisy.test_y, clean.test_y)
    batches = list(noisy.train_batches(0, batch_size=40, seed=0, device="cpu", augment=False, shuffle=False))
    assert torch.equal(batches[0][1], noisy.train_y)  # what the student is trained on
    assert torch.equal(noisy.eval_set("train", None).labels, noisy.train_y)  # and what train records score
    with pytest.raises(ValueError, match=r"data.label_noise must be in \[0, 1\)"):
        make_splits(bundle, val_size=20, label_noise=1.0)


def test_streamed_splits_relabel_the_training_images_only(regs, tmp_path: Path) -> None:
    bundle = regs.datasets.get("image_folder").load(root=str(write_image_folder(tmp_path, n_train=10)), padding=2)
    splits = make_splits(bundle, val_size=6, label_noise=0.5)
    assert splits.train_noisy.sum().item() == 12  # half of the 24 training images
    seen = {}
    for x, y in splits.train_batches(0, batch_size=8, seed=0, device="cpu"):
        seen.update(zip(ids(x), y.tolist(), strict=True))
    truth = {int(i): int(i) // 10 for i in splits.train_index}  # write_image_folder: 10 images per class
    wrong = {i for i, label in seen.items() if label != truth[i]}
    assert wrong == set(splits.train_index[splits.train_noisy].tolist())
    val = splits.eval_set("val", None)
    assert val.labels.tolist() == [int(i) // 10 for i in val.indices]  # validation stays clean
    assert bundle.train.labels.tolist() == [i // 10 for i in range(30)]  # the plugin's bundle is not modified


def test_a_run_trains_on_the_noisy_labels_and_records_which_they_are(tiny_config, regs, tmp_path: Path) -> None:
    cfg = tiny_config("pgd_at", overrides=["data.label_noise=0.5", "eval.train_records=20", "optim.epochs=1",
                                           f"output_dir={tmp_path / 'run'}"])
    train(cfg)
    saved = load_checkpoint(tmp_path / "run" / "train_records.pt")
    bundle = regs.datasets.get("synthetic").load(**cfg.data.options)
    clean = bundle.train_y[saved["indices"]]
    assert saved["noisy"].dtype == torch.bool and 0 < saved["noisy"].sum() < 20
    assert torch.equal(saved["labels"] != clean, saved["noisy"])
    noisy_run = make_splits(bundle, val_size=32, label_noise=0.5)
    assert noisy_run.train_noisy.sum().item() == 32  # of the 64 training images
    assert torch.equal(saved["noisy"], noisy_run.train_noisy[:20])
