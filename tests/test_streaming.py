"""Streamed image datasets: folder layouts, class mapping, (seed, epoch, index)-determined batches whatever
the number of workers or processes, per-sample evaluation order, resume equality, errors naming the file.

Every image written by :func:`write_image_folder` / :func:`write_tiny_imagenet` has one colour that encodes
its dataset index (red + 256 green) and its class (blue), so a decoded pixel says which image it was.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robust_distill import DataBundle, StreamedBundle
from robust_distill.cli import main
from robust_distill.config import resolve_config
from robust_distill.core.components import DatasetInfo
from robust_distill.data.memory import epoch_batches
from robust_distill.data.splits import make_splits, split_images
from robust_distill.data.streaming import CropFlip, ImageList, RandomResizedCropFlip, StreamedEvalSet, sample_rng
from robust_distill.engine.evaluation import evaluate_set
from robust_distill.engine.trainer import train
from robust_distill.errors import ConfigError, UnreadableImageError
from robust_distill.files.checkpoint import load_checkpoint

from .conftest import (
    image_color,
    needs_robustbench,
    write_image,
    write_image_folder,
    write_teacher_checkpoint,
    write_tiny_imagenet,
)


def ids(x: Tensor) -> list[int]:
    """Dataset index of each image of a batch (uint8 or [0, 1] float), read at the centre pixel, which
    crops of at most size/2 and flips keep inside the image."""
    c = x[:, :, x.shape[2] // 2, x.shape[3] // 2].float()
    c = c if x.dtype == torch.uint8 else (c * 255).round()
    return (c[:, 0] + 256 * c[:, 1]).long().tolist()


def streamed_raw(tiny_raw, root: Path, **data) -> dict:
    raw = tiny_raw("pgd_at")
    raw["data"] = {"dataset": "image_folder", "root": str(root), "val_size": 6, "batch_size": 8,
                   "eval_batch_size": 16, "workers": 0, "options": {"padding": 2}, **data}
    raw["eval"] = {"n_examples": None, "attacks": ["clean", "pgd20"], "select": "pgd20"}
    return raw


# -------------------------------------------------------------------------------------------------
# Layouts and class mapping
# -------------------------------------------------------------------------------------------------


def test_image_folder_maps_classes_in_sorted_folder_order(regs, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs")
    ds = regs.datasets.get("image_folder")
    info = ds.info(root=str(root))
    assert info.num_classes == 3 and info.class_names == ("ant", "bee", "cat") and info.input_shape == (3, 8, 8)
    bundle = ds.load(root=str(root))
    assert isinstance(bundle, StreamedBundle) and (len(bundle.train), len(bundle.test)) == (24, 9)
    assert bundle.train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert bundle.train.path(9) == str(root / "train" / "bee" / "00009.png")
    x, y = split_images(bundle, "train")
    assert x.dtype == torch.uint8 and x.shape == (24, 3, 8, 8) and torch.equal(y, bundle.train.labels)
    assert [tuple(x[i, :, 0, 0].tolist()) for i in range(24)] == [image_color(i, int(y[i])) for i in range(24)]
    # in memory: the same images, cropped and flipped by the engine's batch-wise augmentation
    mem = ds.load(root=str(root), in_memory=True, padding=2, flip=False)
    assert isinstance(mem, DataBundle) and torch.equal(mem.train_x, x) and (mem.crop_padding, mem.flip) == (2, False)


def test_image_folder_grayscale_other_sizes_and_val_as_test(regs, tmp_path: Path) -> None:
    for split in ("train", "val"):
        for c, value in (("a", 60), ("b", 200)):
            write_image(tmp_path / split / c / "0.png", value, size=(12, 10), mode="L")
    ds = regs.datasets.get("image_folder")
    assert ds.info(root=str(tmp_path)).input_shape == (1, 12, 10)  # the first image's channels and size
    bundle = ds.load(root=str(tmp_path), size=8)
    x, y = split_images(bundle, "test")
    assert bundle.info.input_shape == (1, 8, 8) and x.shape == (2, 1, 8, 8)
    assert x[0].unique().tolist() == [60] and x[1].unique().tolist() == [200] and y.tolist() == [0, 1]
    rgb = ds.load(root=str(tmp_path), channels=3, size=[6, 8], augmentation="crop_flip")
    assert rgb.info.input_shape == (3, 6, 8) and split_images(rgb, "train")[0].shape == (2, 3, 6, 8)


def test_tiny_imagenet_official_layout(regs, tmp_path: Path) -> None:
    base = write_tiny_imagenet(tmp_path)
    ds = regs.datasets.get("tiny_imagenet")
    for root in (base, tmp_path):  # the tiny-imagenet-200 folder or the folder holding it
        info = ds.info(root=str(root))
        assert info.num_classes == 3 and info.input_shape == (3, 64, 64)
        assert info.class_names == ("thing n01", "thing n02", "thing n03")  # words.txt, first name
    bundle = ds.load(root=str(tmp_path))
    assert bundle.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # sorted wnids, not wnids.txt's order
    assert bundle.test.labels.tolist() == [0, 1, 2, 0, 1, 2]  # from val/val_annotations.txt
    x, _ = split_images(bundle, "test")
    assert [tuple(x[j, :, 0, 0].tolist()) for j in range(6)] == [image_color(j, j % 3) for j in range(6)]
    assert isinstance(bundle.transform, CropFlip) and (bundle.transform.padding, bundle.transform.flip) == (4, True)
    mem = ds.load(root=str(base), in_memory=True)
    assert isinstance(mem, DataBundle) and torch.equal(mem.test_x, x) and mem.train_x.shape == (12, 3, 64, 64)


def test_imagenet_layout_and_robustbench_preprocessing(regs, tmp_path: Path) -> None:
    for split, n in (("train", 2), ("val", 1)):
        for c in ("n02", "n01"):
            for k in range(n):
                write_image(tmp_path / split / c / f"{c}_{k}.JPEG", (10, 20, 30), size=(300, 400))
    ds = regs.datasets.get("imagenet")
    info = ds.info(root=str(tmp_path))
    assert (info.num_classes, info.input_shape, info.preprocessing) == (2, (3, 224, 224), "Res256Crop224")
    bundle = ds.load(root=str(tmp_path), preprocessing="Crop288")
    assert bundle.info.input_shape == (3, 288, 288) and bundle.transform.eval_resize is None
    x, y = split_images(ds.load(root=str(tmp_path)), "test")
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1] and x[0, :, 100, 100].tolist() == [10, 20, 30]


# -------------------------------------------------------------------------------------------------
# Per-sample augmentation
# -------------------------------------------------------------------------------------------------


def test_crop_flip_is_a_window_of_the_padded_image_drawn_from_the_sample_generator() -> None:
    from PIL import Image

    img = Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6))
    t = CropFlip(6, padding=2, flip=True)
    base = t.eval(img)
    padded = F.pad(base, (2, 2, 2, 2))
    outs = [t.train(img, sample_rng(0, 0, i)) for i in range(40)]
    for out in outs:
        assert any(torch.equal(out, w) or torch.equal(out, w.flip(2))
                   for dy in range(5) for dx in range(5) for w in [padded[:, dy:dy + 6, dx:dx + 6]])
    assert torch.equal(outs[3], t.train(img, sample_rng(0, 0, 3)))  # a function of (seed, epoch, index)
    assert len({o.numpy().tobytes() for o in outs}) > 10


class TorchRandom:
    """The generator interface ``crop_params`` uses, drawing as torchvision does from the global RNG."""

    def uniform(self, low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high).item()

    def integers(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, size=(1,)).item())


def test_random_resized_crop_draws_torchvision_s_crops() -> None:
    import torchvision.transforms as T

    t = RandomResizedCropFlip(16, eval_resize=18)
    for seed in range(200):  # fed the same random numbers, the same crops as torchvision's get_params
        torch.manual_seed(seed)
        ours = t.crop_params(60, 40, TorchRandom())
        torch.manual_seed(seed)
        assert ours == tuple(T.RandomResizedCrop.get_params(torch.zeros(3, 60, 40), [0.08, 1.0], [3 / 4, 4 / 3]))
    assert t.crop_params(10, 200, sample_rng(0, 0, 0)) == (0, 93, 10, 13)  # too wide: the central 4:3 crop
    from PIL import Image

    img = Image.new("RGB", (40, 60), (1, 2, 3))
    assert t.train(img, sample_rng(0, 0, 0)).shape == (3, 16, 16) and t.eval(img).shape == (3, 16, 16)


def test_streamed_batches_depend_only_on_seed_epoch_and_index(regs, tmp_path: Path) -> None:
    bundle = regs.datasets.get("image_folder").load(root=str(write_image_folder(tmp_path, n_train=10)), padding=2)

    def epoch(epoch: int, *, workers: int = 0, rank: int = 0, world: int = 1, seed: int = 0) -> list:
        splits = make_splits(bundle, val_size=6, workers=workers)
        return list(splits.train_batches(epoch, batch_size=8, seed=seed, device="cpu", rank=rank, world_size=world))

    zero, two = epoch(0), epoch(0, workers=2)
    assert len(zero) == 3 and [x.shape[0] for x, _ in zero] == [8, 8, 8]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(zero, two, strict=True))
    splits = make_splits(bundle, val_size=6)
    assert [ids(x) for x, _ in zero] == [splits.train_index[i].tolist() for i in epoch_batches(24, 8, seed=0, epoch=0)]
    assert all(y.tolist() == [i // 10 for i in ids(x)] for x, y in zero)
    x0 = torch.cat([x for x, _ in zero])
    assert x0.dtype == torch.float32 and 0 <= x0.min() and x0.max() <= 1 and (x0.sum(1) == 0).any()  # padding
    assert not torch.equal(x0, torch.cat([x for x, _ in epoch(1)]))
    assert not torch.equal(x0, torch.cat([x for x, _ in epoch(0, seed=1)]))
    # 2 ranks: each reads chunk[rank::2] of every global batch, pixel for pixel as the 1-process run
    ranks = [epoch(0, rank=r, world=2) for r in (0, 1)]
    for (xg, yg), (xa, ya), (xb, yb) in zip(zero, *ranks, strict=True):
        assert torch.equal(xg[0::2], xa) and torch.equal(xg[1::2], xb)
        assert torch.equal(yg[0::2], ya) and torch.equal(yg[1::2], yb)
    # the held-out validation images never appear in training
    assert not set(splits.val_index.tolist()) & {i for x, _ in zero for i in ids(x)}


# -------------------------------------------------------------------------------------------------
# Evaluation
# -------------------------------------------------------------------------------------------------


class EvenOracle(nn.Module):
    """Right on the images whose dataset index is even, wrong on the others (reads the colour code)."""

    def forward(self, x: Tensor) -> Tensor:
        c = (x[:, :, 4, 4] * 255).round()
        label = ((c[:, 2] - 20) / 40).long()
        pred = torch.where((c[:, 0] + 256 * c[:, 1]).long() % 2 == 0, label, (label + 1) % 3)
        return F.one_hot(pred, 3).float()


class WholeSetIdentity:
    """An attack that wants every example at once (as AutoAttack) and changes nothing."""

    whole_set, eps, calls = True, None, 0

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        WholeSetIdentity.calls += 1
        return x


def test_streamed_evaluation_keeps_per_sample_order(regs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = regs.datasets.get("image_folder").load(root=str(write_image_folder(tmp_path, n_test=5)))
    splits = make_splits(bundle, val_size=6, workers=2)
    test = splits.eval_set("test", None)
    assert test.indices.tolist() == list(range(15))
    monkeypatch.setattr(StreamedEvalSet, "chunk", 4)  # the whole-set attack gets 4 chunks of <= 4 images
    monkeypatch.setattr(WholeSetIdentity, "calls", 0)
    attacks = {"clean": regs.eval_attacks.build("clean", {}, eps=8 / 255, num_classes=3), "whole": WholeSetIdentity()}
    res = evaluate_set(EvenOracle(), test, attacks, batch_size=3)
    expected = test.indices % 2 == 0
    assert torch.equal(res.correct["clean"], expected) and torch.equal(res.correct["whole"], expected)
    assert WholeSetIdentity.calls == 4
    val = splits.eval_set("val", 4)  # 4 of the 6 held-out images, spread over them, in dataset order
    assert set(val.indices.tolist()) <= set(splits.val_index.tolist())
    assert val.indices.tolist() == sorted(val.indices.tolist())
    assert torch.equal(evaluate_set(EvenOracle(), val, attacks, batch_size=3).correct["clean"], val.indices % 2 == 0)
    assert torch.equal(val.indices, splits.eval_set("val", 4).indices)  # the same subset every time


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_png_tree_trains_with_one_config_line_and_resumes_exactly(tiny_raw, regs, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = write_image_folder(tmp_path / "imgs", n_train=12)
    raw = streamed_raw(tiny_raw, root)
    raw["optim"]["epochs"] = 3
    raw["eval"].update(final_attacks=["clean"], final_n_examples=5)
    full = resolve_config({**raw, "output_dir": str(tmp_path / "full")}, regs)
    part = resolve_config({**raw, "output_dir": str(tmp_path / "part")}, regs, overrides=["data.workers=2"])
    summary = train(full)
    assert train(part, stop_after_epochs=1) == {"interrupted": True, "epoch": 1}
    train(part)  # resumes at epoch 1, with 2 workers instead of none
    a, b = (load_checkpoint(tmp_path / d / "last.pt")["state_dict"] for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = {d: [json.loads(r) for r in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("full", "part")}
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time_")}  # noqa: E731
    assert [strip(r) for r in rows["full"]] == [strip(r) for r in rows["part"]]
    assert rows["full"][0]["train_loss"] != rows["full"][-1]["train_loss"]
    assert set(summary["final"]["last"]) == {"clean"}
    saved = load_checkpoint(tmp_path / "full" / "test_correct_last.pt")
    assert saved["correct"]["clean"].shape == (5,) and saved["indices"].tolist() == sorted(saved["indices"].tolist())
    capsys.readouterr()
    out = tmp_path / "eval.json"  # the eval command reads the streamed test split of the checkpoint's data
    assert main(["eval", str(tmp_path / "full" / "best.pt"), "--attacks", "clean,fgsm", "--n-examples", "6",
                 "--workers", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"] == "image_folder" and result["n_examples"] == 6
    assert load_checkpoint(out.with_suffix(".pt"))["indices"].numel() == 6


# -------------------------------------------------------------------------------------------------
# Bad input
# -------------------------------------------------------------------------------------------------


def check_problems(raw: dict, regs) -> str:
    with pytest.raises(ConfigError) as e:
        resolve_config(raw, regs)
    return str(e.value)


def test_bad_image_trees_fail_at_config_check_naming_the_file(tiny_raw, regs, tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "imgs")
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    text = check_problems(streamed_raw(tiny_raw, root), regs)
    assert f"Class folder '{root / 'train' / 'dog'}' holds no image" in text
    (root / "train" / "dog" / "notes.txt").unlink()
    (root / "train" / "dog").rmdir()
    first = root / "train" / "ant" / "00000.png"
    first.write_bytes(b"\x89PNG but truncated")
    assert f"Cannot read image {first}" in check_problems(streamed_raw(tiny_raw, root), regs)
    assert "has no test/ or val/ folder" in check_problems(streamed_raw(tiny_raw, root / "train"), regs)
    write_image(tmp_path / "flat" / "train" / "x.png", (0, 0, 0))
    (tmp_path / "flat" / "test").mkdir()
    assert "has no class folders" in check_problems(streamed_raw(tiny_raw, tmp_path / "flat"), regs)
    base = write_tiny_imagenet(tmp_path / "tiny")
    (base / "val" / "val_annotations.txt").unlink()
    raw = streamed_raw(tiny_raw, base, dataset="tiny_imagenet", options={})
    assert f"Tiny-ImageNet validation labels {base / 'val' / 'val_annotations.txt'} are missing" in check_problems(
        raw, regs)
    flat = tmp_path / "imagenet"
    write_image(flat / "train" / "n01" / "a.JPEG", (0, 0, 0))
    write_image(flat / "val" / "ILSVRC2012_val_00000001.JPEG", (0, 0, 0))
    raw = streamed_raw(tiny_raw, flat, dataset="imagenet", options={})
    assert "sort them into one folder per class" in check_problems(raw, regs)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_stops_training_naming_the_file(tiny_raw, regs, tmp_path: Path, workers: int) -> None:
    root = write_image_folder(tmp_path / "imgs")
    bad = root / "train" / "bee" / "00010.png"
    bad.write_bytes(b"GIF89a broken")
    raw = streamed_raw(tiny_raw, root, workers=workers, val_size=2)
    raw["optim"]["epochs"] = 1
    with pytest.raises(UnreadableImageError, match=re.escape(f"Cannot read image {bad}")):
        train(resolve_config(raw, regs))


def test_image_list_rejects_mismatched_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 files but 1 labels"):
        ImageList(tmp_path, ["a.png", "b.png"], [0])


# -------------------------------------------------------------------------------------------------
# Benchmark configs
# -------------------------------------------------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("config", sorted(p.name for p in (BENCHMARKS / "tiny_imagenet").glob("*.yaml")))
def test_tiny_imagenet_configs_pass_train_check(tmp_path: Path, config: str, capsys) -> None:
    write_tiny_imagenet(tmp_path)
    args = ["train", str(BENCHMARKS / "tiny_imagenet" / config), "--check", "--set", f"data.root={tmp_path}",
            "--set", "data.val_size=2", "--set", "device=auto"]  # GPU configs: the check tests the device too
    if config == "adaad.yaml":  # the check reads the teacher (weights only) and runs it on meta: a real one
        teacher = tmp_path / "teacher.pt"
        write_teacher_checkpoint(teacher, "timm:convnet_xs", {}, DatasetInfo("tiny_imagenet", 3, (3, 64, 64)))
        args += ["--set", f"teachers.robust.key=checkpoint:{teacher}"]
    assert main(args) == 0, capsys.readouterr().err
    resolved = capsys.readouterr().out
    assert "dataset: tiny_imagenet" in resolved and "stem: cifar" in resolved


def test_imagenet_config_passes_train_check_with_a_robustbench_teacher(tmp_path: Path, capsys) -> None:
    for k in range(1000):  # RobustBench's ImageNet models have 1000 outputs: the check wants 1000 classes
        for split in ("train", "val"):
            write_image(tmp_path / split / f"n{k:08d}" / "0.JPEG", (k % 256, 0, 0), size=4)
    args = ["train", str(BENCHMARKS / "imagenet" / "rslad.yaml"), "--check", "--set", f"data.root={tmp_path}",
            "--set", "device=auto"]
    assert main(args) == 0, capsys.readouterr().err
    resolved = capsys.readouterr().out
    assert "robustbench:Salman2020Do_R50" in resolved and "eps: 0.0156862" in resolved
    shutil.rmtree(tmp_path / "train" / "n00000999")
    shutil.rmtree(tmp_path / "val" / "n00000999")
    assert main(args) == 2
    assert "has 1000 outputs but the imagenet data has 999 class folders" in capsys.readouterr().err


@pytest.mark.slow
def test_peeraid_swa_batchnorm_pass_reads_a_streamed_folder(tiny_raw, regs, tmp_path: Path) -> None:
    raw = streamed_raw(tiny_raw, write_image_folder(tmp_path / "imgs"))
    raw.update(method="peeraid", swa={"start": 0})
    raw["optim"]["epochs"] = 1
    raw["eval"] = {"n_examples": 6, "attacks": ["clean"], "select": "clean"}
    train(resolve_config(raw, regs))
    swa = load_checkpoint(Path(raw["output_dir"]) / "swa.pt")["state_dict"]
    means = [v for k, v in swa.items() if k.endswith("running_mean")]
    assert means and all(m.abs().sum() > 0 for m in means)  # recomputed from the (streamed) training images


# -------------------------------------------------------------------------------------------------
# Students for 64x64 and 224x224 inputs
# -------------------------------------------------------------------------------------------------


def test_timm_students_at_64_and_224_and_the_cifar_stem(regs, tmp_path: Path) -> None:
    timm_src = regs.student_sources.get("timm")
    cifar = timm_src.build("resnet18", input_shape=(3, 64, 64), num_classes=200, stem="cifar")
    reference = timm_src.build("resnet18_cifar", input_shape=(3, 64, 64), num_classes=200)
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(cifar) == shapes(reference)
    x = torch.rand(2, 3, 64, 64)
    assert cifar.forward_features(x).shape == (2, 512, 8, 8) and cifar(x).shape == (2, 200)  # PeerAiD's 8x8 map
    imagenet = timm_src.build("resnet18", input_shape=(3, 224, 224), num_classes=1000)
    assert imagenet.forward_features(torch.rand(1, 3, 224, 224)).shape == (1, 512, 7, 7)
    mobile = timm_src.build("mobilenetv2_100", input_shape=(3, 64, 64), num_classes=200, stem="cifar")
    assert mobile.conv_stem.stride == (1, 1) and mobile.forward_features(x).shape[-1] == 4
    torch.save(cifar.state_dict(), tmp_path / "w.pth")  # weights of a CIFAR-stem network load after the swap
    again = timm_src.build("resnet18", input_shape=(3, 64, 64), num_classes=200, stem="cifar",
                           checkpoint_path=str(tmp_path / "w.pth"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in cifar.state_dict().items())
    with pytest.raises(ValueError, match="16x16 patch embedding; set a smaller patch_size"):
        timm_src.build("vit_tiny_patch16_224", input_shape=(3, 64, 64), num_classes=200, stem="cifar", img_size=64)
    with pytest.raises(ValueError, match="stem must be one of imagenet, cifar"):
        timm_src.check("resnet18", stem="cifra")


@needs_robustbench
def test_robustbench_imagenet_teachers_check_classes_and_preprocessing() -> None:
    from robust_distill import DatasetInfo
    from robust_distill_plugins.robustbench_teachers import RobustBenchTeachers

    source = RobustBenchTeachers()
    imagenet = DatasetInfo("imagenet", 1000, (3, 224, 224), preprocessing="Res256Crop224")
    source.check("Salman2020Do_R50", dataset=imagenet)  # its RobustBench preprocessing: no warning
    with pytest.warns(UserWarning, match="set data.options.preprocessing: BicubicRes256Crop224"):
        source.check("Singh2023Revisiting_ConvNeXt-T-ConvStem", dataset=imagenet)
    with pytest.raises(ValueError, match="has 1000 outputs but the imagenet data has 10 class folders"):
        source.check("Salman2020Do_R50", dataset=DatasetInfo("imagenet", 10, (3, 224, 224)))
    assert "Salman2020Do_R18 (imagenet)" in source.names()
