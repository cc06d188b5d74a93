"""Students (and teachers) from timm, plus the CIFAR-stem networks of the ARD papers in timm's registry.

``timm:<name>`` builds any timm model with ``num_classes`` and ``in_chans`` taken from the dataset. This
plugin registers, in timm's own registry (so ``timm.create_model`` knows them too):

* ``resnet18_cifar``: ResNet-18 with the 3x3 stride-1 stem and no max-pool (kuangliu/pytorch-cifar, the
  student of RSLAD, AdaAD, IAD, CIARD, ...);
* ``mobilenetv2_cifar``: MobileNetV2 with a stride-1 stem and the cfg
  ``(1,16,1,1),(6,24,2,1),(6,32,3,2),(6,64,4,2),(6,96,3,1),(6,160,3,2),(6,320,1,1)`` (same source);
* ``convnet_xs`` / ``convnet_s`` / ``convnet_m`` / ``convnet_l``: plain VGG-style CNNs for CPU work and
  tests (``norm="bn"`` or ``"none"``); ``convnet_s`` (24k parameters) and ``convnet_m`` (288k) are the
  student and teacher of the Fashion-MNIST benchmarks.

Inputs are in [0, 1] and, as in the ARD papers, not normalised; ``normalize: imagenet`` (or
``[[mean...], [std...]]``) puts a normalisation layer inside the model for pretrained ImageNet weights.

Input sizes: convolutional timm models take any size (global pooling), so the same name serves 32x32,
64x64 (Tiny-ImageNet) and 224x224 (ImageNet); ViTs need ``img_size`` (and often ``patch_size``) in the
student's kwargs. ``stem: cifar`` turns any convolutional timm model's ImageNet stem into the CIFAR one of
the ARD codes (:func:`cifar_stem`): for 32x32 and 64x64 inputs, where a stride-4 stem would leave a 1x1 or
2x2 final map (``timm:resnet18`` + ``stem: cifar`` is ``resnet18_cifar``; at 64x64 it is PeerAiD's
Tiny-ImageNet ResNet-18, whose final map is 8x8).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():  # timm 1.0.9 touches the deprecated torch.jit.interface on import
    warnings.simplefilter("ignore", FutureWarning)
    import timm
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
    from timm.models.resnet import BasicBlock, ResNet

from robust_distill import DatasetInfo, StudentSource, TeacherSource, hookimpl

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# -------------------------------------------------------------------------------------------------
# Architectures
# -------------------------------------------------------------------------------------------------


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = expansion * cin
        self.stride = stride
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = None
        if stride == 1:
            self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + self.shortcut(x) if self.shortcut is not None else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for 32x32 inputs (stride-1 stem), as vendored by RSLAD/MTARD/CIARD."""

    CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                                   nn.ReLU(inplace=True)]
        cin = 32
        for expansion, cout, blocks, stride in self.CFG:
            for s in [stride] + [1] * (blocks - 1):
                layers.append(_InvertedResidual(cin, cout, expansion, s))
                cin = cout
        layers += [nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(1280, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.pool(self.features(x)).flatten(1)))


class ConvNet(nn.Module):
    """VGG-style CNN: per width, ``depth`` x (conv3x3 [+BN] + ReLU), then 2x2 max-pool; GAP; linear.

    ``stem_stride=2`` makes the first convolution strided instead of pooling after the first stage
    (4x fewer FLOPs in the widest layers; the CPU-sized Fashion-MNIST models use it).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (32, 64, 128),
                 depth: int = 1, norm: str = "bn", stem_stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        if norm not in ("bn", "none"):
            raise ValueError(f"norm must be 'bn' or 'none', got {norm!r}")
        layers: list[nn.Module] = []
        cin = in_chans
        for stage, w in enumerate(widths):
            for d in range(depth):
                stride = stem_stride if stage == 0 and d == 0 else 1
                layers += [nn.Conv2d(cin, w, 3, stride, 1, bias=norm == "none")]
                layers += [nn.BatchNorm2d(w)] if norm == "bn" else []
                layers += [nn.ReLU(inplace=True)]
                cin = w
            if not (stage == 0 and stem_stride > 1):
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.pool(self.features(x)).flatten(1)))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"num_classes": 10, "input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
            "first_conv": "conv1", "classifier": "fc", "license": "mit", **kwargs}


default_cfgs = generate_default_cfgs({
    "resnet18_cifar.untrained": _cfg(),
    "mobilenetv2_cifar.untrained": _cfg(first_conv="features.0", classifier="classifier"),
    "convnet_xs.untrained": _cfg(first_conv="features.0", classifier="classifier"),
    "convnet_s.untrained": _cfg(first_conv="features.0", classifier="classifier"),
    "convnet_m.untrained": _cfg(first_conv="features.0", classifier="classifier"),
    "convnet_l.untrained": _cfg(first_conv="features.0", classifier="classifier"),
})


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (CIFAR variant of the ARD papers)."""
    in_chans = kwargs.get("in_chans", 3)
    kwargs.setdefault("zero_init_last", False)
    model = build_model_with_cfg(ResNet, "resnet18_cifar", pretrained, block=BasicBlock, layers=[2, 2, 2, 2],
                                 **kwargs)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def mobilenetv2_cifar(pretrained: bool = False, **kwargs: Any) -> MobileNetV2Cifar:
    """MobileNetV2 with a stride-1 stem (CIFAR variant of the ARD papers)."""
    return build_model_with_cfg(MobileNetV2Cifar, "mobilenetv2_cifar", pretrained, **kwargs)


def _convnet(variant: str, pretrained: bool, widths: tuple[int, ...], depth: int, stem_stride: int,
             **kwargs: Any) -> ConvNet:
    kwargs.setdefault("widths", widths)
    kwargs.setdefault("depth", depth)
    kwargs.setdefault("stem_stride", stem_stride)
    return build_model_with_cfg(ConvNet, variant, pretrained, **kwargs)


@register_model
def convnet_xs(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Tiny CNN (widths 4, 8; ~0.5k parameters) for unit tests."""
    return _convnet("convnet_xs", pretrained, (4, 8), 1, 1, **kwargs)


@register_model
def convnet_s(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Small CNN (widths 16, 32, 64, strided stem; 24k parameters on 1 channel): the CPU student."""
    return _convnet("convnet_s", pretrained, (16, 32, 64), 1, 2, **kwargs)


@register_model
def convnet_m(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Medium CNN (widths 32, 64, 128, two convs per stage, strided stem; 288k parameters on 1 channel):
    the CPU teacher of the Fashion-MNIST benchmarks."""
    return _convnet("convnet_m", pretrained, (32, 64, 128), 2, 2, **kwargs)


@register_model
def convnet_l(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Larger CNN (widths 64, 128, 256, two convs per stage; 1.15M parameters on 1 channel)."""
    return _convnet("convnet_l", pretrained, (64, 128, 256), 2, 1, **kwargs)


# -------------------------------------------------------------------------------------------------
# Sources
# -------------------------------------------------------------------------------------------------


class Normalized(nn.Module):
    """``model((x - mean) / std)``: normalisation inside the model, inputs stay in [0, 1]."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(
            f"timm has no model {name!r}." + (f" Close matches: {', '.join(close)}." if close else "")
            + " The CIFAR-stem students are resnet18_cifar and mobilenetv2_cifar; `python -c "
            "\"import timm; print(timm.list_models('resnet*'))\"` lists timm's models.")


def _normalize(model: nn.Module, normalize: Any) -> nn.Module:
    if normalize in (None, "none"):
        return model
    if normalize == "imagenet":
        return Normalized(model, *IMAGENET)
    mean, std = normalize
    return Normalized(model, mean, std)


STEMS = ("imagenet", "cifar")


def cifar_stem(model: nn.Module, name: str = "model") -> nn.Module:
    """The CIFAR stem of the ARD codes on a timm model: its first convolution at stride 1 (a 7x7 stride-2
    one, ResNet's, becomes kuangliu's 3x3 stride-1, padding 1) and its stem max-pool removed.

    The first convolution is the one timm's ``pretrained_cfg["first_conv"]`` names; a replaced convolution
    is freshly initialised. Patch-embedding stems (ViT, ConvNeXt) are refused: they set ``patch_size``.
    """
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    first = first[0] if isinstance(first, (list, tuple)) else first
    try:
        conv = model.get_submodule(first) if first else None
    except AttributeError:
        conv = None
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"stem: cifar needs a convolutional first layer; timm model {name!r} has "
                         f"{type(conv).__name__ if conv is not None else 'none'} at {first!r}.")
    if conv.kernel_size == conv.stride and conv.kernel_size[0] > 3:
        raise ValueError(f"stem: cifar does not apply to {name!r}: its stem {first!r} is a {conv.kernel_size[0]}x"
                         f"{conv.kernel_size[0]} patch embedding; set a smaller patch_size in its kwargs instead.")
    if conv.kernel_size == (7, 7) and conv.stride == (2, 2):
        new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None)
        parent, _, attr = first.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    else:
        conv.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def create(name: str, *, input_shape: tuple[int, int, int], num_classes: int, pretrained: bool = False,
           pretrained_file: str | None = None, checkpoint_path: str | None = None, normalize: Any = None,
           stem: str = "imagenet", **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with dataset-derived ``num_classes``/``in_chans`` and offline weights;
    ``stem: cifar`` applies :func:`cifar_stem` (before ``checkpoint_path`` weights are loaded)."""
    _check_timm_name(name)
    _check_stem(stem)
    overlay = None
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"pretrained_file {pretrained_file!r} does not exist.")
        pretrained, overlay = True, {"file": str(pretrained_file)}
    model = timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay,
                              num_classes=num_classes, in_chans=input_shape[0],
                              checkpoint_path="" if stem == "cifar" else checkpoint_path or "", **kwargs)
    if stem == "cifar":
        model = cifar_stem(model, name)
        if checkpoint_path:
            timm.models.load_checkpoint(model, checkpoint_path)
    return _normalize(model, normalize)


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}.")


class TimmStudents(StudentSource):
    """``timm:<model name>``: any timm model, freshly initialised (or ``pretrained: true``)."""

    def build(self, name: str, *, input_shape: tuple[int, int, int], num_classes: int,
              **options: Any) -> nn.Module:
        return create(name, input_shape=input_shape, num_classes=num_classes, **options)

    def check(self, name: str, **options: Any) -> None:
        _check_timm_name(name)
        _check_stem(options.get("stem", "imagenet"))

    def names(self) -> list[str]:
        return ["resnet18_cifar", "mobilenetv2_cifar", "convnet_xs", "convnet_s", "convnet_m", "convnet_l",
                "<any timm model>"]


class TimmTeachers(TeacherSource):
    """``timm:<model name>`` with ``checkpoint_path`` (timm/robust-distill weights) or ``pretrained_file``."""

    def load(self, name: str, *, dataset: DatasetInfo, **options: Any) -> nn.Module:
        return create(name, input_shape=dataset.input_shape, num_classes=dataset.num_classes, **options).eval()

    def check(self, name: str, *, dataset: DatasetInfo, **options: Any) -> None:
        _check_timm_name(name)
        _check_stem(options.get("stem", "imagenet"))
        for key in ("checkpoint_path", "pretrained_file"):
            if options.get(key) and not Path(options[key]).is_file():
                raise FileNotFoundError(f"teacher timm:{name}: {key} {options[key]!r} does not exist.")


@hookimpl
def rd_register_student_sources(registry):
    registry.register(TimmStudents(), name="timm", help="any timm model; CIFAR-stem ResNet-18/MobileNetV2")


@hookimpl
def rd_register_teacher_sources(registry):
    registry.register(TimmTeachers(), name="timm", help="timm model with local weights (checkpoint_path)")
