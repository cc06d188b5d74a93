"""``timm:<name>`` students and teachers: any timm model, plus this project's CIFAR-stem and CPU networks.

``timm:<name>`` builds any timm model with ``num_classes`` and ``in_chans`` taken from the dataset, including
the networks :mod:`robust_distill_plugins.architectures` registers in timm (``resnet18_cifar``,
``mobilenetv2_cifar``, ``convnet_xs|s|m|l``). timm is imported on first use, not when plugins load.

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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robust_distill import (
    CheckpointError,
    DatasetInfo,
    StudentSource,
    TeacherSource,
    check_input_file,
    check_input_shape,
    hookimpl,
    load_state_dict_checked,
    load_state_dict_file,
    on_meta,
    weights_only_loads,
)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _timm() -> Any:
    """timm, with :mod:`.architectures` registered in it (imported on first use: ~1 s)."""
    from .architectures import timm  # importing it registers resnet18_cifar, mobilenetv2_cifar, convnet_*

    return timm


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
    timm = _timm()
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
           trust_checkpoint: bool = False, stem: str = "imagenet", **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with dataset-derived ``num_classes``/``in_chans`` and offline weights;
    ``stem: cifar`` applies :func:`cifar_stem` (before ``checkpoint_path`` weights are loaded).

    ``checkpoint_path`` (all weights, strict) and ``pretrained_file`` (timm's pretrained adaptation: a
    classifier of another size is dropped, a 3-channel stem is adapted to ``in_chans``) are read here with
    ``weights_only=True`` (or safetensors), never by timm's own ``torch.load(weights_only=False)``;
    ``trust_checkpoint: true`` is the explicit opt-in for files that pickle more than weights.
    """
    _check_timm_name(name)
    _check_stem(stem)
    overlay = None
    for key, path in (("pretrained_file", pretrained_file), ("checkpoint_path", checkpoint_path)):
        problem = None if path is None else check_input_file(path, key)
        if problem:
            raise FileNotFoundError(problem)
    if pretrained_file is not None:
        pretrained, overlay = True, {"state_dict": load_state_dict_file(pretrained_file, trust=trust_checkpoint)}
    with weights_only_loads(trust=trust_checkpoint):  # pretrained=True: timm's own hub/url loading
        model = _timm().create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay,
                                     num_classes=num_classes, in_chans=input_shape[0], **kwargs)
    if stem == "cifar":
        model = cifar_stem(model, name)
    if checkpoint_path:
        state = load_state_dict_file(checkpoint_path, trust=trust_checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"The weights in {checkpoint_path!r} do not fit timm:{name}: {exc}") from exc
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
        """The name, the weight files (read memory-mapped, weights only) and, on the ``meta`` device, the
        weights' shapes against the network and a forward pass on the dataset's input shape."""
        _check_timm_name(name)
        _check_stem(options.get("stem", "imagenet"))
        for key in ("checkpoint_path", "pretrained_file"):
            problem = check_input_file(options[key], key) if options.get(key) else None
            if problem:
                raise FileNotFoundError(f"teacher timm:{name}: {problem}")
        trust = bool(options.get("trust_checkpoint", False))
        if options.get("pretrained_file"):  # timm adapts it to the model: only check that it is readable
            load_state_dict_file(options["pretrained_file"], trust=trust, mmap=True)
        if options.get("pretrained"):
            return  # timm's own download: nothing to check offline
        plain = {k: v for k, v in options.items() if k not in ("checkpoint_path", "pretrained_file", "normalize",
                                                                "trust_checkpoint", "pretrained")}
        model = on_meta(lambda: _timm().create_model(name, num_classes=dataset.num_classes,
                                                     in_chans=dataset.input_shape[0], **plain))
        if model is None:
            return
        if options.get("checkpoint_path"):
            state = load_state_dict_file(options["checkpoint_path"], trust=trust, mmap=True)
            try:
                load_state_dict_checked(model, state)
            except RuntimeError as exc:
                raise CheckpointError(f"The weights in {options['checkpoint_path']!r} do not fit timm:{name}: "
                                      f"{exc}") from exc
        problem = check_input_shape(model, dataset.input_shape, dataset.num_classes)
        if problem:
            raise ValueError(f"teacher timm:{name} {problem}")


@hookimpl
def rd_register_student_sources(registry):
    registry.register(TimmStudents(), name="timm", help="any timm model; CIFAR-stem ResNet-18/MobileNetV2")


@hookimpl
def rd_register_teacher_sources(registry):
    registry.register(TimmTeachers(), name="timm", help="timm model with local weights (checkpoint_path)")
