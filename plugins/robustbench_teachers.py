"""``robustbench:<name>`` teachers: every RobustBench model, through ``robustbench.utils.load_model``.

The Gowal (DeepMind WRN, normalisation inside the model) and Chen (LTD / Efficient / Data; raw [0, 1]
inputs) families of the ARD papers are all RobustBench entries, e.g. ``robustbench:Chen2021LTD_WRN34_10``
(CIFAR-10 and CIFAR-100), ``robustbench:Gowal2020Uncovering_70_16_extra``,
``robustbench:Gowal2021Improving_R18_ddpm_100m``. Options: ``model_dir`` (default ``./models`` or
``$RD_MODEL_DIR``), ``threat_model`` (``Linf``), ``offline`` (never try to download).

ImageNet (``data: {dataset: imagenet}``): RobustBench's ImageNet L-inf entries (threat model eps 4/255:
set ``threat: {eps: 4/255, ...}``), e.g. ``robustbench:Salman2020Do_R18`` or
``robustbench:Singh2023Revisiting_ConvNeXt-T-ConvStem``; they take 224x224 inputs in [0, 1] and normalise
inside the model, like the CIFAR ones. The check requires the dataset's 1000 classes and warns when the
dataset's evaluation preprocessing (``data.options.preprocessing``) is not the model's RobustBench one.

Weights live at ``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (RobustBench's layout); a file already
there is used without any network access. Where the download fails, the error says which file to place
where. ``Chen2020Adversarial`` outputs probabilities, so it is wrapped to return log-probabilities
(valid logits for every softmax-based loss). robustbench is imported lazily, in the hooks' objects.

RobustBench's ``load_model`` calls ``torch.load`` without ``weights_only`` (unsafe on torch < 2.6 or with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``): it runs inside :func:`robust_distill.files.checkpoint.weights_only_loads`,
so a file in ``model_dir`` is only ever read as weights (numpy scalars allowed). ``trust_checkpoint: true``
is the explicit opt-in for files that pickle more.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robust_distill import CheckpointError, DatasetInfo, TeacherSource, hookimpl, import_robustbench, weights_only_loads

#: RobustBench models whose forward returns probabilities instead of logits.
PROBABILITY_OUTPUTS = frozenset({"Chen2020Adversarial"})
DATASETS = ("cifar10", "cifar100", "imagenet")


class LogProbabilities(nn.Module):
    """Wraps a probability-output model so that it returns ``log p`` (softmax(log p) = p)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp_min(1e-12).log()


def _default_model_dir() -> str:
    return os.environ.get("RD_MODEL_DIR", "./models")


def _zoo(dataset: str, threat_model: str) -> dict[str, Any]:
    import_robustbench()
    # robustbench: optional (the robustbench extra); import_robustbench above patches what it needs first
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel  # (robustbench, as above)

    return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]


def checkpoint_files(model_dir: str, dataset: str, threat_model: str, name: str, entry: Any) -> list[Path]:
    """Where RobustBench expects the weights (ensembles use ``<name>.pt_m<i>.pt``)."""
    folder = "corruptions" if threat_model == "corruptions_3d" else threat_model
    path = Path(model_dir) / dataset / folder / f"{name}.pt"
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
    return [path]


class RobustBenchTeachers(TeacherSource):
    def _entry(self, name: str, dataset: DatasetInfo, threat_model: str) -> Any:
        if dataset.name not in DATASETS:
            raise ValueError(f"RobustBench has no {dataset.name!r} models; its datasets are "
                             f"{', '.join(DATASETS)}. Use a checkpoint: or timm: teacher instead.")
        zoo = _zoo(dataset.name, threat_model)
        if name not in zoo:
            close = difflib.get_close_matches(name, list(zoo), n=5, cutoff=0.5)
            gowal_chen = [n for n in zoo if n.startswith(("Gowal", "Chen"))]
            raise ValueError(
                f"RobustBench has no {dataset.name} {threat_model} model {name!r}."
                + (f" Close matches: {', '.join(close)}." if close else "")
                + f" Gowal/Chen entries: {', '.join(gowal_chen)} ({len(zoo)} models in all; "
                "`robust-distill plugins --names` lists them).")
        entry = zoo[name]
        if dataset.name == "imagenet":
            if dataset.num_classes != 1000:
                raise ValueError(f"RobustBench ImageNet model {name} has 1000 outputs but the imagenet data has "
                                 f"{dataset.num_classes} class folders; data.root must hold all 1000 classes.")
            wanted = entry.get("preprocessing")
            if wanted and dataset.preprocessing and wanted != dataset.preprocessing:
                warnings.warn(f"RobustBench evaluates {name} with {wanted} preprocessing, the data uses "
                              f"{dataset.preprocessing}: set data.options.preprocessing: {wanted} to evaluate "
                              "as RobustBench does.", UserWarning, stacklevel=3)
        return entry

    def check(self, name: str, *, dataset: DatasetInfo, model_dir: str | None = None,
              threat_model: str = "Linf", offline: bool = False, trust_checkpoint: bool = False) -> None:
        entry = self._entry(name, dataset, threat_model)
        if offline:
            files = checkpoint_files(model_dir or _default_model_dir(), dataset.name, threat_model, name, entry)
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(self._missing_message(name, entry, missing))

    @staticmethod
    def _missing_message(name: str, entry: Any, missing: list[str]) -> str:
        ids = entry.get("gdrive_id")
        return (f"RobustBench weights for {name} are not on disk: place {', '.join(missing)} "
                f"(Google Drive id {ids}; `robustbench.utils.load_model` downloads it where the network "
                "allows) or point model_dir at the folder that holds <dataset>/<threat_model>/<name>.pt.")

    def load(self, name: str, *, dataset: DatasetInfo, model_dir: str | None = None,
             threat_model: str = "Linf", offline: bool = False, trust_checkpoint: bool = False) -> nn.Module:
        rb = import_robustbench()
        model_dir = model_dir or _default_model_dir()
        entry = self._entry(name, dataset, threat_model)
        files = checkpoint_files(model_dir, dataset.name, threat_model, name, entry)
        missing = [str(f) for f in files if not f.is_file()]
        if missing and offline:
            raise FileNotFoundError(self._missing_message(name, entry, missing))
        try:
            with warnings.catch_warnings(), weights_only_loads(trust=trust_checkpoint):
                warnings.simplefilter("ignore", FutureWarning)
                model = rb.utils.load_model(name, model_dir=model_dir, dataset=dataset.name,
                                            threat_model=threat_model)
        except CheckpointError:
            raise
        except Exception as exc:
            if missing:
                for f in missing:  # never leave a half-downloaded file behind
                    Path(f).unlink(missing_ok=True)
                raise RuntimeError(f"Downloading {name} failed ({type(exc).__name__}: {exc}). "
                                   + self._missing_message(name, entry, missing)) from exc
            raise
        if name in PROBABILITY_OUTPUTS:
            model = LogProbabilities(model)
        return model.eval()

    def names(self, dataset: DatasetInfo | None = None) -> list[str]:
        """The Gowal/Chen CIFAR families and every ImageNet L-inf entry."""
        out = []
        for ds in DATASETS if dataset is None else (dataset.name,):
            out += [f"{n} ({ds})" for n in _zoo(ds, "Linf") if ds == "imagenet" or n.startswith(("Gowal", "Chen"))]
        return out


@hookimpl
def rd_register_teacher_sources(registry):
    registry.register(RobustBenchTeachers(), name="robustbench",
                      help="RobustBench model zoo (Gowal*, Chen*, any name); offline from model_dir")
