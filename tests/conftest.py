"""Shared fixtures. Third-party plugins installed in the environment never leak into the suite."""

from __future__ import annotations

import os

os.environ.setdefault("RD_DISABLE_PLUGIN_AUTOLOAD", "1")

import copy  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any

import pytest  # noqa: E402
import torch  # noqa: E402

from robust_distill.config import Config, resolve_config  # noqa: E402
from robust_distill.core.manager import PluginManager, Registries, get_registries  # noqa: E402

torch.set_num_threads(1)

def _installed(dist: str) -> bool:
    """The distribution itself is installed: pyautoattack 0.1.0 ships a partial ``robustbench`` package of its
    own, and a folder of that name on ``sys.path`` imports as a namespace package."""
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


#: tests of the ``robustbench`` extra (not installed in tox's lowest/highest envs: it pins timm 1.0.9)
needs_robustbench = pytest.mark.skipif(
    not _installed("robustbench"),
    reason="the robustbench extra is not installed (tox's default env py311-torch214 runs these)")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reverse-order", action="store_true",
                     help="run the collected tests in reverse order (shows that no test depends on an earlier "
                          "one's process-wide state; benchmarks/gpu/device_run.sh runs the cuda tests both ways)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--reverse-order`` reverses the run; tests marked ``cuda`` are skipped where no CUDA GPU is visible (CI
    never has one)."""
    if config.getoption("reverse_order"):
        items.reverse()
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def regs() -> Registries:
    """The built-in registries (loaded once per session; read-only in tests)."""
    return get_registries()


@pytest.fixture
def pm() -> PluginManager:
    """A fresh plugin manager with only the hook specifications (no plugins)."""
    return PluginManager()


TINY: dict[str, Any] = {
    "method": "pgd_at",
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "synthetic", "val_size": 32, "batch_size": 16, "eval_batch_size": 64,
             "options": {"n_train": 96, "n_test": 32, "size": 8, "num_classes": 4}},
    "student": {"key": "timm:convnet_xs"},
    "threat": {"eps": "8/255", "step_size": "2/255", "steps": 2},
    "optim": {"epochs": 2, "lr": 0.05, "schedule": {"key": "multistep", "kwargs": {"milestones": [1]}}},
    "eval": {"n_examples": 32, "attacks": ["clean", "pgd20"], "select": "pgd20"},
}


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``tiny_raw(method="rslad", teacher=True, **overrides)``: a raw config dict for a seconds-long run."""

    def make(method: str = "pgd_at", teacher: bool = False, **top: Any) -> dict[str, Any]:
        raw = copy.deepcopy(TINY)
        raw["method"] = method
        raw["output_dir"] = str(tmp_path / f"run-{method}")
        if teacher:
            raw["teachers"] = {"robust": {"key": "timm:convnet_xs"}}
        raw.update(top)
        return raw
    return make


@pytest.fixture
def tiny_config(tiny_raw: Callable[..., dict[str, Any]], regs: Registries) -> Callable[..., Config]:
    def make(method: str = "pgd_at", teacher: bool = False, overrides: list[str] = (), **top: Any) -> Config:
        return resolve_config(tiny_raw(method, teacher, **top), regs, overrides=list(overrides))
    return make


def write_tiny_cifar(root: Path, n_per_batch: int = 8, num_classes: int = 10) -> Path:
    """Write a CIFAR-format folder (python pickles) with a few random images per batch file."""
    import pickle

    import numpy as np

    folder, label_key = ("cifar-10-batches-py", "labels") if num_classes == 10 else ("cifar-100-python", "fine_labels")
    (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if num_classes == 10 else ["train", "test"]
    for name in names:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 label_key: [int(v) for v in rng.integers(0, num_classes, n_per_batch)]}
        (root / folder / name).write_bytes(pickle.dumps(entry))
    meta = ("batches.meta", "label_names") if num_classes == 10 else ("meta", "fine_label_names")
    (root / folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"c{i}" for i in range(num_classes)]}))
    return root


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny CIFAR-10 folder that torchvision's loader accepts (its MD5 check is patched out)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    return write_tiny_cifar(tmp_path / "cifar")


def write_image(path: Path, color: tuple[int, ...] | int, size: int | tuple[int, int] = 8, mode: str = "RGB") -> None:
    """A one-colour image file (PNG data whatever the file ending: Pillow reads by content, losslessly)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = (size, size) if isinstance(size, int) else (size[1], size[0])
    Image.new(mode, (w, h), color).save(path, format="PNG")


def image_color(index: int, label: int) -> tuple[int, int, int]:
    """The colour ``write_image_folder`` gives image ``index`` (its position in the split) of class ``label``."""
    return index % 256, index // 256, 40 * label + 20


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "ant", "bee"), n_train: int = 8,
                       n_test: int = 3, size: int = 8, test_split: str = "test") -> Path:
    """``root/{train,test}/<class>/<i>.png``: one colour per image encoding its dataset index and class
    (:func:`image_color`; classes are indexed in sorted order, images in file-name order)."""
    for split, n in (("train", n_train), (test_split, n_test)):
        i = 0
        for label, name in enumerate(sorted(classes)):
            for _ in range(n):
                write_image(root / split / name / f"{i:05d}.png", image_color(i, label), size)
                i += 1
    return root


def write_tiny_imagenet(root: Path, wnids: tuple[str, ...] = ("n03", "n01", "n02"), n_train: int = 4,
                        n_val: int = 6) -> Path:
    """The official ``tiny-imagenet-200`` layout (64x64 images, ``wnids.txt`` in file order ``wnids``,
    validation labels in ``val/val_annotations.txt``); colours as :func:`image_color`, labels by sorted wnid."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}, other name\n" for w in sorted(wnids)))
    i = 0
    for label, w in enumerate(sorted(wnids)):
        boxes = []
        for k in range(n_train):
            write_image(base / "train" / w / "images" / f"{w}_{k}.JPEG", image_color(i, label), 64)
            boxes.append(f"{w}_{k}.JPEG\t0\t0\t63\t63\n")
            i += 1
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    lines = []
    for j in range(n_val):  # classes interleaved, as in the real file
        label = j % len(wnids)
        write_image(base / "val" / "images" / f"val_{j}.JPEG", image_color(j, label), 64)
        lines.append(f"val_{j}.JPEG\t{sorted(wnids)[label]}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    write_image(base / "test" / "images" / "test_0.JPEG", (0, 0, 0), 64)
    return base


def write_teacher_checkpoint(path: Path, key: str, kwargs: dict, info) -> Path:
    """A robust-distill checkpoint of a freshly built ``key`` model for the data ``info`` describes (what
    ``checkpoint:`` teacher sources read), written atomically."""
    from robust_distill.core.manager import get_registries
    from robust_distill.engine.run import build_student, model_spec
    from robust_distill.files import atomic as _io
    from robust_distill.files.checkpoint import FORMAT

    model = build_student(key, kwargs, info, get_registries())
    _io.atomic_save({"format": FORMAT, "model": model_spec(key, kwargs, info), "state_dict": model.state_dict()},
                    path)
    return path
