"""The dataset ``robust_features``: a base dataset whose training images at some positions are replaced by their
robust-feature images (Yang et al., AISTATS 2021, App. A.11; Ilyas et al. 2019), for robust feature training (RFT).

The file is written by :func:`robust_distill.analysis.robust_features.save_robust_features` (format
``robust-distill/robust-features/1``: the base dataset's name and options, the training positions and their
``x_r`` as uint8). Validation images (held out of the training split by the engine) and test images stay the
base's, so a student trained on the ``x_r`` is validated and tested on real images. Wrapped by the ``oracle``
dataset (``data: {dataset: oracle, options: {base: robust_features, base_options: {file: D_R.pt}, teacher: ...}}``)
the labels are the oracle teacher's predictions on the ``x_r``, and ``oracle_logit`` trains with the teacher's
logit feedback on them, as the paper's RFT does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from robust_distill import DataBundle, DatasetInfo, Registries, hookimpl, load_checkpoint
from robust_distill import registries as process_registries

FORMAT = "robust-distill/robust-features/1"


class RobustFeatureDataset:
    """``dataset: robust_features`` with the option ``file`` (a robust-feature dataset file)."""

    name = "robust_features"

    @staticmethod
    def _read(file: str | None) -> dict[str, Any]:
        if not file:
            raise ValueError("dataset 'robust_features' needs data.options.file, a file written by "
                             "robust_distill.analysis.robust_features.save_robust_features")
        data = load_checkpoint(file)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{file!r} is not a robust-feature dataset file (format {FORMAT!r})")
        return data

    def info(self, *, registries: Registries | None = None, file: str | None = None) -> DatasetInfo:
        data = self._read(file)
        registries = registries if registries is not None else process_registries()
        base = registries.call(registries.datasets.get(data["base"]).info, **data["base_options"])
        return replace(base, name=self.name)

    def load(self, root: str | None = None, *, registries: Registries | None = None,
             file: str | None = None) -> DataBundle:
        data = self._read(file)
        registries = registries if registries is not None else process_registries()
        bundle = registries.call(registries.datasets.get(data["base"]).load, root=root, **data["base_options"])
        idx, images = data["indices"].to(torch.int64), data["images"]
        if tuple(images.shape[1:]) != tuple(bundle.train_x.shape[1:]):
            raise ValueError(f"{file!r} holds images of shape {tuple(images.shape[1:])}; {data['base']!r} has "
                             f"{tuple(bundle.train_x.shape[1:])}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= bundle.train_x.shape[0]):
            raise ValueError(f"{file!r} replaces training positions outside 0..{bundle.train_x.shape[0] - 1}")
        train_x = bundle.train_x.clone()
        train_x[idx] = images.to(train_x.dtype) if train_x.dtype == torch.uint8 else images.float() / 255
        return DataBundle(replace(bundle.info, name=self.name), train_x, bundle.train_y, bundle.test_x, bundle.test_y,
                          crop_padding=bundle.crop_padding, flip=bundle.flip)


@hookimpl
def rd_register_datasets(registry):
    registry.register(RobustFeatureDataset(), name="robust_features",
                      help="a base dataset with training images replaced by robust-feature images (RFT)")
