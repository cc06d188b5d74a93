"""Datasets as the engine reads them: in memory (:mod:`.memory`: tensors, on the GPU when they fit, DDP
sharding, augmentation) or streamed from image files by ``DataLoader`` workers (:mod:`.streaming`), and the
split of a dataset into train / validation / test (:mod:`.splits`).

May import: :mod:`robust_distill.core`, :mod:`robust_distill.files` and :mod:`robust_distill.errors`.
"""

from __future__ import annotations

import warnings
from typing import Any

from robust_distill.data import memory, splits  # the names of the former module, for one release


def __getattr__(name: str) -> Any:
    """``robust_distill.data.X`` of release 0.1 (the module ``data.py``): now in :mod:`.memory` or :mod:`.splits`."""
    for module in (memory, splits):
        if name in module.__all__:
            warnings.warn(f"robust_distill.data.{name} moved to {module.__name__}.{name}; the old path goes away "
                          "in robust-distill 0.3.", DeprecationWarning, stacklevel=2)
            return getattr(module, name)
    raise AttributeError(f"module 'robust_distill.data' has no attribute {name!r}")
