"""``hf-hub:<folder or user/repo[@revision]>`` teachers and students: timm / Hugging Face Hub model folders.

What ``robust-distill export`` writes (:mod:`robust_distill.hub`), and timm models on the Hub. The files come
from the folder, or from the Hub through ``huggingface_hub`` and its cache (``HF_HUB_OFFLINE=1`` loads
cached repos without a network). The architecture is built with ``timm.create_model`` and the weights read by
:func:`robust_distill.checkpoint.load_file`: ``model.safetensors`` with safetensors, a ``pytorch_model.bin``
with ``torch.load(weights_only=True)``; never by timm's ``load_state_dict_from_hf``, which unpickles ``.bin``
files with ``weights_only=False``. Inputs are in [0, 1]: robust-distill's exports restore the normalisation
they were trained with, other timm models get their ``pretrained_cfg`` mean/std inside the model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from robust_distill import DatasetInfo, StudentSource, TeacherSource, hookimpl
from robust_distill.checkpoint import CheckpointError, load_file
from robust_distill.hub import LEGACY_WEIGHTS, WEIGHTS, HubError, hub_file, read_hub_config

from .timm_students import _normalize, _timm


def load_hub_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                   trust_checkpoint: bool = False) -> nn.Module:
    """The model of a timm / Hub folder or repo, in eval mode, inputs in [0, 1]; ``num_classes`` and
    ``in_chans`` (the dataset's) are checked against the folder's."""
    cfg = read_hub_config(name)
    rd, pretrained = cfg.get("robust_distill") or {}, cfg["pretrained_cfg"]
    model_args = dict(cfg.get("model_args", {}))
    classes = int(cfg.get("num_classes") or pretrained["num_classes"])
    channels = int(model_args.setdefault("in_chans", pretrained.get("input_size", [3])[0]))
    for what, want, have in (("classes", num_classes, classes), ("input channels", in_chans, channels)):
        if want is not None and want != have:
            raise HubError(f"hf-hub:{name} has {have} {what}; the dataset has {want}.")
    model = _timm().create_model(cfg["architecture"], pretrained=False, num_classes=classes, **model_args)
    weights = hub_file(name, WEIGHTS, required=False) or hub_file(name, LEGACY_WEIGHTS)
    try:
        model.load_state_dict(load_file(weights, trust=trust_checkpoint))
    except RuntimeError as exc:
        raise CheckpointError(f"The weights of hf-hub:{name} do not fit {cfg['architecture']}: {exc}") from exc
    if rd:  # robust-distill's export: the normalisation it was trained with
        normalize = (rd.get("kwargs") or {}).get("normalize")
    else:  # a timm model: its preprocessing, unless it is the identity
        identity = all(m == 0 for m in pretrained.get("mean", [0])) and all(s == 1 for s in pretrained.get("std", [1]))
        normalize = None if identity else [pretrained["mean"], pretrained["std"]]
    return _normalize(model, normalize).eval()


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
        cfg = read_hub_config(name)  # the folder exists (or the repo is reachable / cached)
        if dataset is not None and cfg.get("num_classes") not in (None, dataset.num_classes):
            raise HubError(f"hf-hub:{name} has {cfg['num_classes']} classes; dataset {dataset.name} has "
                           f"{dataset.num_classes}.")

    def names(self) -> list[str]:
        return ["<folder written by `robust-distill export`>", "<user>/<repo>[@revision] on the Hugging Face Hub"]


HELP = "timm / Hugging Face Hub model folder or repo (what robust-distill export writes)"


@hookimpl
def rd_register_teacher_sources(registry: Any) -> None:
    registry.register(HubModels(), name="hf-hub", help=HELP)


@hookimpl
def rd_register_student_sources(registry: Any) -> None:
    registry.register(HubModels(), name="hf-hub", help=HELP)
