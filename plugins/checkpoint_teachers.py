"""``checkpoint:<path>`` teachers: any network saved by robust-distill (or a state dict plus ``arch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from robust_distill import (
    DatasetInfo,
    Registries,
    TeacherSource,
    build_from_checkpoint,
    check_input_file,
    check_input_shape,
    hookimpl,
)
from robust_distill import registries as process_registries


def _own(registries: Registries | None) -> Registries:
    """The registries the engine passed; called directly (as in 0.1, without them): the process's."""
    return registries if registries is not None else process_registries()


def _arch(arch: Any) -> dict[str, Any] | None:
    if arch is None or isinstance(arch, dict):
        return arch
    return {"key": str(arch), "kwargs": {}}


class CheckpointTeachers(TeacherSource):
    """``checkpoint:runs/pgd_at/best.pt``: rebuilds the saved architecture and loads its weights.

    Options: ``arch`` (``timm:resnet18_cifar`` or ``{key, kwargs}``) for plain state dicts;
    ``trust_checkpoint`` (the explicit opt-in for files that pickle more than weights). The saved student is
    rebuilt from the run's registries (its architecture may come from any installed plugin).
    """

    def load(self, name: str, *, dataset: DatasetInfo, registries: Registries | None = None, arch: Any = None,
             trust_checkpoint: bool = False) -> nn.Module:
        model, ckpt = build_from_checkpoint(Path(name).expanduser(), _own(registries), arch=_arch(arch),
                                            dataset=dataset, trust=trust_checkpoint)
        _check_classes(name, ckpt, dataset)
        return model

    def check(self, name: str, *, dataset: DatasetInfo, registries: Registries | None = None, arch: Any = None,
              trust_checkpoint: bool = False) -> None:
        """Reads the file (memory-mapped, weights only), checks its weights against the architecture and a
        forward pass on the dataset's input shape, all on the ``meta`` device (nothing is copied)."""
        path = Path(name).expanduser()
        problem = check_input_file(path, "teacher checkpoint")
        if problem:
            raise FileNotFoundError(problem)
        model, ckpt = build_from_checkpoint(path, _own(registries), arch=_arch(arch), dataset=dataset,
                                            trust=trust_checkpoint, meta=True)
        _check_classes(name, ckpt, dataset)
        problem = check_input_shape(model, dataset.input_shape, dataset.num_classes) if model is not None else None
        if problem:
            trained = ckpt.get("model", {}).get("input_shape")
            hint = f" (it was trained on inputs of shape {tuple(trained)})" if trained else ""
            raise ValueError(f"teacher {name!r} {problem}{hint}")


def _check_classes(name: str, ckpt: Any, dataset: DatasetInfo) -> None:
    spec = ckpt.get("model", {}) if isinstance(ckpt, dict) else {}
    if spec and spec.get("num_classes") != dataset.num_classes:
        raise ValueError(f"teacher {name!r} has {spec.get('num_classes')} classes but dataset "
                         f"{dataset.name} has {dataset.num_classes}.")


@hookimpl
def rd_register_teacher_sources(registry):
    registry.register(CheckpointTeachers(), name="checkpoint",
                      help="a robust-distill checkpoint (or a state dict with arch=)")
