"""Resuming: which keys of a run's config may change when it resumes from its ``last.pt``
(:data:`RESUME_MAY_DIFFER`), and the differences that refuse it (:func:`config_differences`,
:class:`ResumeMismatchError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from robust_distill.config.schema import Config, field_defaults, plain_data
from robust_distill.errors import ConfigError

#: Config keys that may differ between a run and the ``last.pt`` it resumes from (``*``: any key below): the
#: training itself stays the one that was started. ``optim.epochs`` extends (or shortens) the run, with its lr
#: schedule as written (a schedule defined by fractions of the epochs stretches with it); ``eval.*`` changes
#: what is measured and which checkpoint is called best (with a ``self_best`` teacher updater this is the
#: teacher); ``device``, ``channels_last`` and ``deterministic`` change where and how fast it runs (not
#: bit-for-bit); ``output_dir`` and ``data.root`` are where files are; ``data.eval_batch_size`` only batches
#: evaluation. Everything else (seed, data, model, method, threat, optimiser) must match.
RESUME_MAY_DIFFER = ("optim.epochs", "eval.*", "device", "channels_last", "deterministic", "output_dir", "data.root",
                     "data.eval_batch_size")


class ResumeMismatchError(ConfigError):
    """``last.pt`` in the output folder was written by another configuration."""

    def __init__(self, path: str | os.PathLike[str], differences: list[str]) -> None:
        super().__init__(differences, f"resume from {str(path)!r}")
        self.args = (f"{self.args[0]}\n{str(path)!r} was written by another configuration, so resuming it would "
                     "continue that run under this config's name. Start over with --no-resume (the folder's "
                     "checkpoints and metrics are overwritten), or set another output_dir. Keys that may change on "
                     f"resume: {', '.join(RESUME_MAY_DIFFER)}.",)


_UNSET: Any = object()


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any],
                       may_differ: tuple[str, ...] = RESUME_MAY_DIFFER) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two plain config dicts, except
    ``may_differ`` (dotted keys; ``"eval.*"`` covers a whole section)."""
    a, b = _renamed_options(_flat(old)), _flat(new)
    defaults = _flat(plain_data(field_defaults(Config)))

    def free(key: str) -> bool:
        return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in may_differ)

    def added_at_default(key: str) -> bool:
        """A key the stored config predates (a newer version added it), set to its default: the old behaviour."""
        return key not in a and key in defaults and plain_data(b.get(key)) == defaults[key]

    def show(v: Any) -> str:
        return "(unset)" if v is _UNSET else repr(v)

    return [f"{k}: {show(a.get(k, _UNSET))} -> {show(b.get(k, _UNSET))}" for k in sorted(a.keys() | b.keys())
            if not free(k) and not added_at_default(k) and a.get(k, _UNSET) != b.get(k, _UNSET)]


#: outer-loss options renamed since a stored config was written: (loss key, old name) -> new name
RENAMED_OPTIONS = {("ard", "reduction"): "kl_reduction", ("adaad", "reduction"): "kl_reduction"}


def _renamed_options(flat: dict[str, Any]) -> dict[str, Any]:
    """A stored flat config with its renamed outer-loss options under their new names (the loss's own kwargs,
    or a wrapper's ``base_kwargs`` such as IGDM's), so that a run started before a rename still resumes."""
    prefixes = {"outer_loss.kwargs.": flat.get("outer_loss.key"),
                "outer_loss.kwargs.base_kwargs.": flat.get("outer_loss.kwargs.base")}
    out = {}
    for key, value in flat.items():
        prefix, _, name = key.rpartition(".")
        new = RENAMED_OPTIONS.get((prefixes.get(prefix + "."), name))
        out[f"{prefix}.{new}" if new else key] = value
    return out
