"""Datasets read from image files, streamed by ``DataLoader`` workers (:mod:`robust_distill.data.streaming`).

* ``image_folder``: a user's own images, ``root/<split>/<class>/*.png|jpg|...`` (torchvision's
  ``ImageFolder`` layout, class indices in sorted folder order); ``root/train`` is the training split and
  ``root/test`` (or ``root/val``) the test split. ``data: {dataset: image_folder, root: my_images}`` is all
  it takes: input size and channels come from the first training image.
* ``tiny_imagenet``: the official ``tiny-imagenet-200.zip`` layout (``wnids.txt``, ``words.txt``,
  ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``); the
  labelled ``val`` split is the test split, as in the AdaAD, DGAD and PeerAiD codes, which train with
  ``RandomCrop(64, padding=4)`` + ``RandomHorizontalFlip()`` and evaluate on the unchanged 64x64 images.
  Class indices follow the sorted wnids (``ImageFolder`` order, as AdaAD; PeerAiD uses the file order of
  ``wnids.txt``, which only permutes the labels).
* ``imagenet``: torchvision's ``ImageNet`` layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``, class
  names from ``meta.bin`` when present); training with ``RandomResizedCrop(224)`` + flip, evaluation with
  RobustBench's preprocessing (``Res256Crop224`` by default: resize to 256, centre crop 224), on the
  ImageNet validation set (the test split here, as RobustBench).

Inputs stay in [0, 1] without normalisation; models that need it carry it inside (RobustBench's ImageNet
models do). Problems with the files (no class folders, an empty class folder, a missing annotation file, an
unreadable first image) are reported when the config is checked; any other unreadable image stops
training with a message naming it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal, Union

from robust_distill import (
    IMG_EXTENSIONS,
    CheckpointError,
    CropFlip,
    DataBundle,
    DatasetInfo,
    ImageList,
    ImageTransform,
    RandomResizedCropFlip,
    StreamedBundle,
    decode_all,
    hookimpl,
    load_checkpoint,
    read_image,
    scan_class_folders,
)

__all__ = ["ImageFolder", "TinyImageNet", "ImageNet", "IMAGENET_PREPROCESSING"]

#: RobustBench's ImageNet preprocessings (``robustbench.data.PREPROCESSINGS``): (crop, resize, interpolation).
IMAGENET_PREPROCESSING: dict[str, tuple[int, Any, str]] = {
    "Res256Crop224": (224, 256, "bilinear"),
    "BicubicRes256Crop224": (224, 256, "bicubic"),
    "Res224": (224, [224, 224], "bilinear"),
    "Crop288": (288, None, "bilinear"),
}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _require_root(root: str | None, dataset: str, layout: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {dataset} needs data.root: the folder holding {layout}.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data.root {root!r} of dataset {dataset} is not a folder (expected {layout}).")
    return path


def _scan(split_dir: str, classes: tuple[str, ...] | None = None,
          subfolder: str = "") -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """:func:`scan_class_folders`, listed once while no folder changes (the config check and the run share
    the listing of ImageNet's 1.28M files); the modification times of the folders are the cache key."""
    try:
        folders = [Path(split_dir)] + [Path(e.path) / subfolder for e in os.scandir(split_dir) if e.is_dir()]
        stamp = tuple(f.stat().st_mtime_ns if f.is_dir() else -1 for f in folders)
    except OSError:
        stamp = ()
    return _scan_cached(split_dir, classes, subfolder, stamp)


@functools.lru_cache(maxsize=4)
def _scan_cached(split_dir: str, classes: tuple[str, ...] | None, subfolder: str,
                 stamp: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    files, labels, found = scan_class_folders(split_dir, classes, subfolder)
    return tuple(files), tuple(labels), tuple(found)


def _in_memory(info: DatasetInfo, train: ImageList, test: ImageList, transform: CropFlip) -> DataBundle:
    """Decode both splits once; the engine then crops and flips batch-wise like CIFAR's."""
    train_x, train_y = decode_all(train, transform)
    test_x, test_y = decode_all(test, transform)
    return DataBundle(info, train_x, train_y, test_x, test_y, crop_padding=transform.padding, flip=transform.flip)


# -------------------------------------------------------------------------------------------------
# image_folder
# -------------------------------------------------------------------------------------------------


class ImageFolder:
    """``root/<train_split>/<class>/*`` and ``root/<test_split>/<class>/*``: any labelled image tree.

    :param size: ``H`` (square) or ``[H, W]`` of the inputs; default: the first training image's size for
        ``crop_flip``, 224 for ``random_resized_crop``. Images of another size are resized (shorter side)
        and centre-cropped.
    :param channels: 1 (grayscale) or 3 (RGB); default: 1 if the first training image is grayscale.
    :param augmentation: ``crop_flip`` (random crop of the image padded by ``padding`` zeros + flip, the
        CIFAR/Tiny-ImageNet recipe) or ``random_resized_crop`` (the ImageNet recipe; evaluation resizes to
        size/0.875 and centre-crops).
    :param train_split: folder of the training split (``train``). :param test_split: folder of the test
        split; default ``test`` if it exists, else ``val``.
    :param in_memory: decode every image once and hold the splits in memory (the engine's batch-wise
        augmentation, much faster for small images; ``crop_flip`` only).
    """

    name = "image_folder"
    LAYOUT = "<root>/train/<class>/<image>.png and <root>/test/<class>/<image>.png (or val/)"

    def _resolve(self, root: str | None, size: Any, channels: int | None, augmentation: str,
                 padding: int, flip: bool, train_split: str, test_split: str | None,
                 in_memory: bool) -> tuple[DatasetInfo, ImageList, ImageList, ImageTransform]:
        base = _require_root(root, self.name, self.LAYOUT)
        if augmentation not in ("crop_flip", "random_resized_crop"):
            raise ValueError(f"augmentation must be 'crop_flip' or 'random_resized_crop', got {augmentation!r}.")
        if in_memory and augmentation != "crop_flip":
            raise ValueError("in_memory: true needs augmentation: crop_flip (a random-resized crop is drawn "
                             "from the full-size image every epoch, which memory does not hold).")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
        if test_split is None:
            test_split = next((s for s in ("test", "val") if (base / s).is_dir()), None)
            if test_split is None:
                raise FileNotFoundError(f"{str(base)!r} has no test/ or val/ folder: expected {self.LAYOUT} "
                                        "(or set data.options.test_split).")
        files, labels, classes = _scan(str(base / train_split))
        test_files, test_labels, _ = _scan(str(base / test_split), classes)
        first = read_image(os.path.join(base, train_split, files[0]))
        if channels is None:
            channels = 1 if first.mode in _GRAY_MODES else 3
        if size is None:
            size = (first.height, first.width) if augmentation == "crop_flip" else 224
        if augmentation == "crop_flip":
            transform: ImageTransform = CropFlip(size, padding=padding, flip=flip)
        else:
            if not isinstance(size, int):
                raise ValueError(f"random_resized_crop needs a square size (an integer), got {size!r}.")
            transform = RandomResizedCropFlip(size, flip=flip, eval_resize=round(size / 0.875))
        mode = "L" if channels == 1 else "RGB"
        info = DatasetInfo(self.name, len(classes), (channels, *transform.size), classes)
        return (info, ImageList(base / train_split, files, labels, mode),
                ImageList(base / test_split, test_files, test_labels, mode), transform)

    def info(self, root: str | None = None, size: Union[int, list[int], None] = None,
             channels: Union[int, None] = None, augmentation: Literal["crop_flip", "random_resized_crop"] = "crop_flip",
             padding: int = 4, flip: bool = True, train_split: str = "train", test_split: Union[str, None] = None,
             in_memory: bool = False) -> DatasetInfo:
        return self._resolve(root, size, channels, augmentation, padding, flip, train_split, test_split,
                             in_memory)[0]

    def load(self, root: str | None = None, size: Union[int, list[int], None] = None,
             channels: Union[int, None] = None, augmentation: Literal["crop_flip", "random_resized_crop"] = "crop_flip",
             padding: int = 4, flip: bool = True, train_split: str = "train", test_split: Union[str, None] = None,
             in_memory: bool = False) -> StreamedBundle | DataBundle:
        info, train, test, transform = self._resolve(root, size, channels, augmentation, padding, flip,
                                                     train_split, test_split, in_memory)
        if in_memory:
            assert isinstance(transform, CropFlip)
            return _in_memory(info, train, test, transform)
        return StreamedBundle(info, train, test, transform)


# -------------------------------------------------------------------------------------------------
# tiny_imagenet
# -------------------------------------------------------------------------------------------------


class TinyImageNet:
    """Tiny-ImageNet (200 classes, 64x64) in the official archive's layout; ``root`` is the
    ``tiny-imagenet-200`` folder or the folder holding it.

    :param padding: zero padding of the random crop (4, as AdaAD/PeerAiD). :param flip: random flip.
    :param in_memory: decode the 110k images once into memory (1.2 GB of uint8) and train with the
        engine's batch-wise augmentation (same distribution, faster).
    """

    name = "tiny_imagenet"
    LAYOUT = "tiny-imagenet-200/ (wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)"

    def _base(self, root: str | None) -> Path:
        base = _require_root(root, self.name, self.LAYOUT)
        if not (base / "wnids.txt").is_file() and (base / "tiny-imagenet-200").is_dir():
            base = base / "tiny-imagenet-200"
        return base

    @staticmethod
    def _index(base: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...], list[str], list[int]]:
        """(wnids, train files, train labels, val files, val labels) of the tree at ``base``."""
        root = Path(base)
        wnids_file, train_dir = root / "wnids.txt", root / "train"
        if wnids_file.is_file():
            wnids = tuple(sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()}))
        elif train_dir.is_dir():
            wnids = tuple(sorted(e.name for e in os.scandir(train_dir) if e.is_dir()))
        else:
            raise FileNotFoundError(f"Neither {wnids_file} nor {train_dir} exists: data.root must be the "
                                    f"tiny-imagenet-200 folder (or the folder holding it), laid out as "
                                    f"{TinyImageNet.LAYOUT}.")
        missing = [w for w in wnids if not (train_dir / w).is_dir()]
        if missing:
            raise FileNotFoundError(f"Tiny-ImageNet class folder {train_dir / missing[0]} is missing "
                                    f"({len(missing)} of the {len(wnids)} classes of {wnids_file.name} have none).")
        files, labels, _ = _scan(str(train_dir), wnids, "images")
        annotations = root / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise FileNotFoundError(
                f"Tiny-ImageNet validation labels {annotations} are missing (the official archive "
                "tiny-imagenet-200.zip has them). If your val/ images are sorted into class folders instead, "
                "use dataset: image_folder with options {test_split: val}.")
        index = {w: i for i, w in enumerate(wnids)}
        val_dir = root / "val" / "images"
        on_disk = {e.name for e in os.scandir(val_dir)} if val_dir.is_dir() else set()
        val_files, val_labels = [], []
        for line_no, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) < 2 or parts[1] not in index:
                raise ValueError(f"{annotations}, line {line_no}: expected '<file> <wnid> ...' with a wnid of "
                                 f"{wnids_file.name}, got {line.strip()!r}.")
            if parts[0] not in on_disk:
                raise FileNotFoundError(f"{annotations}, line {line_no}: image {val_dir / parts[0]} does not exist.")
            val_files.append(f"images/{parts[0]}")
            val_labels.append(index[parts[1]])
        if not val_files:
            raise ValueError(f"{annotations} lists no image.")
        return wnids, files, labels, val_files, val_labels

    @staticmethod
    def _names(base: Path, wnids: tuple[str, ...]) -> tuple[str, ...]:
        words: dict[str, str] = {}
        if (base / "words.txt").is_file():
            for line in (base / "words.txt").read_text().splitlines():
                wnid, _, text = line.partition("\t")
                words[wnid.strip()] = text.split(",")[0].strip()
        return tuple(words.get(w, w) for w in wnids)

    def info(self, root: str | None = None, padding: int = 4, flip: bool = True,
             in_memory: bool = False) -> DatasetInfo:
        base = self._base(root)
        wnids = self._index(str(base))[0]
        return DatasetInfo(self.name, len(wnids), (3, 64, 64), self._names(base, wnids))

    def load(self, root: str | None = None, padding: int = 4, flip: bool = True,
             in_memory: bool = False) -> StreamedBundle | DataBundle:
        base = self._base(root)
        _, files, labels, val_files, val_labels = self._index(str(base))
        info = self.info(root, padding, flip, in_memory)
        train = ImageList(base / "train", files, labels, "RGB")
        test = ImageList(base / "val", val_files, val_labels, "RGB")
        transform = CropFlip(64, padding=padding, flip=flip)
        return _in_memory(info, train, test, transform) if in_memory else StreamedBundle(info, train, test, transform)


# -------------------------------------------------------------------------------------------------
# imagenet
# -------------------------------------------------------------------------------------------------


class ImageNet:
    """ImageNet-1k in torchvision's ``ImageNet`` layout (``root/train/<wnid>/*.JPEG``,
    ``root/val/<wnid>/*.JPEG``, optional ``root/meta.bin`` with the class names).

    :param preprocessing: the evaluation transform, by its RobustBench name: ``Res256Crop224`` (default;
        most RobustBench ImageNet models), ``BicubicRes256Crop224`` (the ConvNeXt/Swin/ViT entries),
        ``Res224``, ``Crop288`` (Wong2020Fast, 288x288 inputs). It also fixes the training crop size.
    :param min_scale: smallest area fraction of ``RandomResizedCrop`` (torchvision's 0.08).
    :param flip: random horizontal flip in training.
    """

    name = "imagenet"
    LAYOUT = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (torchvision's ImageNet layout)"

    def _splits(self, root: str | None) -> tuple[Path, tuple[str, ...], tuple[int, ...], tuple[str, ...],
                                                 tuple[str, ...], tuple[int, ...]]:
        base = _require_root(root, self.name, self.LAYOUT)
        val = base / "val"
        entries = list(os.scandir(val)) if val.is_dir() else []
        if not any(e.is_dir() for e in entries) and any(e.name.lower().endswith(IMG_EXTENSIONS) for e in entries):
            raise ValueError(f"{val} holds the validation images directly; sort them into one folder per class "
                             "(torchvision.datasets.ImageNet(root, split='val') does it from the devkit archive, "
                             "as does the widely used valprep.sh).")
        files, labels, classes = _scan(str(base / "train"))
        val_files, val_labels, _ = _scan(str(val), classes)
        return base, files, labels, classes, val_files, val_labels

    @staticmethod
    def _names(base: Path, wnids: tuple[str, ...]) -> tuple[str, ...]:
        meta = base / "meta.bin"
        if meta.is_file():
            try:
                wnid_to_classes = load_checkpoint(meta)[0]
                return tuple(str(wnid_to_classes.get(w, (w,))[0]) for w in wnids)
            except (CheckpointError, KeyError, IndexError, TypeError, AttributeError):
                pass
        return wnids

    def info(self, root: str | None = None,
             preprocessing: Literal["Res256Crop224", "BicubicRes256Crop224", "Res224", "Crop288"] = "Res256Crop224",
             min_scale: float = 0.08, flip: bool = True) -> DatasetInfo:
        if preprocessing not in IMAGENET_PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {', '.join(IMAGENET_PREPROCESSING)}, "
                             f"got {preprocessing!r}.")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}.")
        base, _, _, classes, _, _ = self._splits(root)
        crop = IMAGENET_PREPROCESSING[preprocessing][0]
        return DatasetInfo(self.name, len(classes), (3, crop, crop), self._names(base, classes), preprocessing)

    def load(self, root: str | None = None,
             preprocessing: Literal["Res256Crop224", "BicubicRes256Crop224", "Res224", "Crop288"] = "Res256Crop224",
             min_scale: float = 0.08, flip: bool = True) -> StreamedBundle:
        info = self.info(root, preprocessing, min_scale, flip)
        base, files, labels, _, val_files, val_labels = self._splits(root)
        crop, resize, interpolation = IMAGENET_PREPROCESSING[preprocessing]
        transform = RandomResizedCropFlip(crop, scale=(min_scale, 1.0), flip=flip, eval_resize=resize,
                                          interpolation=interpolation)
        return StreamedBundle(info, ImageList(base / "train", files, labels),
                              ImageList(base / "val", val_files, val_labels), transform)


@hookimpl
def rd_register_datasets(registry):
    registry.register(ImageFolder(), name="image_folder",
                      help="your images: root/{train,test}/<class>/*.png, streamed from disk")
    registry.register(TinyImageNet(), name="tiny_imagenet",
                      help="Tiny-ImageNet-200, official archive layout, streamed from disk")
    registry.register(ImageNet(), name="imagenet",
                      help="ImageNet-1k, torchvision's layout, streamed from disk")
