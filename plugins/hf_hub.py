"""``hf-hub:<folder or user/repo[@revision]>`` teachers and students: timm / Hugging Face Hub model folders.

What ``robust-distill export`` writes (:mod:`robust_distill.export`), and timm models on the Hub. The files come
from the folder, or from the Hub through ``huggingface_hub`` and its cache (``HF_HUB_OFFLINE=1`` loads
cached repos without a network). The architecture is built with ``timm.create_model`` and the weights read by
:func:`robust_distill.load_weights_file`: ``model.safetensors`` with safetensors, a ``pytorch_model.bin``
with ``torch.load(weights_only=True)``; never by timm's ``load_state_dict_from_hf``, which unpickles ``.bin``
files with ``weights_only=False``. Inputs are in [0, 1]: robust-distill's exports restore the normalisation
they were trained with, other timm models get their ``pretrained_cfg`` mean/std inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_distill import (
    CONFIG,
    LEGACY_WEIGHTS,
    WEIGHTS,
    CheckpointError,
    DatasetInfo,
    HubError,
    StudentSource,
    TeacherSource,
    check_input_shape,
    hookimpl,
    hub_file,
    load_state_dict_checked,
    load_weights_file,
    on_meta,
    read_hub_config,
)

from .timm_students import _normalize, _timm


def load_hub_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                   trust_checkpoint: bool = False, meta: bool = False) -> nn.Module | None:
    """The model of a timm / Hub folder or repo, in eval mode, inputs in [0, 1]; ``num_classes`` and
    ``in_chans`` (the dataset's) are checked against the folder's.

    ``meta=True`` is the check before any work: the weights' names and shapes are read from the file's header
    (memory-mapped), the network is built on the ``meta`` device and they are compared, nothing is copied; None
    when the architecture cannot be built there. Every problem of the folder is a :class:`HubError` or
    :class:`CheckpointError` naming it.
    """
    cfg = read_hub_config(name)
    try:
        rd, pretrained = cfg.get("robust_distill") or {}, cfg.get("pretrained_cfg") or {}
        arch = cfg["architecture"]
        model_args = dict(cfg.get("model_args") or {})
        classes = int(cfg.get("num_classes") or pretrained["num_classes"])
        channels = int(model_args.setdefault("in_chans", (pretrained.get("input_size") or [3])[0]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise HubError(f"hf-hub:{name}: its {CONFIG} lacks or garbles {exc} (a timm / Hub config names "
                       "'architecture', 'num_classes' and 'pretrained_cfg').") from None
    for what, want, have in (("classes", num_classes, classes), ("input channels", in_chans, channels)):
        if want is not None and want != have:
            raise HubError(f"hf-hub:{name} has {have} {what}; the dataset has {want}.")

    def build() -> nn.Module:
        timm = _timm()
        if not timm.is_model(arch):
            raise HubError(f"hf-hub:{name}: its {CONFIG} names the architecture {arch!r}, which timm does not know "
                           "(a folder of another timm version, or of a model registered by a package not imported).")
        try:
            return timm.create_model(arch, pretrained=False, num_classes=classes, **model_args)
        except (TypeError, ValueError) as exc:
            raise HubError(f"hf-hub:{name}: {arch} refuses the model_args of its {CONFIG} "
                           f"({model_args}): {exc}") from None

    model = on_meta(build) if meta else build()
    if meta and not Path(name).expanduser().is_dir():
        state = None  # a Hub repo: a check reads its config only, never downloads its weights
    else:
        weights = hub_file(name, WEIGHTS, required=False) or hub_file(name, LEGACY_WEIGHTS)
        assert weights is not None
        state = _read_weights(name, weights, trust_checkpoint, meta)
    if model is None:
        return None
    try:
        if state is not None:
            load_state_dict_checked(model, state) if meta else model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"The weights of hf-hub:{name} do not fit {arch}: {exc}") from exc
    if rd:  # robust-distill's export: the normalisation it was trained with
        normalize = (rd.get("kwargs") or {}).get("normalize")
    else:  # a timm model: its preprocessing, unless it is the identity
        identity = all(m == 0 for m in pretrained.get("mean", [0])) and all(s == 1 for s in pretrained.get("std", [1]))
        normalize = None if identity else [pretrained["mean"], pretrained["std"]]
    wrapped = on_meta(lambda: _normalize(model, normalize)) if meta else _normalize(model, normalize)
    return wrapped.eval() if wrapped is not None else None


def _read_weights(name: str, path: Path, trust: bool, meta: bool) -> dict[str, Any]:
    """The state dict of ``path``; with ``meta``, ``.safetensors`` tensors from the header alone (as ``meta``
    tensors) and other files memory-mapped. A file that cannot be read is a :class:`CheckpointError`."""
    try:
        if meta and path.suffix == ".safetensors":
            from safetensors import safe_open  # a header-only read: only for a meta check

            with safe_open(str(path), framework="pt") as f:  # checks the header against the file's size
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118
        return load_weights_file(path, trust=trust, mmap=meta or None)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' SafetensorError, a corrupt zip, a truncated pickle
        raise CheckpointError(f"Could not read the weights of hf-hub:{name} ({str(path)!r}): {type(exc).__name__}: "
                              f"{exc}. If it is a truncated download, delete it and download it again.") from None


class HubModels(TeacherSource, StudentSource):
    """``hf-hub:<folder>`` or ``hf-hub:<user>/<repo>[@revision]``: a timm / Hub model folder.

    As a student it starts from the folder's weights (fine-tuning). Option ``trust_checkpoint`` opts in to
    unpickling a ``pytorch_model.bin`` that holds more than weights.
    """

    def load(self, name: str, *, dataset: DatasetInfo, trust_checkpoint: bool = False) -> nn.Module:
        return load_hub_model(name, num_classes=dataset.num_classes, in_chans=dataset.input_shape[0],
                              trust_checkpoint=trust_checkpoint)

    def build(self, name: str, *, input_shape: tuple[int, int, int], num_classes: int,
              trust_checkpoint: bool = False) -> nn.Module:
        return load_hub_model(name, num_classes=num_classes, in_chans=input_shape[0],
                              trust_checkpoint=trust_checkpoint).train()

    def check(self, name: str, *, dataset: DatasetInfo | None = None, trust_checkpoint: bool = False) -> None:
        """The folder's config, its architecture built on ``meta``, its weights' names and shapes (read from the
        file's header) and a forward pass on the dataset's input shape: nothing is copied. For a Hub repo
        (``user/repo``) only its config is fetched: a check never downloads weights."""
        model = load_hub_model(name, num_classes=None if dataset is None else dataset.num_classes,
                               in_chans=None if dataset is None else dataset.input_shape[0],
                               trust_checkpoint=trust_checkpoint, meta=True)
        problem = None if model is None or dataset is None else check_input_shape(
            model, tuple(dataset.input_shape), dataset.num_classes)
        if problem:
            raise HubError(f"hf-hub:{name} {problem}")

    def names(self) -> list[str]:
        return ["<folder written by `robust-distill export`>", "<user>/<repo>[@revision] on the Hugging Face Hub"]


HELP = "timm / Hugging Face Hub model folder or repo (what robust-distill export writes)"


@hookimpl
def rd_register_teacher_sources(registry: Any) -> None:
    registry.register(HubModels(), name="hf-hub", help=HELP)


@hookimpl
def rd_register_student_sources(registry: Any) -> None:
    registry.register(HubModels(), name="hf-hub", help=HELP)
