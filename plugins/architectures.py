"""The CIFAR-stem networks of the ARD papers and the small CPU networks, registered in timm's own registry.

Importing this module registers them (``timm.create_model`` and ``timm:<name>`` specs then know them):

* ``resnet18_cifar``: ResNet-18 with the 3x3 stride-1 stem and no max-pool (kuangliu/pytorch-cifar, the
  student of RSLAD, AdaAD, IAD, CIARD, ...);
* ``mobilenetv2_cifar``: MobileNetV2 with a stride-1 stem and the cfg
  ``(1,16,1,1),(6,24,2,1),(6,32,3,2),(6,64,4,2),(6,96,3,1),(6,160,3,2),(6,320,1,1)`` (same source);
* ``convnet_xs`` / ``convnet_s`` / ``convnet_m`` / ``convnet_l``: plain VGG-style CNNs for CPU work and
  tests (``norm="bn"`` or ``"none"``); ``convnet_s`` (24k parameters) and ``convnet_m`` (288k) are the
  student and teacher of the Fashion-MNIST benchmarks.

Not a plugin itself: :mod:`robust_distill_plugins.timm_students` imports it (and timm) on first use.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():  # timm 1.0.9 touches the deprecated torch.jit.interface on import
    warnings.simplefilter("ignore", FutureWarning)
    import timm
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
    from timm.models.resnet import BasicBlock, ResNet

__all__ = ["timm", "ConvNet", "MobileNetV2Cifar", "resnet18_cifar", "mobilenetv2_cifar", "convnet_xs", "convnet_s",
           "convnet_m", "convnet_l"]




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


def _convnet(variant: str, pretrained: bool, default_widths: tuple[int, ...], default_depth: int,
             default_stem_stride: int, **kwargs: Any) -> ConvNet:
    """The variant's shape unless ``kwargs`` sets ``widths``, ``depth`` or ``stem_stride`` (``student.kwargs``)."""
    kwargs.setdefault("widths", default_widths)
    kwargs.setdefault("depth", default_depth)
    kwargs.setdefault("stem_stride", default_stem_stride)
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
